"""Hostile clients of ``soat serve`` and hostile arguments to the API, the CLI and the server's options (issue 28).

The server cases run servers in threads of this process on 127.0.0.1 (a second client address is
127.0.0.2, also loopback) with free ports, on a tiny CPU model (size 8, channel multiplier 1) or a
free span source; every wait is bounded. The argument cases check that the Python API, the CLI
and the Ray replica options refuse the same values with the same words (``runtime/checks.py``).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import math
import os
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

import soat
from conftest import make_styles

TIMEOUT = 30  # seconds any single wait may take on a loaded 2-core machine
SIZE = 8


def raises(pattern: str):
    return pytest.raises(soat.SoatError, match=pattern)


def cli_error(capsys, argv: list[str]) -> str:
    """``soat ARGV`` in this process: must exit 2 with one line ``soat: error: ...``; returns that line."""
    from soat.cli import main
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("soat: error: ") and err.count("\n") == 1, err
    return err.strip()


# ==== the server ===================================================================================
serve_deps = pytest.mark.skipif(
    any(__import__("importlib").util.find_spec(m) is None for m in ("starlette", "uvicorn", "websockets", "httpx")),
    reason="the serve extra (starlette, uvicorn, websockets) and httpx are needed")


@pytest.fixture(scope="module")
def G8():
    return soat.load("random:0", size=SIZE, channel_multiplier=1)


def grey_spans(G, keys):
    """A free span source: every span a constant image (no generator work)."""
    from soat.runtime.endless import span_columns
    return [torch.full((1, 3, G.size, hi - lo), 0.25) for lo, hi in (span_columns(G.size, k.index) for k in keys)]


def serving(G, **kwargs):
    from soat.serve.app import background_server, create_app
    return background_server(create_app(G, truncation=1.0, max_batch=4, window_s=0.01, **kwargs))


def ws_url(base: str, query: str = "seed=1&tile=8&format=png") -> str:
    return base.replace("http://", "ws://") + "/api/stream?" + query


def run(coro):
    return asyncio.run(asyncio.wait_for(coro, 4 * TIMEOUT))


def get(base: str, path: str, **headers):
    import httpx
    return httpx.get(base + path, headers=headers, timeout=TIMEOUT)


async def opened(url: str, **kwargs):
    """Connect and read the first message: ``(ws, the hello)`` or ``(None, (close code, reason))``."""
    from websockets.asyncio.client import connect
    from websockets.exceptions import ConnectionClosed
    ws = await asyncio.wait_for(connect(url, **kwargs), TIMEOUT)
    try:
        first = json.loads(await asyncio.wait_for(ws.recv(), TIMEOUT))
        if first["type"] == "hello":
            return ws, first
        await asyncio.wait_for(ws.recv(), TIMEOUT)
    except ConnectionClosed as closed:
        return None, (closed.rcvd.code, closed.rcvd.reason)
    raise AssertionError(f"neither a hello nor a close: {first}")


@serve_deps
def test_one_client_holding_every_stream_does_not_lock_others_out(G8):
    """64 idle streams from one address (the default limit of a process) leave room for another viewer."""
    from soat.serve.protocol import unpack_frame

    async def go():
        held, refused = [], []
        try:
            for _ in range(64):
                ws, hello = await opened(ws_url(base))
                (held if ws is not None else refused).append(ws or hello)
            other, hello = await opened(ws_url(base), local_addr=("127.0.0.2", 0))
            assert other is not None, f"the other viewer was refused: {hello}"
            await other.send(json.dumps({"credit": 1}))
            frame = unpack_frame(await asyncio.wait_for(other.recv(), TIMEOUT))
            await other.close()
            return len(held), refused, frame
        finally:
            for ws in held:
                await ws.close()

    with serving(G8, span_source=grey_spans) as base:
        held, refused, frame = run(go())
        info = get(base, "/api/info").json()
    assert held == info["max_streams_per_client"] == 16
    assert len(refused) == 48 and {code for code, _ in refused} == {1013}
    assert "this client has 16 streams open" in refused[0][1]
    assert frame[:3] == (0, 0, 8)


@serve_deps
def test_streams_that_ask_for_nothing_are_closed_after_the_idle_timeout(G8):
    def slow(G, keys):  # a frame owed for longer than the timeout is not idleness
        time.sleep(1.5)
        return grey_spans(G, keys)

    async def go(base):
        t0 = time.monotonic()
        ws, hello = await opened(ws_url(base))
        from websockets.exceptions import ConnectionClosed
        with pytest.raises(ConnectionClosed) as closed:
            while True:
                message = await asyncio.wait_for(ws.recv(), TIMEOUT)
                assert json.loads(message)["type"] == "error"
        idle_close = closed.value.rcvd, time.monotonic() - t0
        ws, _ = await opened(ws_url(base))
        await ws.send(json.dumps({"credit": 1}))
        frame = await asyncio.wait_for(ws.recv(), TIMEOUT)  # 1.5 s of work, 0.5 s idle timeout
        await ws.close()
        return idle_close, frame

    with serving(G8, span_source=slow, stream_idle_s=0.5) as base:
        (close, took), frame = run(go(base))
        assert get(base, "/api/info").json()["stream_idle_s"] == 0.5
    assert close.code == 1000 and "idle: no frame asked for in 0.5 s" in close.reason
    assert took < 10
    assert isinstance(frame, bytes)


@serve_deps
@pytest.mark.parametrize("source, name", [
    ("https://user:secret@models.example.com/private/dir/church.pt?token=SECRET123#x", "church.pt"),
    ("/home/alice/secret-project/weights/g.pt", "g.pt"),
    ("/srv/exports/church-aoti/", "church-aoti"),
    ("soat-church", "soat-church"),
    ("random:7", "random:7"),
])
def test_info_names_the_model_never_its_path_or_url(source, name):
    G = soat.load("random:0", size=SIZE, channel_multiplier=1)
    G.source = source
    with serving(G, span_source=grey_spans) as base:
        r = get(base, "/api/info")
    info = r.json()
    assert r.status_code == 200 and info["model"] == name and "source" not in info
    assert (info["size"], info["channel_multiplier"]) == (SIZE, 1)
    for secret in ("secret", "SECRET123", "example.com", "alice", "/srv", "user:"):
        assert secret not in r.text or secret in name


@serve_deps
@pytest.mark.parametrize("header", [
    {"Host": "attacker.example"}, {"Host": "attacker.example:8765"}, {"Host": "127.0.0.1.attacker.example"},
    {"Origin": "http://attacker.example"}, {"Origin": "null"}, {"Origin": "http://localhost.attacker.example:80"},
])
def test_foreign_host_or_origin_gets_403(G8, header):
    from websockets.exceptions import InvalidStatus

    async def handshake(base):  # a page's script: the browser sends its Origin
        with pytest.raises(InvalidStatus) as refused:
            await opened(ws_url(base), origin=header["Origin"])
        return refused.value.response.status_code

    with serving(G8, span_source=grey_spans) as base:
        r = get(base, "/api/info", **header)
        png = get(base, "/api/panorama.png?seed=1&x=0&w=4", **header)
        page = get(base, "/", **header)
        status = run(handshake(base)) if "Origin" in header else None
    assert (r.status_code, png.status_code, page.status_code) == (403, 403, 403)
    assert "--allow-origin" in r.json()["error"] and "is not an address of this server" in r.json()["error"]
    assert status in (None, 403)


@serve_deps
def test_own_addresses_and_allowed_origins_are_answered(G8):
    async def hello(base, origin):
        ws, first = await opened(ws_url(base), origin=origin)
        assert ws is not None, first
        await ws.close()
        return first["type"]

    with serving(G8, span_source=grey_spans, allow_origin=("viewer.example.com", "https://other.example:8443")) \
            as base:
        port = base.rsplit(":", 1)[1]
        for host in (f"127.0.0.1:{port}", f"localhost:{port}", "[::1]", "viewer.example.com", "other.example"):
            assert get(base, "/api/info", Host=host).status_code == 200, host
        for origin in (base, f"http://localhost:{port}", "https://viewer.example.com", "https://other.example:8443"):
            assert run(hello(base, origin)) == "hello"
        assert get(base, "/api/info", Host="attacker.example").status_code == 403


def test_which_names_a_server_answers():
    from soat.serve.guard import AllowedHosts, hostname
    assert [hostname(t) for t in ("a.B.example:80", "[::1]:8765", "https://X.example:8443/p", "null", "")] == [
        "a.b.example", "::1", "x.example", "null", None]
    loopback, everywhere, star = AllowedHosts("127.0.0.1"), AllowedHosts("0.0.0.0"), AllowedHosts("127.0.0.1", ["*"])
    assert loopback.allows("localhost") and not loopback.allows("192.168.1.7") and not loopback.allows("null")
    assert everywhere.allows("192.168.1.7") and everywhere.allows("fe80::1") and not everywhere.allows("evil.example")
    assert star.allows("evil.example")
    assert loopback.refusal([(b"host", b"127.0.0.1:1"), (b"origin", b"http://evil.example")]).startswith("Origin")


@serve_deps
@pytest.mark.parametrize("message", ["[" * 1000, '{"credit": ' + "[" * 1000])
def test_deeply_nested_credit_is_refused_without_a_traceback(G8, caplog, message):
    from websockets.exceptions import ConnectionClosed

    async def go(base):
        ws, _ = await opened(ws_url(base))
        await ws.send(message)
        error = json.loads(await asyncio.wait_for(ws.recv(), TIMEOUT))
        with pytest.raises(ConnectionClosed) as closed:
            await asyncio.wait_for(ws.recv(), TIMEOUT)
        return error, closed.value.rcvd

    with caplog.at_level(logging.WARNING), serving(G8, span_source=grey_spans) as base:
        error, close = run(go(base))
    assert close.code in (1008, 1009) and error["type"] == "error"
    logged = "\n".join(r.getMessage() + str(r.exc_info) for r in caplog.records)
    assert "RecursionError" not in logged and "Traceback" not in logged and "stream failed" not in logged


# ==== the same checks for the API, the CLI and the replica options ===================================
@pytest.fixture(scope="module")
def s16(g16):
    return make_styles(g16, 1, seed=1), make_styles(g16, 1, seed=2)


@pytest.mark.parametrize("value", [float("nan"), float("inf"), -float("inf"), True, "0.7", None, 10 ** 400])
def test_truncation_is_a_finite_number_everywhere(g16, value):
    z = torch.randn(1, 512)
    needle = r"truncation=.* must be a finite number"
    for call in (lambda: g16.styles(z, truncation=value), lambda: g16.styles_from_w(g16.w(z), truncation=value),
                 lambda: g16.panorama_styles(3, truncation=value),
                 lambda: g16.panorama_columns(0, 0, 4, truncation=value)):
        with raises(needle):
            call()


def test_the_cli_refuses_truncation_with_the_same_words(capsys):
    assert "argument --truncation: 'nan' must be a finite number" in cli_error(capsys, ["generate", "--truncation",
                                                                                       "nan"])
    assert "'0.7x' must be a finite number" in cli_error(capsys, ["blend", "--truncation", "0.7x"])


@pytest.mark.parametrize("box", [(True, 0, 4, 4), (0, 0, "4", 4), (0, False, 4, 4)])
def test_boxes_are_integers_not_bools_or_strings(g16, g32, s16, box):
    s1, s2 = s16
    with raises(r"box=.* must be 4 integers \(x, y, w, h\) in output pixels"):
        g16.blend_bbox(s1, s2, box)
    with raises(r"boxes\[0\]=.* must be 4 integers"):
        g32.patch_swap(make_styles(g32), make_styles(g32, seed=1), (box, (0, 0, 4, 4)))
    with raises(r"source_box=.* must be 4 integers"):
        g16.shift(s1, box, [(8, 8)])


def test_num_blend_is_an_index_of_zero_or_more(g16, s16, capsys):
    with raises(r"num_blend=-1 must be an integer sigma index >= 0"):
        g16.blend_bbox(*s16, (2, 2, 4, 4), num_blend=-1)
    with raises(r"num_blend=-1 must be an integer sigma index >= 0"):
        g16.blend_mask(*s16, torch.zeros(1, 1, 16, 16), num_blend=-1)
    line = cli_error(capsys, ["bbox", "--box", "1", "1", "2", "2", "--num-blend", "-1"])
    assert "'-1' must be an integer sigma index >= 0" in line


@pytest.mark.parametrize("batch", [-1, 0, 2.5, True, "2", None])
def test_warmup_batch_is_a_count(g16, batch):
    with raises(rf"batch={batch!r} must be an integer >= 1".replace(".", r"\.")):
        g16.warmup("generate", batch=batch)


def test_other_counts_share_the_words(g16, s16, capsys):
    with raises(r"num_swap=-1 must be an integer >= 0"):
        soat.translate(g16, g16, *s16, num_swap=-1)
    assert "'-1' must be an integer >= 0" in cli_error(capsys, ["translate", "--checkpoint2", "random:1",
                                                                "--num-swap", "-1"])
    with raises(r"strength=1\.5 must be in \[0, 1\]"):
        g16.shift(s16[0], (0, 0, 4, 4), [(8, 8)], strength=1.5)
    assert "'1.5' must be in [0, 1]" in cli_error(capsys, ["shift", "--source", "0", "0", "4", "4", "--target", "8",
                                                           "8", "--strength", "1.5"])
    with raises(r"alpha=True must be a number in \[0, 1\]"):
        soat.translate(g16, g16, *s16, alpha=True)


@pytest.mark.parametrize("seed", [-1, 2 ** 32, 1.5, True, "3"])
def test_panorama_seeds_are_refused_like_the_clis(g16, seed, capsys):
    with raises(r"seed=.* (is negative|is too large|is not a seed)[;:] seeds (run|are integers) from 0 to 4294967295"):
        g16.panorama_styles(3, seed=seed)
    assert "4294967296 is too large; seeds run from 0 to 4294967295" in cli_error(
        capsys, ["panorama", "--seeds", "4294967296"])


@pytest.mark.parametrize("source, needle", [
    ("random:2**70", "random or random:SEED"), (f"random:{2 ** 70}", "the seed of the random model runs from 0"),
    ("random:-1", "random or random:SEED"), (None, "source=None is not a model"), (3.5, "source=3.5 is not a model"),
    ("", "source='' is not a model"),
])
def test_load_refuses_bad_sources_with_one_line(source, needle):
    with raises(needle.replace("*", r"\*")):
        soat.load(source, size=16, channel_multiplier=1)


def test_the_cli_refuses_the_random_seed_with_the_same_words(capsys, tmp_path):
    assert "the seed of the random model runs from 0 to 4294967295" in cli_error(
        capsys, ["generate", "--checkpoint", f"random:{2 ** 70}", "-o", str(tmp_path / "o")])
    assert "random or random:SEED" in cli_error(capsys, ["generate", "--checkpoint", "random:2**70",
                                                         "-o", str(tmp_path / "o")])


@pytest.mark.parametrize("kwargs, needle", [
    ({"size": 64.0}, "size=64.0 must be an integer"), ({"size": True}, "size=True must be an integer"),
    ({"size": "64"}, "size='64' must be an integer"), ({"channel_multiplier": 2.0}, "channel_multiplier=2.0"),
    ({"device": "tpu"}, "device='tpu' is not a device; use cpu, cuda or cuda:N"),
])
def test_load_layout_and_device_are_checked_as_given(kwargs, needle):
    with raises(needle.replace(".", r"\.")):
        soat.load("random", **kwargs)


def test_save_png_takes_one_image_and_refuses_what_would_be_grey(tmp_path):
    img = torch.rand(1, 3, 6, 5) * 2 - 1
    one = soat.save_png(img[0], tmp_path / "one.png")  # [3, H, W]: one image (the documented form)
    four = soat.save_png(img, tmp_path / "four.png")
    from PIL import Image
    assert one == [str(tmp_path / "one.png")]
    assert np.array_equal(np.asarray(Image.open(one[0])), np.asarray(Image.open(four[0])))
    for bad, needle in ((torch.zeros(1, 1, 6, 5), "must have 3 channels .* got 1 channel "),
                        (torch.zeros(2, 5, 6, 5), "got 5 channels"), (torch.zeros(6, 5), r"got shape \[6, 5\]"),
                        (torch.full((1, 3, 6, 5), 200, dtype=torch.uint8), "got dtype uint8"),
                        (torch.zeros(1, 3, 6, 5, dtype=torch.int64), "got dtype int64"),
                        (np.zeros((1, 3, 6, 5), np.float32), "got ndarray"), (torch.zeros(0, 3, 6, 5), "no pixels")):
        path = tmp_path / "bad.png"
        with raises(needle):
            soat.save_png(bad, path)
        assert not path.exists() and not [p for p in os.listdir(tmp_path) if p.startswith(".")]
    with raises("got 1 channel"):
        soat.to_pil(torch.zeros(1, 1, 6, 5))


def test_a_huge_seed_range_is_checked_against_the_folder_not_name_by_name(tmp_path):
    (tmp_path / "notes.txt").write_text("x")
    (tmp_path / "seed4294967295.png").write_bytes(b"x")
    cmd = [sys.executable, "-m", "soat.cli", "generate", "--seeds", "0-4294967295", "-o", str(tmp_path)]
    t0 = time.monotonic()
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=3 * TIMEOUT)
    except subprocess.TimeoutExpired:
        pytest.fail("soat generate --seeds 0-4294967295 checked names for over 90 s before starting")
    assert proc.returncode == 2 and "seed4294967295.png exists there; pass --force" in proc.stderr, proc.stderr
    assert time.monotonic() - t0 < 3 * TIMEOUT
    from soat.options import SeedFiles, check_output_folder, parse_seeds
    (tmp_path / "seed4294967295.png").unlink()
    (tmp_path / "seed12.png").write_bytes(b"x")  # not a name generate writes (seed0012.png)
    t0 = time.monotonic()
    assert check_output_folder(str(tmp_path), False, SeedFiles(parse_seeds("0-4294967295"))) == str(tmp_path)
    assert time.monotonic() - t0 < 5


# ---- the Ray replica options: refused when built, in the same words ------------------------------
@pytest.mark.parametrize("values, needle", [
    ({"window_s": math.inf}, "window_s=inf must be a finite number"),
    ({"window_s": math.nan}, "window_s=nan must be a finite number"),
    ({"window_s": "inf"}, "window_s=inf must be a finite number"),
    ({"window_s": -1.0}, r"window_s=-1\.0 must be in \[0, 1\.0\]"),
    ({"truncation": "nan"}, "truncation=nan must be a finite number"),
    ({"size": 7}, "size=7 is not a StyleGAN2 resolution"), ({"size": "100"}, "size=100 is not a StyleGAN2"),
    ({"channel_multiplier": 3}, "channel_multiplier=3 is not supported"),
    ({"device": "tpu"}, "device='tpu' is not a device"), ({"device": "cuda:x"}, "device='cuda:x' is not a device"),
    ({"dtype": "fp64"}, "dtype='fp64' is not supported"), ({"backend": "tf"}, "backend='tf' is unknown"),
    ({"backend": "onnxruntime", "dtype": "bf16"}, "dtype=bf16 is not available with backend='onnxruntime'"),
    ({"checkpoint": "random:2**70"}, "random or random:SEED"), ({"checkpoint": ""}, "checkpoint='' is not a model"),
    ({"max_streams_per_client": 0}, "max_streams_per_client=0 must be an integer >= 1"),
    ({"stream_idle_s": 0}, "stream_idle_s=0.0 must be >= 0.01"),
    ({"max_batch": "0"}, "max_batch=0 must be an integer >= 1"),
    ({"allow_origin": 5}, "allow_origin=5 must be names, comma-separated"),
])
def test_replica_options_are_refused_when_built(values, needle):
    pytest.importorskip("starlette", reason="the serve extra is not installed")
    from soat.serve.replica import ReplicaOptions
    with raises(needle):
        ReplicaOptions.from_mapping(values)


def test_replica_options_take_the_server_flags():
    pytest.importorskip("starlette", reason="the serve extra is not installed")
    from soat.serve import cli
    from soat.serve.replica import ReplicaOptions
    parser = argparse.ArgumentParser(prog="soat")
    cli.add_parser(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["serve", "--host", "0.0.0.0", "--allow-origin", "viewer.example.com",
                              "--allow-origin", "https://b.example:8443", "--max-streams-per-client", "4"])
    o = ReplicaOptions.from_args(args)
    assert (o.host, o.allow_origin, o.max_streams_per_client) == (
        "0.0.0.0", ("viewer.example.com", "https://b.example:8443"), 4)
    assert ReplicaOptions.from_mapping({"allow_origin": "a.example, b.example"}).allow_origin == ("a.example",
                                                                                                 "b.example")
    assert ReplicaOptions.from_args(parser.parse_args(["serve"])).allow_origin == ()
