"""Operating ``soat serve`` (issue 30): metrics, health, the per-stream log line, SIGTERM drain, the JPEG
encoders and the crowd benchmark's viewers.

Servers run on 127.0.0.1 with free ports on tiny CPU models (8 px, channel multiplier 1): in a thread of
this process, or as real ``soat serve`` processes where signals are the point; every wait is bounded.
"""

from __future__ import annotations

import asyncio
import io
import json
import logging
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

pytest.importorskip("starlette", reason="the serve extra (starlette, uvicorn, websockets) is not installed")
pytest.importorskip("prometheus_client", reason="the serve extra (prometheus-client) is not installed")
pytest.importorskip("simplejpeg", reason="the serve extra (simplejpeg) is not installed")
httpx = pytest.importorskip("httpx", reason="httpx is needed to test the HTTP routes")
from PIL import Image  # noqa: E402
from prometheus_client.parser import text_string_to_metric_families  # noqa: E402
from websockets.asyncio.client import connect  # noqa: E402
from websockets.exceptions import ConnectionClosed  # noqa: E402

import soat  # noqa: E402
from conftest import make_styles  # noqa: E402
from soat.serve.app import background_server, create_app  # noqa: E402
from soat.serve.protocol import CLOSE_RECONNECT, unpack_frame  # noqa: E402
from soat.serve.replica import ReplicaApp, local_identity  # noqa: E402

SIZE = 8
TIMEOUT = 60  # seconds any single wait may take on a loaded 2-core machine
DRAIN_S = 30  # the drain bound of the servers started here (never reached: their frames take seconds)
EXIT_BOUND_S = DRAIN_S + 20  # SIGTERM to exit: the drain, uvicorn's grace, the batch in progress


def run(coro):
    return asyncio.run(asyncio.wait_for(coro, 3 * TIMEOUT))


def ws_url(base: str, query: str) -> str:
    return base.replace("http://", "ws://") + "/api/stream?" + query


def decode(payload: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(payload)).convert("RGB"))


def scrape(base: str) -> dict[tuple[str, tuple], float]:
    """``/metrics`` parsed by prometheus-client's own parser: ``{(sample name, sorted labels): value}``."""
    r = httpx.get(base + "/metrics", timeout=TIMEOUT)
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain"), r.text[:200]
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(r.text) for s in family.samples}


def wait_for(check, what: str):
    deadline = time.monotonic() + TIMEOUT
    while not (result := check()):
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)
    return result


async def stream_frames(base: str, query: str, n: int) -> list[tuple]:
    async with connect(ws_url(base, query)) as ws:
        json.loads(await ws.recv())  # hello
        await ws.send(json.dumps({"credit": n}))
        return [unpack_frame(await asyncio.wait_for(ws.recv(), TIMEOUT)) for _ in range(n)]


# ---- metrics, health, the log line ---------------------------------------------------------------
def test_metrics_move_with_a_stream_health_answers_and_each_stream_logs_one_line(g8, caplog):
    app = ReplicaApp(create_app(g8, truncation=1.0, max_batch=4, window_s=0.01), local_identity())
    with caplog.at_level(logging.INFO, logger="soat.serve"), background_server(app) as base:
        health = httpx.get(base + "/healthz", headers={"Host": "anything.example"}, timeout=TIMEOUT)
        assert health.status_code == 200 and health.json()["status"] == "ok"
        before = scrape(base)
        frames = run(stream_frames(base, "seed=3&x=5&tile=8&format=png", 3))
        with pytest.raises(ConnectionClosed):  # a refused stream is counted and logged too
            run(stream_frames(base, "seed=3&format=gif", 1))
        after = wait_for(lambda: (m := scrape(base))[("soat_active_streams", ())] == 0 and m, "the stream to end")
        info = httpx.get(base + "/api/info", timeout=TIMEOUT).json()

    def grew(name, **labels):
        key = (name, tuple(sorted(labels.items())))
        return after[key] - before.get(key, 0.0)

    assert [f[1] for f in frames] == [5, 13, 21]
    assert grew("soat_frames_total", format="png") == 3 and grew("soat_tiles_total") == 3.0
    assert grew("soat_frame_latency_seconds_count") == 3 and grew("soat_frame_latency_seconds_sum") > 0
    assert grew("soat_batch_size_count") >= 1 and grew("soat_batch_size_sum") >= 3  # the tiles' 4 spans, batched
    assert after[("soat_batch_size_sum", ())] == info["spans"] and after[("soat_batch_size_count", ())] == info["batches"]
    assert grew("soat_batch_seconds_count") == grew("soat_batch_size_count")
    assert grew("soat_streams_closed_total", reason="client") == 1 and grew("soat_streams_closed_total", reason="refused") == 1
    assert after[("soat_queue_depth", ())] == 0 and not [k for k in after if k[0] == "soat_gpu_memory_bytes"]  # CPU

    lines = [r for r in caplog.records if r.name == "soat.serve" and hasattr(r, "stream")]
    served, refused = lines[-2].stream, lines[-1].stream
    assert {k: served[k] for k in ("seed", "x", "tile", "format", "frames", "columns", "close")} == {
        "seed": 3, "x": 5, "tile": 8, "format": "png", "frames": 3, "columns": 24, "close": "client"}
    assert served["duration_s"] > 0 and served["client"] == "127.0.0.1"
    assert "seed=3 x=5 tile=8 format=png frames=3 columns=24" in lines[-2].getMessage()
    assert (refused["close"], refused["code"]) == ("refused", 1008) and "seed" not in refused


# ---- SIGTERM drains a real server -----------------------------------------------------------------
def start_serve(*flags: str) -> tuple[subprocess.Popen, str]:
    """``soat serve`` (8 px, truncation 1) in a process of its own; returns once it prints its URL."""
    proc = subprocess.Popen([sys.executable, "-m", "soat.cli", "serve", "--size", str(SIZE), "--channel-multiplier",
                             "1", "--truncation", "1", "--port", "0", "--drain-s", str(DRAIN_S), *flags],
                            stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 3 * TIMEOUT
    for line in proc.stderr:
        if " at http://" in line:
            return proc, line.rsplit(" at ", 1)[1].strip().rstrip("/")
        if time.monotonic() > deadline:
            break
    proc.kill()
    raise AssertionError(f"soat serve did not start: {proc.stderr.read()[-2000:]}")


def test_sigterm_drains_in_flight_frames_then_closes_with_reconnect_and_exits(g8):
    """One span per batch (``--max-batch 1``), so that frames are still being computed when SIGTERM comes:
    every frame started is sent, in order and exact, then the stream closes with 1012 naming the column to
    resume at, the port stops answering, and the process exits 0."""
    proc, base = start_serve("--max-batch", "1")
    try:
        async def go():
            async with connect(ws_url(base, "seed=9&x=3&tile=8&format=png")) as ws:
                json.loads(await ws.recv())
                await ws.send(json.dumps({"credit": 8}))  # eight frames started at once (the stream's pipeline)
                got = [unpack_frame(await asyncio.wait_for(ws.recv(), TIMEOUT))]
                proc.send_signal(signal.SIGTERM)
                with pytest.raises(ConnectionClosed) as closed:
                    while True:
                        message = await asyncio.wait_for(ws.recv(), TIMEOUT)
                        if isinstance(message, bytes):
                            got.append(unpack_frame(message))
                        else:
                            error = json.loads(message)["error"]
                return got, error, closed.value.rcvd

        frames, error, close = run(go())
        with pytest.raises(httpx.TransportError):  # no longer listening
            httpx.get(base + "/healthz", timeout=TIMEOUT)
        assert proc.wait(EXIT_BOUND_S) == 0
    finally:
        proc.kill()
        log = proc.stderr.read()
    assert [f[0] for f in frames] == list(range(8)) and [f[1] for f in frames] == [3 + 8 * k for k in range(8)]
    G = soat.load("random", size=SIZE, channel_multiplier=1)  # what soat serve --size 8 --channel-multiplier 1 loads
    expected = soat.to_uint8(G.panorama_columns(9, 3, 64, truncation=1.0))[0]
    assert np.abs(np.concatenate([decode(f[4]) for f in frames], axis=1).astype(int) - expected).max() <= 1
    assert close.code == CLOSE_RECONNECT == 1012 and "resume at column 67" in close.reason and "resume at column 67" in error
    assert "seed=9 x=3 tile=8 format=png frames=8 columns=64" in log and "close=drain code=1012" in log


def test_workers_answer_for_each_other_on_metrics_and_all_drain_on_sigterm():
    proc, base = start_serve("--workers", "2")
    try:
        run(stream_frames(base, "seed=4&tile=8&format=jpeg", 2))
        wait_for(lambda: scrape(base)[("soat_streams_closed_total", (("reason", "client"),))] == 1, "the stream's end")
        for _ in range(4):  # each scrape reaches either worker; every one counts both workers' frames
            m = scrape(base)
            assert m[("soat_frames_total", (("format", "jpeg"),))] == 2, m
            assert m[("soat_streams_closed_total", (("reason", "client"),))] == 1
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(EXIT_BOUND_S) == 0
    finally:
        proc.kill()
        proc.stderr.close()


# ---- the JPEG encoders ----------------------------------------------------------------------------
def test_jpeg_tiles_are_as_close_to_the_exact_pixels_as_pillows_were(g32):
    """libjpeg-turbo through simplejpeg writes the same tables as Pillow did (quality 90, 4:2:0) but is a
    different build: decoded, the two differ by at most 2 levels on average, and the new tiles are no
    further from the exact pixels than Pillow's were (5% slack)."""
    from soat.serve.protocol import JPEG_QUALITY, encode_image
    exact = np.concatenate(list(soat.to_uint8(g32.generate(make_styles(g32, 3, seed=4)))), axis=1)  # 32 x 96
    ours = decode(encode_image(exact, "jpeg")).astype(int)
    buf = io.BytesIO()
    Image.fromarray(exact).save(buf, format="JPEG", quality=JPEG_QUALITY)
    pillow = decode(buf.getvalue()).astype(int)
    assert np.abs(ours - pillow).mean() <= 2
    assert np.abs(ours - exact).mean() <= 1.05 * np.abs(pillow - exact).mean()
    assert np.array_equal(decode(encode_image(exact, "png", fast=True)), exact)  # PNG stays exact


def test_the_jpeg_encoder_is_chosen_in_one_place_and_checked(g8, capsys):
    import torch

    from soat.serve.encoders import check_jpeg_encoder, frame_encoder
    assert frame_encoder("auto", torch.device("cpu"), None).name == "libjpeg-turbo"
    with pytest.raises(soat.SoatError, match="jpeg_encoder='nvjpeg' cannot run: the generator is on cpu, not on CUDA"):
        frame_encoder("nvjpeg", torch.device("cpu"), None)
    with pytest.raises(soat.SoatError, match="jpeg_encoder='gpu' is not a JPEG encoder; use one of auto, "):
        check_jpeg_encoder("gpu")
    from soat.cli import main
    assert main(["serve", "--jpeg-encoder", "gpu", "--port", "0"]) == 2
    assert capsys.readouterr().err.strip().splitlines() == [
        "soat: error: jpeg_encoder='gpu' is not a JPEG encoder; use one of auto, libjpeg-turbo, nvjpeg"]
    with background_server(create_app(g8, truncation=1.0)) as base:
        assert httpx.get(base + "/api/info", timeout=TIMEOUT).json()["jpeg_encoder"] == "libjpeg-turbo"


@pytest.mark.skipif(not __import__("torch").cuda.is_available(), reason="nvJPEG needs a GPU")
def test_nvjpeg_tiles_decode_close_to_the_exact_pixels():
    """On a GPU with torchvision: a batch of tiles of two widths through nvJPEG, each as close to the exact
    pixels as libjpeg-turbo's (4:4:4 chroma: closer)."""
    import torch
    pytest.importorskip("torchvision", reason="nvJPEG comes through torchvision")
    from concurrent.futures import ThreadPoolExecutor

    from soat.serve.encoders import NvJpegEncoder
    from soat.serve.protocol import encode_image
    G = soat.load("random:0", size=64, channel_multiplier=1, device="cuda")
    exact = [soat.to_uint8(G.panorama_columns(seed, 3, width))[0] for seed, width in ((1, 64), (2, 48), (3, 64))]
    with ThreadPoolExecutor(1) as pool:
        encoder = NvJpegEncoder(pool, torch.device("cuda"))
        try:
            payloads = encoder.encode(exact)
        finally:
            encoder.close()
    for tile, payload in zip(exact, payloads):
        error = np.abs(decode(payload).astype(int) - tile).mean()
        assert error <= 1.05 * np.abs(decode(encode_image(tile, "jpeg")).astype(int) - tile).mean(), error


# ---- the crowd benchmark's viewers ---------------------------------------------------------------
def test_a_small_crowd_of_panning_viewers_gets_first_tiles_and_every_frame_in_order():
    """The crowd's viewers against the load test's server with a free generator (what is tested is the
    viewers: their credit, order checks and numbers)."""
    from soat.bench.serve_load import run_crowd, synthetic_server
    with synthetic_server(SIZE, encoders=1, max_batch=8) as base:
        r = run_crowd(base, viewers=4, seconds=4.0, processes=2, seed0=500, canvas=4 * SIZE, tile=SIZE)
    assert (r.failed_viewers, r.order_errors) == (0, 0), r
    assert len(r.viewers) == 4 and all(v.first_tile_ms and v.frames > 0 for v in r.viewers), r
    assert r.connections >= 4 and r.p50_ms <= r.p99_ms <= r.max_ms
