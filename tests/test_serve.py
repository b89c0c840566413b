"""``soat serve``: HTTP column ranges, the tile stream, backpressure, batching, errors.

The server runs in a thread of the test process on 127.0.0.1 with a free port, on a
tiny CPU model (size 8, channel multiplier 1), and is stopped at the end of the module.
"""

import argparse
import asyncio
import io
import json
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
from soat.serve.protocol import MAX_CREDIT, unpack_frame  # noqa: E402

SIZE = 8
TIMEOUT = 60  # seconds any single wait may take on a loaded 2-core machine


@pytest.fixture(scope="module")
def G():
    G = soat.load("random:0", size=SIZE, channel_multiplier=1)
    G.estimate_mean_styles(torch.randn(2000, 512, generator=torch.Generator().manual_seed(0)))  # cheaper sigma_bar
    return G


@pytest.fixture(scope="module")
def url(G):
    with background_server(create_app(G, max_batch=4, window_s=0.01)) as base:
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
    assert args.func(args) == 2
    assert "/nonexistent/g.pt" in capsys.readouterr().err
    args = parser.parse_args(["serve", "--max-batch", "0"])
    assert cli.run(args) == 2
    assert "--max-batch=0" in capsys.readouterr().err


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
    ("speed=3", "unknown query parameter 'speed'"),
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
