"""``soat serve``: HTTP column ranges, the tile stream, backpressure, batching, errors.

The server runs in a thread of the test process on 127.0.0.1 with a free port, on a
tiny CPU model (size 8, channel multiplier 1), and is stopped at the end of the module.
"""

import argparse
import asyncio
import io
import json
import logging
import os
import threading
import time

import numpy as np
import pytest
import torch

pytest.importorskip("starlette", reason="the serve extra (starlette, uvicorn, websockets) is not installed")
pytest.importorskip("uvicorn", reason="the serve extra is not installed")
pytest.importorskip("websockets", reason="the serve extra is not installed")
httpx = pytest.importorskip("httpx", reason="httpx is needed to test the HTTP routes")
from PIL import Image  # noqa: E402
from websockets.asyncio.client import connect  # noqa: E402
from websockets.exceptions import ConnectionClosed  # noqa: E402

import soat  # noqa: E402
from soat.serve.app import background_server, create_app  # noqa: E402
from soat.serve.protocol import MAX_BATCH, MAX_CREDIT, unpack_frame, unpack_message  # noqa: E402

SIZE = 8
TIMEOUT = 60  # seconds any single wait may take on a loaded 2-core machine


@pytest.fixture(scope="module")
def G():
    G = soat.load("random:0", size=SIZE, channel_multiplier=1)
    G.estimate_mean_styles(torch.randn(2000, 512, generator=torch.Generator().manual_seed(0)))  # cheaper sigma_bar
    return G


GPU_LIKE = 60.0  # target_batch_s: every waiting span goes into one batch, as on a GPU (the CPU policy has its own tests)


@pytest.fixture(scope="module")
def url(G):
    with background_server(create_app(G, max_batch=4, window_s=0.01, target_batch_s=GPU_LIKE)) as base:
        yield base


def ws_url(base: str, query: str) -> str:
    return base.replace("http://", "ws://") + "/api/stream?" + query


def decode(payload: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(payload)).convert("RGB"))


def info(base: str) -> dict:
    return httpx.get(base + "/api/info", timeout=TIMEOUT).json()


def run(coro):
    return asyncio.run(asyncio.wait_for(coro, 3 * TIMEOUT))


async def frames(ws, n: int, credit: bool = True) -> list[tuple]:
    """Receive ``n`` frames (granting ``n`` credits first unless ``credit`` is False)."""
    if credit:
        await ws.send(json.dumps({"credit": n}))
    return [unpack_frame(await asyncio.wait_for(ws.recv(), TIMEOUT)) for _ in range(n)]


# ---- HTTP ------------------------------------------------------------------------------------
def test_info_and_viewer(url):
    i = info(url)
    assert (i["size"], i["channel_multiplier"], i["device"], i["dtype"]) == (SIZE, 1, "cpu", "float32")
    assert i["version"] == soat.__version__ and i["max_width"] == 8192
    page = httpx.get(url + "/", timeout=TIMEOUT)
    assert page.status_code == 200 and "<canvas" in page.text
    assert httpx.get(url + "/static/viewer.js", timeout=TIMEOUT).status_code == 200


def test_png_equals_panorama_columns(url, G):
    r = httpx.get(url + "/api/panorama.png", params={"seed": 7, "x": 5, "w": 45}, timeout=TIMEOUT)
    assert r.status_code == 200 and r.headers["content-type"] == "image/png"
    assert np.array_equal(decode(r.content), soat.to_uint8(G.panorama_columns(7, 5, 45))[0])


@pytest.mark.parametrize("query, needle", [
    ("x=0&w=4", "seed is missing"),
    ("seed=-1&x=0&w=4", "seed='-1' is not an integer"),
    ("seed=1e3&x=0&w=4", "seed='1e3'"),
    ("seed=1&x=abc&w=4", "x='abc'"),
    ("seed=1&x=9007199254740992&w=4", "x=9007199254740992 is out of range"),
    ("seed=1&x=0&w=0", "w=0 is out of range"),
    ("seed=1&x=0&w=8193", "w=8193 is out of range"),
    ("seed=1&x=0&w=4&h=3", "unknown query parameter 'h'"),
    ("seed=1&seed=2&x=0&w=4", "seed is given more than once"),
])
def test_bad_queries_get_400(url, query, needle):
    r = httpx.get(url + "/api/panorama.png?" + query, timeout=TIMEOUT)
    assert r.status_code == 400
    assert needle in r.json()["error"]


def test_loop_stays_responsive_while_the_generator_works(url):
    done = threading.Event()

    def long_request():
        httpx.get(url + "/api/panorama.png", params={"seed": 9, "x": 0, "w": 12 * SIZE}, timeout=3 * TIMEOUT)
        done.set()

    threading.Thread(target=long_request, daemon=True).start()
    time.sleep(0.3)
    t0 = time.monotonic()
    info(url)
    answered = time.monotonic() - t0
    busy = not done.is_set()
    done.wait(3 * TIMEOUT)
    assert busy, "the long request finished too soon to tell"
    assert answered < 1.0, f"/api/info took {answered:.2f} s while spans were computed"


def test_cli_parser_and_usage_errors(capsys):
    from soat.serve import cli
    parser = argparse.ArgumentParser(prog="soat")
    cli.add_parser(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["serve", "--checkpoint", "/nonexistent/g.pt", "--port", "9"])
    assert (args.host, args.port, args.device, args.dtype, args.truncation) == ("127.0.0.1", 9, "cpu", "fp32", 0.7)
    code, err = serve_cli(capsys, "--port", "9")
    assert code == 2 and len(err) == 1 and err[0].startswith("soat: error: ") and "/nonexistent/g.pt" in err[0]
    assert serve_cli(capsys, "--max-batch", "0") == (2, ["soat: error: --max-batch=0 must be >= 1"])


# ---- the stream ------------------------------------------------------------------------------
def test_stream_frames_are_contiguous_and_match(url, G):
    async def go():
        async with connect(ws_url(url, "seed=4&x=3&tile=5&format=png")) as ws:
            hello = json.loads(await ws.recv())
            assert hello["type"] == "hello" and (hello["size"], hello["tile"], hello["x"]) == (SIZE, 5, 3)
            return await frames(ws, 3) + await frames(ws, 4)

    got = run(go())
    assert [f[0] for f in got] == list(range(7))
    assert [f[1] for f in got] == [3 + 5 * k for k in range(7)]
    tiles = np.concatenate([decode(f[4]) for f in got], axis=1)
    expected = soat.to_uint8(G.panorama_columns(4, 3, 35))[0]
    # batched spans may differ from batch-1 ones in the last fp32 bits: at most one level
    assert np.abs(tiles.astype(int) - expected).max() <= 1


def test_batch_frames_hold_consecutive_tiles_that_match(url, G):
    async def go():
        async with connect(ws_url(url, "seed=9&x=6&tile=5&format=png&batch=3")) as ws:
            hello = json.loads(await ws.recv())
            assert (hello["batch"], hello["tile"]) == (3, 5)
            await ws.send(json.dumps({"credit": 2}))  # a credit is a message: 2 of them, 6 tiles
            messages = [await asyncio.wait_for(ws.recv(), TIMEOUT) for _ in range(2)]
            with pytest.raises(asyncio.TimeoutError):
                await asyncio.wait_for(ws.recv(), 1.0)  # credit spent
            return messages

    messages = run(go())
    assert all(m[:4] == b"SOAB" for m in messages)
    got = [f for m in messages for f in unpack_message(m)]
    assert [len(unpack_message(m)) for m in messages] == [3, 3]
    assert [(f[0], f[1], f[2]) for f in got] == [(k, 6 + 5 * k, 5) for k in range(6)]  # sequence numbers count tiles
    tiles = np.concatenate([decode(f[4]) for f in got], axis=1)
    assert np.abs(tiles.astype(int) - soat.to_uint8(G.panorama_columns(9, 6, 30))[0]).max() <= 1


@pytest.mark.parametrize("fmt", ["jpeg", "webp"])
def test_stream_formats(url, fmt):
    async def go():
        async with connect(ws_url(url, f"seed=1&tile=6&format={fmt}")) as ws:
            await ws.recv()
            return await frames(ws, 1)

    (seq, col, width, got_fmt, payload), = run(go())
    assert (seq, col, width, got_fmt) == (0, 0, 6, fmt)
    assert decode(payload).shape == (SIZE, 6, 3)


def test_no_frame_without_credit(url):
    async def go():
        async with connect(ws_url(url, "seed=2&tile=8&format=png")) as ws:
            await ws.recv()
            first = await frames(ws, 2)
            with pytest.raises(asyncio.TimeoutError):
                await asyncio.wait_for(ws.recv(), 1.5)  # credit spent: the server must wait
            return first + await frames(ws, 1)

    assert [f[0] for f in run(go())] == [0, 1, 2]


@pytest.mark.parametrize("message, code, needle", [
    ("nonsense", 1008, "not JSON"),
    ('{"go": 1}', 1008, "unknown message"),
    ("[1, 2]", 1008, "unknown message"),
    ('{"credit": 0}', 1008, "credit=0"),
    ('{"credit": "2"}', 1008, "credit='2'"),
    ('{"credit": true}', 1008, "credit=True"),
    (json.dumps({"credit": MAX_CREDIT + 1}), 1008, "exceeds the limit"),
    (b"\x00\x01", 1003, "binary messages"),
    ("x" * 2000, 1009, "longer than"),
])
def test_bad_messages_close_only_that_connection(url, message, code, needle):
    async def go():
        async with connect(ws_url(url, "seed=5&tile=8&format=png")) as good, \
                connect(ws_url(url, "seed=6&tile=8")) as bad:
            await good.recv()
            await bad.recv()
            await bad.send(message)
            error = json.loads(await asyncio.wait_for(bad.recv(), TIMEOUT))
            with pytest.raises(ConnectionClosed) as closed:
                await asyncio.wait_for(bad.recv(), TIMEOUT)
            assert [f[0] for f in await frames(good, 2)] == [0, 1]  # the other stream goes on
            return error, closed.value.rcvd

    error, close = run(go())
    assert error["type"] == "error" and needle in error["error"]
    assert close.code == code and needle in close.reason


@pytest.mark.parametrize("query, needle", [
    ("seed=-1", "seed='-1'"), ("tile=0", "tile=0 is out of range"), ("format=gif", "format='gif'"),
    ("speed=3", "unknown query parameter 'speed'"), ("batch=0", "batch=0 is out of range"),
    (f"batch={MAX_BATCH + 1}", f"allowed: 1 <= batch <= {MAX_BATCH}"),
])
def test_bad_stream_queries_close_with_a_reason(url, query, needle):
    async def go():
        async with connect(ws_url(url, query)) as ws:
            error = json.loads(await asyncio.wait_for(ws.recv(), TIMEOUT))
            with pytest.raises(ConnectionClosed) as closed:
                await asyncio.wait_for(ws.recv(), TIMEOUT)
            return error, closed.value.rcvd

    error, close = run(go())
    assert needle in error["error"] and close.code == 1008 and needle in close.reason


def wait_idle(base: str) -> dict:
    deadline = time.monotonic() + TIMEOUT
    while True:
        i = info(base)
        if (i["streams"], i["pending_spans"]) == (0, 0) or time.monotonic() > deadline:
            return i
        time.sleep(0.1)


def test_disconnect_mid_stream_frees_everything(url):
    async def go():
        ws = await connect(ws_url(url, "seed=8&tile=8&format=png"))
        await ws.recv()
        await ws.send(json.dumps({"credit": 16}))
        await asyncio.wait_for(ws.recv(), TIMEOUT)
        assert info(url)["streams"] == 1
        ws.transport.abort()  # vanish without a close handshake, frames still owed

    run(go())
    i = wait_idle(url)
    assert (i["streams"], i["pending_spans"]) == (0, 0)


def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


CLIENTS = 8
STEADY_S = 8.0
RSS_SLACK = 48 * 2 ** 20  # allocator and thread-stack jitter; a leak of frames or spans grows without bound


def test_eight_clients_flat_memory_no_lost_frames(url):
    async def client(seed: int, stop: float) -> int:
        start, tile = 13 * seed, SIZE // 2  # half-span tiles: two frames per new span
        async with connect(ws_url(url, f"seed={seed}&x={start}&tile={tile}&format=png")) as ws:
            await ws.recv()
            await ws.send(json.dumps({"credit": 2}))
            unspent, n = 2, 0
            while time.monotonic() < stop:
                seq, col, width, _, payload = unpack_frame(await asyncio.wait_for(ws.recv(), TIMEOUT))
                assert (seq, col, width) == (n, start + tile * n, tile), f"client {seed}: frame lost or out of order"
                assert decode(payload).shape == (SIZE, tile, 3)
                n, unspent = n + 1, unspent - 1
                if unspent == 0:
                    await ws.send(json.dumps({"credit": 2}))
                    unspent = 2
            return n

    async def sample(stop: float, samples: list) -> None:
        while time.monotonic() < stop:
            samples.append((time.monotonic(), rss_bytes()))
            await asyncio.sleep(0.1)

    async def go():
        t0 = time.monotonic()
        stop = t0 + 2.0 + STEADY_S
        samples: list = []
        counts = await asyncio.gather(*(client(s, stop) for s in range(CLIENTS)), sample(stop, samples))
        steady = [r for t, r in samples if t > t0 + 2.0]  # after the first spans and allocator warm-up
        return counts[:CLIENTS], steady

    before = info(url)
    counts, steady = run(go())
    after = wait_idle(url)
    assert all(n >= 2 for n in counts), counts
    third = len(steady) // 3
    growth = min(steady[-third:]) - min(steady[:third])  # floors: transient batch buffers come and go
    assert growth < RSS_SLACK, f"RSS floor grew {growth / 2**20:.1f} MiB over {STEADY_S} s (frames {counts})"
    per_call = (after["spans"] - before["spans"]) / max(1, after["batches"] - before["batches"])
    assert per_call > 1.5, f"{per_call:.2f} spans per generator call: the clients were not batched"
    assert (after["streams"], after["pending_spans"]) == (0, 0)


# ---- the host path: uint8 on the device -------------------------------------------------------
@pytest.mark.parametrize("whole", [False, True])  # the CPU's part-by-part pass and the GPU's one pass
def test_device_uint8_rounds_exactly_as_to_uint8(whole):
    from soat.runtime.images import device_uint8
    parts = [torch.randn(1, 3, SIZE, w, generator=torch.Generator().manual_seed(w)) * 1.3 for w in (12, 8, 8)]
    parts[1][0, :, 0, :4] = torch.tensor([-1.0, 1.0, 0.5 / 255 * 2 - 1, 1.5 / 255 * 2 - 1])  # edges and halves
    expected = np.concatenate([soat.to_uint8(p)[0] for p in parts], axis=1)
    assert np.array_equal(device_uint8(parts, whole).numpy(), expected)
    half = [p.half() for p in parts]  # the fp16 path: converted to float first, as to_uint8 does
    assert np.array_equal(device_uint8(half, whole).numpy(),
                          np.concatenate([soat.to_uint8(p)[0] for p in half], axis=1))


# ---- the batcher's span source is injected, not patched ----------------------------------------
def test_the_batcher_computes_spans_with_the_span_source_it_is_given(G):
    from concurrent.futures import ThreadPoolExecutor

    from soat.runtime.endless import SpanKey, span_columns
    from soat.serve.batcher import SpanBatcher
    calls = []

    def flat_grey(g, keys):  # a free generator: every span a constant image
        calls.append(list(keys))
        widths = [hi - lo for lo, hi in (span_columns(g.size, k.index) for k in keys)]
        return [torch.full((1, 3, g.size, w), 0.5) for w in widths]

    async def tile():
        batcher = SpanBatcher(G, worker, 1.0, max_batch=4, span_source=flat_grey)
        try:
            return await batcher.tile(3, 0, 2 * SIZE)
        finally:
            batcher.close()

    with ThreadPoolExecutor(1) as worker:
        pixels = run(tile())
    assert pixels.shape == (SIZE, 2 * SIZE, 3) and (pixels == soat.to_uint8(torch.full((1, 3, 1, 1), 0.5))).all()
    assert calls == [[SpanKey(3, 0, 1.0), SpanKey(3, 1, 1.0)]]  # one batch, and the real spans were never computed


# ---- the batch policy: sized to what the device gains (issue 29) --------------------------------
def policy(graphs, per_span: bool, target_s: float = 0.25, **seconds):
    """A ``BatchPolicy`` (max_batch 16) that has timed batches of the sizes given as ``b1=...``, ``b16=...``."""
    from soat.serve.batcher import BatchPolicy
    p = BatchPolicy(16, 0.004, target_s, graphs, per_span)
    for size, s in seconds.items():
        p.observe(int(size[1:]), s)
    return p


def test_the_policy_takes_one_span_a_batch_where_spans_cost_the_same_alone(G):
    cpu = policy(G.cuda_graphs, True, b1=2.0, b4=8.4)  # a CPU: a batch costs its spans, whatever their number
    assert [cpu.size(n) for n in (1, 2, 8, 40)] == [1, 1, 1, 1]
    assert cpu.seconds(3) == pytest.approx(3 * 2.1, rel=0.05)
    assert policy(G.cuda_graphs, True, b1=2.0).size(8) == 1  # one size timed: a CPU's spans cost the same per span


def test_the_policy_takes_every_waiting_span_where_a_batch_is_quick(G):
    gpu = policy(G.cuda_graphs, False, b1=0.020, b16=0.035)  # mostly a cost per call
    assert [gpu.size(n) for n in (1, 5, 16, 40)] == [1, 5, 16, 16]
    slow_gpu = policy(G.cuda_graphs, False, target_s=0.0, b1=0.020, b16=0.035)  # no batch is quick: still one call
    assert slow_gpu.size(16) == 16
    assert policy(G.cuda_graphs, False, b1=2.0).size(8) == 8  # one size timed off the CPU: the same cost per call
    assert policy(G.cuda_graphs, True).size(8) == 8  # nothing timed yet: every waiting span


def test_the_policy_splits_a_slow_batch_only_where_that_costs_little(G):
    mixed = policy(G.cuda_graphs, True, b1=2.0, b8=9.0)  # 1 s a call + 1 s a span
    assert mixed.size(8) == 4  # 2 calls of 4 cost 10 s, 10% more than one of 8 (9 s); 4 of 2 would cost 12 s
    assert policy(G.cuda_graphs, True, target_s=10.0, b1=2.0, b8=9.0).size(8) == 8  # 9 s is quick enough


def test_the_policy_times_padded_batches_and_not_captures():
    from types import SimpleNamespace

    from soat.runtime.cuda_graph_tasks import CudaGraphTasks

    class OnGpu:  # a generator as the policy sees one on a GPU with a capturable backend (nothing is captured)
        device, backend = torch.device("cuda"), SimpleNamespace(capturable=True)
    p = policy(CudaGraphTasks(OnGpu(), True), False, target_s=0.0)
    p.observe(16, 5.0)  # the first call of a size captures its CUDA graph: not timed
    assert p.seconds(16) is None
    for size, s in ((16, 0.040), (4, 5.0), (1, 5.0)):  # 16 timed; 4 and 1 captured
        p.observe(size, s)
    assert p.seconds(1) == pytest.approx(0.040)  # one size timed off the CPU: the same cost per call
    p.observe(4, 0.025)
    p.observe(1, 0.020)
    assert p.seconds(3) == pytest.approx(0.025, rel=0.05)  # 3 spans run as a batch of 4
    assert p.size(12) == 12  # 12 spans run padded to 16: splitting would cost more


# ---- the CPU's story: one span a batch, abandoned spans dropped, ranges not starved, a true ETA ----
ALIGNED = SIZE + SIZE // 2  # a tile of SIZE columns from ALIGNED + k * SIZE is exactly span k + 1


class Recorded:
    """The runtime's ``spans``, noting every key it computes (the server's span source)."""

    def __init__(self):
        self.keys: list = []

    def __call__(self, G, keys):
        from soat.runtime.endless import spans
        self.keys.extend(keys)
        return spans(G, keys)

    def indices(self, seed: int) -> list[int]:
        return [k.index for k in self.keys if k.seed == seed]


@pytest.fixture(scope="module")
def computed() -> Recorded:
    return Recorded()


@pytest.fixture(scope="module")
def cpu_url(G, computed):
    # target_batch_s=0: no batch is quick enough to take every waiting span, so the policy splits batches as on
    # a CPU, where a span costs the same alone: one span a batch, whatever the load on this machine
    with background_server(create_app(G, max_batch=4, window_s=0.01, target_batch_s=0.0,
                                      span_source=computed)) as base:
        yield base


def aligned(base: str, seed: int, k: int = 0) -> str:
    return ws_url(base, f"seed={seed}&x={ALIGNED + k * SIZE}&tile={SIZE}&format=png")


def test_on_a_cpu_each_span_is_its_own_batch_and_tiles_come_one_by_one(cpu_url):
    async def go():
        async with connect(aligned(cpu_url, 30)) as ws:
            await ws.recv()
            return await frames(ws, 6)

    before = info(cpu_url)
    assert before["batch_size"] == 1 and before["batch_ms"] > 0  # the warm-up timed a span
    got = run(go())
    after = wait_idle(cpu_url)
    assert [f[1] for f in got] == [ALIGNED + k * SIZE for k in range(6)]
    assert after["spans"] - before["spans"] == after["batches"] - before["batches"] == 6
    assert after["largest_batch"] == 1


def test_spans_of_a_stream_that_left_are_dropped_and_shared_ones_stay(cpu_url, computed):
    async def go():
        left = await connect(aligned(cpu_url, 40))
        shared = [await connect(aligned(cpu_url, 41)) for _ in range(2)]
        for ws in (left, *shared):
            await ws.recv()
            await ws.send(json.dumps({"credit": 8}))
        await asyncio.wait_for(left.recv(), TIMEOUT)
        await left.close()  # the viewer moves on: its stream closes, and a new one opens elsewhere
        async with connect(aligned(cpu_url, 42)) as moved:
            await moved.recv()
            await frames(moved, 1)
        await asyncio.wait_for(shared[0].recv(), TIMEOUT)
        await shared[0].close()  # one of two viewers of seed 41 leaves; the other stays
        rest = [unpack_frame(await asyncio.wait_for(shared[1].recv(), TIMEOUT)) for _ in range(8)]
        await shared[1].close()
        return rest

    rest = run(go())
    assert [f[1] for f in rest] == [ALIGNED + k * SIZE for k in range(8)]  # shared spans kept, in order
    assert wait_idle(cpu_url)["pending_spans"] == 0
    left = computed.indices(40)
    # the one tile received, and at most the two batches already taken when the stream left; never its other 5
    assert sorted(left) == list(range(1, 1 + len(left))) and len(left) <= 3, left
    assert sorted(computed.indices(41)) == list(range(1, 9))  # each shared span once


def test_a_range_completes_while_a_stream_is_busy(cpu_url, G):
    width = 5 * SIZE  # 6 spans, each computed alone

    async def go():
        arrivals: list[float] = []
        async with connect(aligned(cpu_url, 50)) as ws, httpx.AsyncClient() as client:
            await ws.recv()
            await ws.send(json.dumps({"credit": MAX_CREDIT}))  # 32 spans of work: busy well past the range

            async def receive():
                while True:
                    await ws.recv()
                    arrivals.append(time.monotonic())

            receiver = asyncio.create_task(receive())
            while not arrivals:
                await asyncio.sleep(0.01)
            began = time.monotonic()
            r = await client.get(cpu_url + "/api/panorama.png", params={"seed": 51, "x": 2, "w": width},
                                 timeout=TIMEOUT)
            ended = time.monotonic()
            busy = (await client.get(cpu_url + "/api/info", timeout=TIMEOUT)).json()["pending_spans"]
            receiver.cancel()
        return r, busy, sum(began <= t <= ended for t in arrivals)

    r, busy, during = run(go())
    assert r.status_code == 200 and np.array_equal(decode(r.content), soat.to_uint8(G.panorama_columns(51, 2, width))[0])
    assert busy > 0, "the stream ran out of work before the range was done: that shows no turn-taking"
    spans = 6
    # turns alternate: a stream batch (one span) between range spans, give or take the one in progress at each end
    assert 1 <= during <= spans + 2, f"{during} stream tiles while the range's {spans} spans were computed"
    wait_idle(cpu_url)


def test_the_eta_follows_the_queue(cpu_url):
    def eta(seed: int, x: int) -> float:
        r = httpx.get(cpu_url + "/api/info", params={"seed": seed, "x": x, "tile": SIZE}, timeout=TIMEOUT)
        return r.json()["first_tile_eta_s"]

    async def go():
        async with connect(aligned(cpu_url, 60)) as ws:
            await ws.recv()
            await frames(ws, 1)
            await ws.send(json.dumps({"credit": 8}))
            await asyncio.wait_for(ws.recv(), TIMEOUT)
            return eta(60, ALIGNED + 2 * SIZE), eta(60, ALIGNED + 8 * SIZE), eta(60, ALIGNED + 40 * SIZE)

    assert eta(0, 0) == 0  # seed 0's first span: computed at warm-up, cached
    soon, later, nobody = run(go())
    assert 0 <= soon < later, (soon, later)  # seven spans further back in the queue
    assert nobody <= later  # a tile nobody asked for queues as a new stream's first: ahead of others' later tiles
    r = httpx.get(cpu_url + "/api/info", params={"seed": "x"}, timeout=TIMEOUT)
    assert r.status_code == 400 and "seed='x' is not an integer" in r.json()["error"]
    wait_idle(cpu_url)


# ---- soat serve's command line: the port is checked before the model loads ----------------------
def serve_cli(capsys, *flags: str) -> tuple[int, list[str]]:
    """``soat serve FLAGS`` in this process: exit status and stderr lines (a bad checkpoint would fail
    later, so an error about the port shows that the port was checked before loading)."""
    from soat.cli import main
    return main(["serve", "--checkpoint", "/nonexistent/g.pt", *flags]), capsys.readouterr().err.strip().splitlines()


@pytest.mark.parametrize("port", ["99999", "-1"])
def test_cli_invalid_port_is_one_line_and_exit_2(capsys, port):
    assert serve_cli(capsys, "--port", port) == (
        2, [f"soat: error: --port={port} is out of range; allowed: 0 <= port <= 65535"])


def test_cli_errors_share_soat_s_one_line(capsys):
    assert serve_cli(capsys, "--workers", "0") == (2, ["soat: error: --workers=0 must be >= 1"])


def test_cli_busy_port_is_one_line_and_exit_2_before_loading(capsys):
    import socket
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        assert serve_cli(capsys, "--port", str(port)) == (
            2, [f"soat: error: port {port} on 127.0.0.1 is in use by another program; choose another with --port"])


def test_cli_prints_the_url_only_once_listening():
    import subprocess
    import sys
    proc = subprocess.Popen([sys.executable, "-m", "soat.cli", "serve", "--size", str(SIZE), "--channel-multiplier",
                             "1", "--truncation", "1", "--port", "0"], stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 3 * TIMEOUT
        for line in proc.stderr:
            if " at http://" in line or time.monotonic() > deadline:
                break
        assert " at http://" in line, "no URL printed"
        base = line.rsplit(" at ", 1)[1].strip().rstrip("/")
        assert info(base)["size"] == SIZE  # at once: no connection refused after the URL
    finally:
        proc.terminate()
        proc.wait(TIMEOUT)


# ---- abandoned and excess range requests (issue 18, item 1) -------------------------------------
def raw_get(base: str, path: str):
    """Send a GET on a raw socket and return the socket (the caller reads or abandons it)."""
    import socket
    host, port = base.removeprefix("http://").split(":")
    sock = socket.create_connection((host, int(port)), timeout=TIMEOUT)
    sock.sendall(f"GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode())
    return sock


def read_response(sock) -> bytes:
    chunks = []
    while chunk := sock.recv(65536):
        chunks.append(chunk)
    return b"".join(chunks)


def test_excess_range_requests_get_503_at_once(url):
    held = [raw_get(url, f"/api/panorama.png?seed={100 + k}&x=0&w=8192") for k in range(4)]
    try:
        time.sleep(0.3)
        t0 = time.monotonic()
        r = httpx.get(url + "/api/panorama.png", params={"seed": 1, "x": 0, "w": 8}, timeout=TIMEOUT)
        assert r.status_code == 503 and r.headers["retry-after"] == "1" and "this client" in r.json()["error"]
        assert time.monotonic() - t0 < 2.0
    finally:
        for sock in held:
            sock.close()
    deadline = time.monotonic() + TIMEOUT
    while info(url)["open_ranges"] and time.monotonic() < deadline:
        time.sleep(0.1)
    assert info(url)["open_ranges"] == 0, "abandoned range requests were not cancelled"
    assert httpx.get(url + "/api/panorama.png", params={"seed": 1, "x": 0, "w": 8}, timeout=TIMEOUT).status_code == 200


def wait_for(base: str, ready) -> dict:
    """/api/info once ``ready(info)`` holds (or after TIMEOUT)."""
    deadline = time.monotonic() + TIMEOUT
    while not ready(i := info(base)) and time.monotonic() < deadline:
        time.sleep(0.05)
    return i


def test_a_range_dropped_mid_way_logs_nothing_and_the_server_stays_healthy(url, G, caplog):
    # uvicorn's loggers do not propagate to the root logger: listen to them too
    loggers = [logging.getLogger(name) for name in ("uvicorn", "uvicorn.error", "uvicorn.access")]
    for logger in loggers:
        logger.addHandler(caplog.handler)
    try:
        with caplog.at_level(logging.WARNING):
            sock = raw_get(url, "/api/panorama.png?seed=301&x=0&w=800")  # 100 spans: still open when dropped
            assert wait_for(url, lambda i: i["open_ranges"] == 1)["open_ranges"] == 1
            sock.close()
            assert wait_for(url, lambda i: i["open_ranges"] == 0)["open_ranges"] == 0
    finally:
        for logger in loggers:
            logger.removeHandler(caplog.handler)
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING] == []
    r = httpx.get(url + "/api/panorama.png", params={"seed": 301, "x": 3, "w": 9}, timeout=TIMEOUT)
    assert r.status_code == 200 and np.array_equal(decode(r.content), soat.to_uint8(G.panorama_columns(301, 3, 9))[0])


def test_fifty_abandoned_wide_ranges_do_not_delay_a_new_stream(url):
    socks = [raw_get(url, f"/api/panorama.png?seed={200 + k}&x=0&w=8192") for k in range(50)]
    time.sleep(0.5)
    for sock in socks:  # the clients give up
        sock.close()

    async def first_frame() -> float:
        t0 = time.monotonic()
        async with connect(ws_url(url, "seed=77&tile=8&format=png")) as ws:
            await ws.recv()
            await frames(ws, 1)
        return time.monotonic() - t0

    took = run(first_frame())
    assert took < 5.0, f"the first frame of a new stream took {took:.1f} s behind abandoned range requests"
    deadline = time.monotonic() + TIMEOUT
    while info(url)["open_ranges"] and time.monotonic() < deadline:
        time.sleep(0.1)
    assert info(url)["open_ranges"] == 0


# ---- many clients in their own processes (bench/serve_load.py) ---------------------------------
@pytest.mark.full
def test_many_clients_in_other_processes_get_every_frame_in_order(url):
    from soat.bench.serve_load import run_load
    r = run_load(url, clients=16, seconds=5.0, warmup=3.0, processes=2, credit=2, tile=SIZE // 2, fmt="png")
    assert (r.failed_clients, r.order_errors) == (0, 0), r
    assert r.clients_served == r.clients and r.frames >= r.clients, r
    assert (wait_idle(url)["streams"]) == 0

