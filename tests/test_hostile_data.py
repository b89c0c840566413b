"""Hostile data (issue 28, the data side): downloads from loopback servers that cut, splice, drip, encode or
lie; exports raced, interrupted, terminated or short of disk; files that cannot be checkpoints; export folders
whose graphs were tampered with and their hashes updated in the manifest. Each case ends with the whole, right
file or with one ``SoatError`` line, in bounded time, and leaves nothing half-written behind.

Servers listen on 127.0.0.1 only. Processes that could hang or grow without bound before the fixes run as
children with a timeout (and a memory limit where they read a device).
"""

from __future__ import annotations

import hashlib
import json
import multiprocessing
import os
import re
import resource
import shutil
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time
import types
import zipfile

import numpy as np
import pytest
import torch

import soat
from soat.cli import main
from soat.errors import SoatError
from soat.runtime import checkpoint, registry
from soat.runtime.config import GeneratorConfig
from soat.runtime.manifest import read_manifest
from soat.runtime.random_model import random_weights
from soat.runtime.registry import fetch
from soat.runtime.sources import convert, load_file
from conftest import make_styles
from test_download import cache, register, server  # noqa: F401 (cache, server: fixtures)

TESTS = os.path.dirname(os.path.abspath(__file__))
TIMEOUT = 5.0
SMALL = ["--size", "8", "--channel-multiplier", "1"]


def assert_one_line(excinfo) -> None:
    e = excinfo.value
    assert isinstance(e, SoatError) and "\n" not in str(e) and len(str(e)) < 800, str(e)
    assert e.__cause__ is None and (e.__context__ is None or e.__suppress_context__)


def child_env() -> dict:
    return {**os.environ, "PYTHONPATH": os.pathsep.join([TESTS, os.environ.get("PYTHONPATH", "")])}


def hidden(folder) -> list[str]:
    """Temporary files and folders (hidden names, .part, .tmp) left anywhere under ``folder``."""
    found = []
    for root, dirs, files in os.walk(folder):
        found += [os.path.join(root, n) for n in dirs + files
                  if n.startswith(".") or n.endswith((".part", ".tmp", ".part.json"))]
    return found


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> tuple[bytes, bytes]:
    """Two tiny models of one layout (so of one size), as soat safetensors bytes."""
    folder = tmp_path_factory.mktemp("models")
    out = []
    for seed in (3, 4):
        convert(f"random:{seed}", str(folder / f"{seed}.safetensors"), 8, 1)
        out.append((folder / f"{seed}.safetensors").read_bytes())
    return out[0], out[1]


def get(url: str, models_dir) -> str:
    return fetch(url, str(models_dir), progress=False, timeout=TIMEOUT, check=load_file)


# ---- downloads ----------------------------------------------------------------------------------------------------

def _download_worker(url: str, models_dir: str, barrier, results) -> None:
    try:
        barrier.wait(timeout=60)
        results.put(("ok", get(url, models_dir)))
    except BaseException as e:  # reported to the test, which names it
        results.put(("error", f"{type(e).__name__}: {e}"))


def test_processes_downloading_one_model_at_once_share_one_transfer(server, tmp_path, models):
    """Three processes, one fresh cache: two used to die on os.replace of the .part and the file was longer than
    the server's, with a hash record written for it."""
    data = models[0]
    server.files["m.safetensors"], server.mode["m.safetensors"] = data, "slow"
    ctx = multiprocessing.get_context("spawn")
    barrier, results, n = ctx.Barrier(3), ctx.Queue(), 3
    procs = [ctx.Process(target=_download_worker, args=(server.url("m.safetensors"), str(tmp_path), barrier, results))
             for _ in range(n)]
    for p in procs:
        p.start()
    try:
        outcome = [results.get(timeout=120) for _ in procs]
    finally:
        for p in procs:
            p.join(timeout=10)
            if p.is_alive():
                p.kill()
    assert [kind for kind, _ in outcome] == ["ok"] * n, outcome
    (path,) = {p for _, p in outcome}
    assert open(path, "rb").read() == data
    assert open(path + ".sha256").read().split()[:2] == [hashlib.sha256(data).hexdigest(), str(len(data))]
    assert len(server.gets("m.safetensors")) == 1  # the others waited and used the finished file
    assert hidden(tmp_path) == []


@pytest.mark.parametrize("mode", ["ok", "ignore_if_range"])
def test_a_file_changed_on_the_server_is_never_spliced_onto_the_old_head(server, tmp_path, models, mode):
    """Cut at half, the file changed on the server, run again: the rerun asked for the rest without If-Range and
    appended the new file's tail to the old head (an image that is neither model's, exit 0)."""
    old, new = models
    name, url = "m.safetensors", server.url("m.safetensors")
    server.files[name], server.etags[name], server.mode[name] = old, '"old"', "cut_once"
    with pytest.raises(SoatError, match="run the same command again to resume"):
        get(url, tmp_path)
    server.files[name], server.etags[name], server.mode[name] = new, '"new"', mode
    path = get(url, tmp_path)
    assert open(path, "rb").read() == new
    resumed = server.gets(name)[1]
    assert resumed["Range"] == f"bytes={len(old) // 2}-" and resumed["If-Range"] == '"old"'
    assert soat.load(path).fingerprint == soat.load("random:4", size=8, channel_multiplier=1).fingerprint


def test_a_range_answered_from_byte_zero_restarts_the_download(server, tmp_path, models):
    """A 206 from byte 0 to ``bytes=N-`` was appended whole (129 MB for an 86 MB file) and accepted."""
    data = models[0]
    name = "m.safetensors"
    server.files[name], server.etags[name], server.mode[name] = data, '"v1"', "cut_once"
    with pytest.raises(SoatError, match="resume"):
        get(server.url(name), tmp_path)
    server.mode[name] = "range_from_zero"
    path = get(server.url(name), tmp_path)
    assert open(path, "rb").read() == data
    assert "Range" not in server.gets(name)[-1]  # restarted from zero
    assert hidden(tmp_path) == []


@pytest.mark.parametrize("mode, says", [("close", "did not say how long the file is"),
                                        ("close_cut", "did not say how long the file is"),
                                        ("gzip", r"sent the file encoded \(Content-Encoding: gzip\)")])
def test_a_body_of_unknown_length_or_encoded_is_never_taken_for_the_file(server, tmp_path, models, mode, says):
    """A close-delimited body cut short and a gzip-encoded body were cached as complete."""
    server.files["m.safetensors"], server.mode["m.safetensors"] = models[0], mode
    with pytest.raises(SoatError, match=says) as e:
        get(server.url("m.safetensors"), tmp_path)
    assert_one_line(e)
    assert not [f for f in os.listdir(tmp_path) if f.endswith(".safetensors")]


@pytest.mark.parametrize("what", ["truncated", "web page"])
def test_a_complete_transfer_of_a_broken_checkpoint_is_refused_and_not_kept(server, cache, models, monkeypatch,
                                                                              what):
    """A whole transfer of a truncated checkpoint, or of an HTML page served as octet-stream, was cached: every
    later run failed the same way without asking the server again."""
    data = models[0][: len(models[0]) // 2] if what == "truncated" else \
        b"<!DOCTYPE html><html><body>Quota exceeded</body></html>" * 100
    entry = register(monkeypatch, server, "b.safetensors", data)
    for attempt in (1, 2):
        with pytest.raises(SoatError, match=rf"download of test-b.safetensors .* is complete \({len(data):,} bytes\) "
                                            rf"but .*removed it") as e:
            soat.load(entry.name)
        assert_one_line(e)
        assert not (cache / "b.safetensors").exists() and not (cache / "b.safetensors.sha256").exists()
        assert len(server.gets("b.safetensors")) == attempt  # asked again: nothing broken was kept
    if what == "web page":
        assert "a web page" in str(e.value)


def test_a_cached_file_that_fails_to_load_says_which_file_to_delete(server, cache, models, monkeypatch):
    """A broken file cached (and recorded) by an older soat failed on every run, never saying how to fetch it
    again; a layout mismatch (size=16) is not the file's fault and says nothing of deleting it."""
    entry = register(monkeypatch, server, "c.safetensors", models[0])
    soat.load(entry.name)
    path = cache / "c.safetensors"
    with pytest.raises(SoatError, match="size=16") as e:
        soat.load(entry.name, size=16)
    assert "delete" not in str(e.value)
    broken = models[0][:1000]
    path.write_bytes(broken)
    (cache / "c.safetensors.sha256").write_text(f"{hashlib.sha256(broken).hexdigest()}  {len(broken)}  c\n")
    with pytest.raises(SoatError, match=rf"the cached download of test-c.safetensors: delete {re.escape(str(path))} "
                                        r"to download it again") as e:
        soat.load(entry.name)
    assert_one_line(e)


@pytest.mark.parametrize("limits, says", [
    ({"RATE_WINDOW_S": 0.5, "MIN_RATE": 1000}, r"is too slow \(\d+ bytes/s over the last 1 s, below the minimum "
                                               r"1,000\); run the same command again to resume"),
    ({"DEADLINE_S": 1.0, "MIN_RATE": 1}, r"did not finish within 1 s \(\d+ bytes received\); run the same command "
                                         r"again to resume"),
], ids=["minimum rate", "deadline"])
def test_a_drip_feed_is_stopped_by_the_minimum_rate_or_the_deadline(server, tmp_path, monkeypatch, limits, says):
    """One byte every 50 ms never ended the download (a per-read timeout only)."""
    for name, value in limits.items():
        monkeypatch.setattr(registry, name, value)
    server.files["d.pt"], server.mode["d.pt"] = b"x" * 10_000, "drip"
    start = time.monotonic()
    with pytest.raises(SoatError, match=rf"download of .*d.pt {says}") as e:
        get(server.url("d.pt"), tmp_path)
    assert time.monotonic() - start < 5
    assert_one_line(e)


def test_a_cache_root_that_is_a_file_is_one_line(server, tmp_path, models, monkeypatch, capsys):
    """SOAT_CACHE_DIR pointing at a file: a traceback from os.makedirs (downloads and the export cache)."""
    root = tmp_path / "not-a-folder"
    root.write_text("x")
    monkeypatch.setenv("SOAT_CACHE_DIR", str(root))
    entry = register(monkeypatch, server, "r.safetensors", models[0])
    with pytest.raises(SoatError, match=r"creating the cache folder .* failed: Not a directory") as e:
        soat.load(entry.name)
    assert_one_line(e)
    pytest.importorskip("onnxruntime")
    with pytest.raises(SoatError, match=r"creating the cache folder .*exports'.* failed") as e:
        soat.load("random:2", backend="onnxruntime", size=8, channel_multiplier=1)
    assert_one_line(e)
    assert main(["info", "--checkpoint", entry.name]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("soat: error: creating the cache folder")


@pytest.mark.skipif(hasattr(os, "geteuid") and os.geteuid() == 0, reason="root writes into read-only folders")
def test_a_read_only_cache_root_is_one_line(server, tmp_path, models, monkeypatch):
    root = tmp_path / "ro"
    root.mkdir()
    root.chmod(0o555)
    monkeypatch.setenv("SOAT_CACHE_DIR", str(root))
    entry = register(monkeypatch, server, "r.safetensors", models[0])
    try:
        with pytest.raises(SoatError, match=r"cache folder .* (failed: permission denied|is not writable)") as e:
            soat.load(entry.name)
        assert_one_line(e)
    finally:
        root.chmod(0o755)


# ---- checkpoints that cannot be checkpoints ------------------------------------------------------------------------

def run_child(code: str, timeout: float = 120, memory: int = 4 << 30, **kw) -> subprocess.CompletedProcess:
    """``code`` in a fresh interpreter with at most ``memory`` bytes of address space."""
    def limit():
        resource.setrlimit(resource.RLIMIT_AS, (memory, memory))
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True,
                          timeout=timeout, env=child_env(), preexec_fn=limit, **kw)


@pytest.mark.skipif(not os.path.exists("/dev/zero"), reason="needs /dev/zero")
def test_devices_fifos_and_sockets_are_refused_before_reading(tmp_path):
    """``soat info --checkpoint /dev/zero`` grew to 22 GB and was killed; /dev/urandom hung; a FIFO waits for a
    writer for ever."""
    fifo = str(tmp_path / "fifo.pt")
    os.mkfifo(fifo)
    sock = socket.socket(socket.AF_UNIX)
    sock.bind(str(tmp_path / "sock.pkl"))
    try:
        paths = ["/dev/zero", "/dev/urandom", fifo, str(tmp_path / "sock.pkl")]
        r = run_child(f"""
            import soat
            for path in {paths!r}:
                try:
                    soat.load(path)
                    print(path, "| LOADED")
                except soat.SoatError as e:
                    print(path, "|", e)
            """, timeout=120)
    finally:
        sock.close()
    assert r.returncode == 0, r.stderr[-2000:]
    got = dict(line.split(" | ", 1) for line in r.stdout.splitlines())
    kinds = ["a character device", "a character device", "a FIFO (named pipe)", "a socket"]
    for path, kind in zip(paths, kinds):
        assert got[path] == f"{path!r} is {kind}, not a checkpoint file; give the path of a .pt, .pkl or " \
                            ".safetensors file"
    start = time.monotonic()
    r = run_child("import sys; from soat.cli import main; sys.exit(main(['info', '--checkpoint', '/dev/zero']))",
                  timeout=120)
    assert r.returncode == 2 and r.stderr.count("\n") == 1, r.stderr[-2000:]
    assert r.stderr.startswith("soat: error: '/dev/zero' is a character device") and time.monotonic() - start < 60


def test_a_file_larger_than_any_checkpoint_is_refused_unread(tmp_path, monkeypatch):
    monkeypatch.setattr(checkpoint, "MAX_CHECKPOINT_BYTES", 1000)
    (tmp_path / "big.pt").write_bytes(b"\0" * 2000)
    with pytest.raises(SoatError, match=r"big.pt' has 2,000 bytes, more than any StyleGAN2 checkpoint \(1,000 at "
                                        r"most\); refused") as e:
        soat.load(str(tmp_path / "big.pt"))
    assert_one_line(e)


def test_a_torch_record_that_inflates_is_refused_before_it_is_read(tmp_path):
    """A 1 MB .pt whose record inflates to 1 GiB was read into memory before being refused."""
    path = tmp_path / "bomb.pt"
    inflated = 256 << 20
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=1) as z:
        z.writestr("archive/version", "3\n")
        with z.open("archive/data.pkl", "w", force_zip64=True) as member:
            zeros = bytes(1 << 20)
            for _ in range(inflated >> 20):
                member.write(zeros)
    assert path.stat().st_size < 2 << 20
    start = time.monotonic()
    with pytest.raises(SoatError, match=rf"record 'archive/data.pkl' inflates to {inflated:,} bytes, more than the "
                                        r"whole file .*Refused before reading it") as e:
        soat.load(str(path))
    assert time.monotonic() - start < 5
    assert_one_line(e)


@pytest.mark.parametrize("value", [float("inf"), float("nan"), 10 ** 9, 2.5, 0])
def test_an_nvidia_pickle_whose_mapping_has_no_layer_count(tmp_path, value):
    """``num_layers = inf`` was an OverflowError traceback (10**9 looped a billion times)."""
    import test_nvidia as nv

    with pytest.MonkeyPatch.context() as mp:
        nv.register_nvidia_modules(mp)
        g = nv.nv_generator(random_weights(GeneratorConfig(size=8, channel_multiplier=1), seed=1))
        g.state["_modules"]["mapping"].state["num_layers"] = value
        pkl = nv.write_pickle(tmp_path / "odd.pkl", g)
    with pytest.raises(SoatError, match=r"MappingNetwork.num_layers=.* is not a layer count of a StyleGAN2 mapping "
                                        r"network \(1 to 32\)") as e:
        soat.load(pkl)
    assert_one_line(e)


# ---- exports: races, interruptions, signals, full disks ------------------------------------------------------------

def copy_export(folder: str, dst) -> str:
    shutil.copytree(folder, dst)
    return str(dst)


def fake_exporter(template: str, barrier: threading.Barrier | None = None):
    """An ``export_source`` that copies ``template`` (then meets ``barrier``, so that every export swaps at once)."""
    def export_source(source, folder, dtype="fp32", opset=17, progress=False):
        for name in os.listdir(template):
            shutil.copy(os.path.join(template, name), folder)
        if barrier is not None:
            barrier.wait(timeout=30)
    return export_source


def test_exports_into_one_folder_at_once_end_with_one_whole_export(export8, tmp_path, monkeypatch):
    """Two exports into one folder both exited 0 and left a manifest that did not match its graphs, or died with
    FileNotFoundError in the swap."""
    from soat.export import onnx_export

    out = tmp_path / "out"
    for _ in range(8):
        barrier = threading.Barrier(3)
        monkeypatch.setattr(onnx_export, "export_source", fake_exporter(export8, barrier))
        errors = []

        def one():
            try:
                onnx_export.export("random:8", out, size=8, channel_multiplier=1, progress=False)
            except BaseException as e:  # noqa: BLE001 - reported below
                errors.append(f"{type(e).__name__}: {e}")
        threads = [threading.Thread(target=one) for _ in range(3)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=60)
        assert errors == []
        read_manifest(str(out))
        assert sorted(os.listdir(out)) == sorted(os.listdir(export8))
        assert hidden(tmp_path) == []


def test_an_interrupted_forced_export_keeps_the_previous_one(export8, tmp_path, monkeypatch):
    """``soat export --force`` interrupted by Ctrl-C destroyed the previous, valid export."""
    from soat.export import onnx_export

    out = copy_export(export8, tmp_path / "e")
    before = {n: open(os.path.join(out, n), "rb").read() for n in os.listdir(out)}

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt
    monkeypatch.setattr(onnx_export, "_export_graph", interrupted)
    assert main(["export", "--checkpoint", "random:6", *SMALL, "-o", out, "--force", "--no-progress"]) == 130
    assert {n: open(os.path.join(out, n), "rb").read() for n in os.listdir(out)} == before
    assert hidden(tmp_path) == []


def test_export_without_the_onnx_package_leaves_nothing(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "onnx", None)  # import onnx raises ImportError
    assert main(["export", "--checkpoint", "random:1", *SMALL, "-o", str(tmp_path / "out"), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "export needs the onnx package" in err
    assert os.listdir(tmp_path) == []


_HOLD_EXPORT = """
import sys, time
from soat.export.folder import atomic_folder
with atomic_folder(sys.argv[1]) as tmp:
    open(tmp + "/part.onnx", "wb").write(b"x" * 1000)
    print(tmp, flush=True)
    time.sleep(120)
"""


def test_debris_of_killed_exports_is_swept_and_live_exports_are_left(export8, tmp_path, monkeypatch):
    """A killed export's hidden temporary folder was never removed."""
    from soat.export import onnx_export

    parent = tmp_path / "p"
    parent.mkdir()
    children = [subprocess.Popen([sys.executable, "-c", _HOLD_EXPORT, str(parent / name)], stdout=subprocess.PIPE,
                                 text=True, env=child_env()) for name in ("killed", "live")]
    try:
        killed, live = (c.stdout.readline().strip() for c in children)
        assert os.path.isdir(killed) and os.path.isdir(live)
        children[0].kill()
        children[0].wait(timeout=30)
        monkeypatch.setattr(onnx_export, "export_source", fake_exporter(export8))
        onnx_export.export("random:8", parent / "next", size=8, channel_multiplier=1, progress=False)
        assert not os.path.exists(killed) and os.path.isdir(live)
        read_manifest(str(parent / "next"))
    finally:
        for c in children:
            c.kill()
            c.wait(timeout=30)


def _processes() -> dict[int, tuple[int, str, str]]:
    """``{pid: (parent pid, state, command line)}`` of every process (Linux /proc)."""
    found = {}
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                with open(f"/proc/{name}/stat") as f:
                    fields = f.read().rsplit(")", 1)[1].split()
                with open(f"/proc/{name}/cmdline", "rb") as f:
                    cmdline = f.read().replace(b"\0", b" ").decode(errors="replace")
            except OSError:
                continue
            found[int(name)] = (int(fields[1]), fields[0], cmdline)
    return found


def _running(pid: int) -> bool:
    state = _processes().get(pid)
    return state is not None and state[1] not in ("Z", "X")


def _workers_of(pid: int) -> list[int]:
    return [p for p, (ppid, _, cmd) in _processes().items() if ppid == pid and "spawn_main" in cmd]


def _wait_until(condition, timeout: float) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if condition():
            return True
        time.sleep(0.2)
    return condition()


@pytest.mark.full
@pytest.mark.skipif(not os.path.isdir("/proc"), reason="reads the process table from /proc")
def test_sigterm_stops_an_aoti_export_with_its_workers_and_leaves_nothing(tmp_path):
    """SIGTERM during ``soat export --format aoti --workers 2`` left a hidden temporary folder and a compile
    worker that went on writing packages."""
    out = tmp_path / "e"
    proc = subprocess.Popen([sys.executable, "-m", "soat.cli", "export", "--checkpoint", "random:1", *SMALL,
                             "-o", str(out), "--format", "aoti", "--workers", "2", "--no-progress"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=child_env(),
                            start_new_session=True)
    try:
        assert _wait_until(lambda: len(_workers_of(proc.pid)) == 2, 120), "the compile workers never started"
        workers = _workers_of(proc.pid)
        time.sleep(3)  # the workers are compiling
        assert proc.poll() is None
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=60)
        assert proc.returncode == 128 + signal.SIGTERM, proc.stderr.read()[-2000:]
        assert _wait_until(lambda: not any(map(_running, workers)), 10), "a compile worker outlived its parent"
        assert os.listdir(tmp_path) == []
    finally:
        if proc.poll() is None:
            proc.kill()
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait(timeout=30)


_KILLED_PARENT = """
import os, time
from soat.export.aoti_export import compile_pool
pool = compile_pool(1)
print(pool.submit(os.getpid).result(), flush=True)
pool.submit(time.sleep, 120)
time.sleep(120)
"""


@pytest.mark.skipif(not os.path.isdir("/proc"), reason="reads the process table from /proc")
def test_compile_workers_die_with_a_killed_parent():
    """A parent killed outright (no handler runs) takes its compile workers with it."""
    parent = subprocess.Popen([sys.executable, "-c", _KILLED_PARENT], stdout=subprocess.PIPE, text=True,
                              env=child_env(), start_new_session=True)
    try:
        worker = int(parent.stdout.readline())
        assert _running(worker)
        parent.kill()
        parent.wait(timeout=30)
        assert _wait_until(lambda: not _running(worker), 10), "the worker outlived its killed parent"
    finally:
        try:
            os.killpg(parent.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def _aborting_compile(module, config, graph_id, path, dtype, device):
    """What libtorch's package writer does on a full disk: a C++ exception in a destructor, and abort()."""
    sys.stderr.write("terminate called after throwing an instance of 'c10::Error'\n"
                     "  what():  [enforce fail at inline_container.cc:672] . unexpected pos 129792 vs 129635\n"
                     "frame #0: c10::ThrowEnforceNotMet(char const*, int, char const*) + 0x6a\n")
    sys.stderr.flush()
    os.abort()


def test_a_compile_worker_that_aborts_is_one_line(tmp_path):
    """A full disk in an AOTI export aborted the whole process with a C++ dump (exit 134)."""
    r = subprocess.run([sys.executable, "-c", textwrap.dedent(f"""
        import sys
        import test_hostile_data
        from soat.export import aoti_export
        aoti_export.compile_graph = test_hostile_data._aborting_compile
        from soat.cli import main
        sys.exit(main(["export", "--checkpoint", "random:1", *{SMALL!r}, "-o", {str(tmp_path / 'e')!r},
                       "--format", "aoti", "--workers", "1", "--no-progress"]))
        """)], capture_output=True, text=True, timeout=240, env=child_env())
    lines = [line for line in r.stderr.splitlines() if line.strip()]
    assert r.returncode == 2 and len(lines) == 1, r.stderr[-3000:]
    assert re.match(r"soat: error: aoti export: a compile worker died \(\[enforce fail at inline_container.cc:672\] "
                    r"\. unexpected pos 129792 vs 129635\); [\d,]+ MiB are free on the disk of ", lines[0]), lines[0]
    assert os.listdir(tmp_path) == []


_LIMITED = """
import resource, signal, sys
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails (EFBIG), as on a full disk
resource.setrlimit(resource.RLIMIT_FSIZE, ({limit}, {limit}))
from soat.cli import main
sys.exit(main({argv!r}))
"""


@pytest.mark.parametrize("argv, limit", [  # the fast tier: one write of each kind (a file, an export folder)
    pytest.param(["generate", "--checkpoint", "random:1", *SMALL, "--seeds", "0", "-o", "out"], 64,
                 marks=pytest.mark.full),
    (["convert", "--checkpoint", "random:1", *SMALL, "-o", "m.safetensors"], 1 << 20),
    (["export", "--checkpoint", "random:1", *SMALL, "-o", "e", "--no-progress"], 1 << 20),
    pytest.param(["info", "--checkpoint", "random:1", *SMALL, "--backend", "onnxruntime"], 1 << 20,
                 marks=pytest.mark.full),
], ids=["generate", "convert", "export", "export cache"])
def test_writes_that_fail_for_lack_of_space_are_one_line(tmp_path, argv, limit):
    """A full disk in generate and convert was an OSError traceback, and in an ONNX export left a truncated
    graph. Here every write past a size limit fails as it would on a full disk."""
    r = subprocess.run([sys.executable, "-c", _LIMITED.format(limit=limit, argv=argv)], capture_output=True,
                       text=True, timeout=240, env={**child_env(), "SOAT_CACHE_DIR": str(tmp_path / "cache")},
                       cwd=tmp_path)
    lines = [line for line in r.stderr.splitlines()  # less the progress bars (tqdm)
             if line.strip() and not line.startswith(("generate: ", "truncation centre"))]
    assert r.returncode in (1, 2) and len(lines) == 1, r.stderr[-3000:]
    assert lines[0].startswith("soat: error: ") and re.search("file size limit|File too large|FileTooLarge",
                                                              lines[0]), lines[0]
    assert hidden(tmp_path) == [] and not [f for f in os.listdir(tmp_path) if f not in ("out", "cache")]


# ---- export folders whose files were tampered with (and their hashes updated in the manifest) ----------------------

def edit_manifest(folder: str, edit) -> None:
    path = os.path.join(folder, "manifest.json")
    with open(path) as f:
        m = json.load(f)
    edit(m)
    with open(path, "w") as f:
        json.dump(m, f)


def rehash(folder: str, record_path: tuple[str, ...], name: str) -> None:
    """Update the manifest's sha256 of ``name`` (at ``record_path`` inside the manifest) to its new bytes."""
    with open(os.path.join(folder, name), "rb") as f:
        digest = hashlib.sha256(f.read()).hexdigest()

    def edit(m):
        record = m
        for key in record_path:
            record = record[key]
        record["sha256"] = digest
    edit_manifest(folder, edit)


def _onnx_tamper(case: str, path: str, folder: str) -> None:
    import onnx
    from onnx import numpy_helper

    if case == "truncated":
        data = open(path, "rb").read()
        open(path, "wb").write(data[: len(data) // 2])
    elif case == "garbage":
        open(path, "wb").write(np.random.default_rng(0).bytes(5000))
    elif case in ("conv1", "to_rgb1"):  # another graph's file (conv1's has the same inputs and shapes)
        shutil.copy(os.path.join(folder, f"{case}.onnx"), path)
    else:
        model = onnx.load(path)
        if case == "opset 99":
            model.opset_import[0].version = 99
        elif case == "input dim":
            model.graph.input[0].type.tensor_type.shape.dim[1].dim_value = 9
        else:  # external data outside the folder
            init = max(model.graph.initializer, key=lambda t: numpy_helper.to_array(t).size)
            values = numpy_helper.to_array(init)
            outside = os.path.join(os.path.dirname(folder), "outside.bin")
            open(outside, "wb").write(values.tobytes())
            init.ClearField("raw_data")
            init.data_location = onnx.TensorProto.EXTERNAL
            entry = init.external_data.add()
            entry.key, entry.value = "location", "../outside.bin" if case == "external ../" else outside
        onnx.save(model, path)


@pytest.mark.parametrize("case, says", [
    ("truncated", r"ONNX Runtime cannot load it \(INVALID_PROTOBUF"),
    ("garbage", r"ONNX Runtime cannot load it \(INVALID_PROTOBUF"),
    ("conv1", r"the file holds graph 'conv1'"),
    ("to_rgb1", r"the file holds graph 'to_rgb1'"),
    ("opset 99", r"ONNX Runtime cannot load it \(FAIL: ONNX Runtime only \*guarantees\* support"),
    ("input dim", r"ONNX Runtime cannot load it|the file's inputs"),
    ("external ../", r"weight '.*' is stored outside the file \(external data '../outside.bin'\)"),
    ("external absolute", r"weight '.*' is stored outside the file \(external data '/"),
])
def test_a_tampered_onnx_graph_is_one_error_naming_the_graph_and_file(export8, tmp_path, case, says):
    folder = copy_export(export8, tmp_path / "e")
    _onnx_tamper(case, os.path.join(folder, "convs.0.onnx"), folder)
    rehash(folder, ("graphs", "convs.0"), "convs.0.onnx")
    G = soat.load(folder, backend="onnxruntime")
    with pytest.raises(SoatError, match=rf"graph 'convs.0' of export .* \(convs.0.onnx\): .*({says})") as e:
        G.generate(make_styles(G, 1, seed=2))
    assert_one_line(e)


@pytest.mark.parametrize("arrays, says", [
    ({"noise_0": np.array([{}], dtype=object)}, r"is not an .npz of the arrays \['noise_0', .*\] \(Object arrays "
                                                r"cannot be loaded when allow_pickle=False\)"),
    ({f"noise_{i}": np.zeros((1, 1, 4, 4)) for i in range(3)}, r"holds noise_0 as float64, not float32"),
    ({"other": np.zeros(3, np.float32)}, r"is not an .npz of the arrays .*\('noise_0 is not a file in the archive'"),
])
def test_noise_that_is_not_float_arrays_is_refused(export8, tmp_path, arrays, says):
    """An object-dtype noise.npz was a traceback."""
    folder = copy_export(export8, tmp_path / "e")
    with open(os.path.join(folder, "noise.npz"), "wb") as f:
        np.savez(f, **arrays)
    rehash(folder, ("noise",), "noise.npz")
    with pytest.raises(SoatError, match=rf"noise buffers: .*noise.npz' {says}") as e:
        soat.load(folder, backend="onnxruntime")
    assert_one_line(e)


@pytest.fixture(scope="module")
def aoti8(tmp_path_factory) -> tuple[str, bytes]:
    """An AOTI folder of an 8 px model whose every graph file is one real package (to_rgb1's, compiled here),
    and that package's bytes: the folder's manifest is real, its packages are all the wrong graph but to_rgb1."""
    from soat.export.aoti_export import compile_graph, export_module
    from soat.export.folder import finish_folder, resolve_source
    from soat.runtime.capabilities import AOTI_FORMAT
    from soat.runtime.manifest import export_graph_ids

    source = resolve_source("random:4", 8, 1)
    folder = str(tmp_path_factory.mktemp("aoti") / "a8")
    os.makedirs(folder)
    package = os.path.join(folder, "to_rgb1.pt2")
    module = export_module(source.weights, "to_rgb1", "cpu").eval()
    compile_graph(module, source.weights.config, "to_rgb1", package, torch.float32, "cpu")
    ids = export_graph_ids(source.weights.config, AOTI_FORMAT)
    for gid in ids:
        if gid != "to_rgb1":
            os.link(package, os.path.join(folder, f"{gid}.pt2"))
    digest = hashlib.sha256(open(package, "rb").read()).hexdigest()
    finish_folder(folder, source, AOTI_FORMAT, "fp32", None, "cpu", {gid: digest for gid in ids})
    return folder, open(package, "rb").read()


@pytest.mark.parametrize("case, says", [
    ("truncated", r"is not a package this torch can load \(Failed to initialize zip archive"),
    ("random bytes", r"is not a package this torch can load \(Failed to initialize zip archive"),
    ("not a package", r"is not a package this torch can load \(Failed to find a generated cpp file or so file"),
    ("another graph's", r": the package holds graph 'to_rgb1'; re-export the folder"),
])
def test_a_tampered_aoti_package_is_one_error_naming_the_graph_and_file(aoti8, tmp_path, case, says):
    folder, package = aoti8
    folder = copy_export(folder, tmp_path / "a")
    path = os.path.join(folder, "mapping.pt2")  # the first graph a generator runs (G.styles)
    os.remove(path)  # a hard link of the package: write a new file
    data = {"truncated": package[: len(package) // 2], "random bytes": np.random.default_rng(1).bytes(5000),
            "not a package": open(os.path.join(folder, "noise.npz"), "rb").read(), "another graph's": package}[case]
    open(path, "wb").write(data)
    rehash(folder, ("graphs", "mapping"), "mapping.pt2")
    G = soat.load(folder, backend="aoti")
    with pytest.raises(SoatError, match=rf"graph 'mapping' of export .* \(mapping.pt2\).*{says}") as e:
        G.styles(torch.randn(1, G.config.style_dim))
    assert_one_line(e)


@pytest.mark.parametrize("kind", ["onnx", "aoti"])
def test_channels_last_claimed_by_a_cpu_export_is_refused(export8, aoti8, tmp_path, kind):
    """A manifest edited to claim channels_last inputs on a CPU export gave other pixels with exit 0."""
    folder = copy_export(export8 if kind == "onnx" else aoti8[0], tmp_path / "e")

    def claim(m):
        m["graphs"]["conv1"]["channels_last"] = ["x"]
    edit_manifest(folder, claim)
    with pytest.raises(SoatError, match=r"graph 'conv1' lists channels_last inputs \['x'\], but only the packages "
                                        r"of a CUDA aoti export read channels_last inputs") as e:
        soat.load(folder, backend="onnxruntime" if kind == "onnx" else "aoti")
    assert_one_line(e)


# ---- TensorRT engines ---------------------------------------------------------------------------------------------

def test_soat_engines_where_engines_is_a_file(export8, tmp_path, capsys):
    folder = copy_export(export8, tmp_path / "e")
    open(os.path.join(folder, "engines"), "w").close()
    assert main(["engines", folder, "--flavour", "rtx", "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and re.match(r"soat: error: '.*engines' is not a folder, so no engine can be "
                                             r"cached there; remove it", err), err


def test_an_engine_wanted_by_several_builders_at_once_is_built_once(export8, tmp_path, monkeypatch):
    from soat.runtime.backends import trt_engines

    builds = []

    def build(flavour, onnx_bytes, graph_id, profile, precision, targets):
        builds.append(graph_id)
        time.sleep(0.3)
        return b"an engine"
    monkeypatch.setattr(trt_engines, "build_engine", build)
    flavour = types.SimpleNamespace(name="rtx", version="0.0")
    manifest = read_manifest(export8)
    engine_dir = str(tmp_path / "engines")
    results = []
    threads = [threading.Thread(target=lambda: results.append(
        trt_engines.ensure_engine(flavour, manifest, "to_rgb1", engine_dir, ["sm86"], 4)[2])) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    assert builds == ["to_rgb1"] and sorted(results) == ["built", "cached", "cached"]
