"""The export cache under concurrent first use and after a killed export (issue 18 #2 and #10).

The exporter itself is replaced, in these tests, by a copy of one real export made once (slowly,
file by file), so that several processes can race through ``cached_export`` in seconds.
"""

from __future__ import annotations

import multiprocessing
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest

pytest.importorskip("onnxruntime")

from soat.export import cache as C  # noqa: E402
from soat.export.onnx_export import DEFAULT_OPSET, cache_key  # noqa: E402
from soat.runtime.manifest import read_manifest  # noqa: E402
from soat.runtime.sources import load_weights  # noqa: E402

SOURCE, SIZE, CM = "random:8", 8, 1  # the g8 fixture's model, whose export (conftest's export8) the tests copy


def _folder(cache: str) -> str:
    fingerprint = load_weights(SOURCE, SIZE, CM)[1]
    return os.path.join(cache, "exports", cache_key(fingerprint, "fp32", DEFAULT_OPSET))


def _worker(cache: str, template: str, i: int, barrier, log: str, results) -> None:
    """One process's first use of the cache, then reading the folder as a loading process would."""
    os.environ["SOAT_CACHE_DIR"] = cache

    def slow_export(source, out, dtype, opset, progress=False):
        with open(log, "a") as f:
            f.write(f"{i}\n")
        for name in sorted(os.listdir(template)):
            shutil.copy(os.path.join(template, name), out)
            time.sleep(0.01)
        time.sleep(0.15 * i)  # the processes finish one after another

    C.export_source = slow_export
    try:
        barrier.wait(timeout=60)
        folder = C.cached_export(SOURCE, "fp32", SIZE, CM)
        deadline = time.monotonic() + 1.5
        while time.monotonic() < deadline:  # the folder must stay whole while others finish
            read_manifest(folder)
        results.put((i, "ok"))
    except Exception as e:  # reported to the test, which names it
        results.put((i, f"{type(e).__name__}: {e}"))


@pytest.mark.full
def test_concurrent_first_use_exports_once_and_never_replaces(export8, tmp_path):
    """Several processes miss the cache at once: one exports, the others wait and use its folder; the
    folder is never removed under a reader (it was: "convs.3.onnx is missing" in 3 of 9 processes)."""
    ctx = multiprocessing.get_context("spawn")  # fork after torch has started its threads can deadlock
    n = 4
    barrier, results, log = ctx.Barrier(n), ctx.Queue(), str(tmp_path / "exports.log")
    cache = str(tmp_path / "cache")
    procs = [ctx.Process(target=_worker, args=(cache, export8, i, barrier, log, results)) for i in range(n)]
    for p in procs:
        p.start()
    try:
        outcome = dict(results.get(timeout=180) for _ in procs)
    finally:
        for p in procs:
            p.join(timeout=10)
            if p.is_alive():
                p.kill()
    assert outcome == {i: "ok" for i in range(n)}, outcome
    with open(log) as f:
        assert len(f.read().split()) == 1  # exported once
    read_manifest(_folder(cache))
    assert not [e for e in os.listdir(os.path.dirname(_folder(cache))) if e.startswith(C.TMP_PREFIX)]


def _age(path: str, seconds: float) -> None:
    t = time.time() - seconds
    os.utime(path, (t, t))


def test_killed_export_debris_is_cleaned_on_next_use(export8, tmp_path, monkeypatch):
    """A ``.tmp-*`` folder left by a killed export is removed on the next use of the cache, once it is older
    than DEBRIS_AGE_S and no live process holds it; a live export's folder is left alone."""
    cache = str(tmp_path / "cache")
    monkeypatch.setenv("SOAT_CACHE_DIR", cache)
    folder = _folder(cache)
    root = os.path.dirname(folder)
    shutil.copytree(export8, folder)  # a valid cache entry: cached_export takes its fast path
    # an exporter in another process, holding its .tmp folder as cached_export does, then killed
    child = subprocess.Popen(
        [sys.executable, "-c", "import sys, tempfile, time\nfrom soat.export.cache import _locked\n"
         f"tmp = tempfile.mkdtemp(prefix='.tmp-', dir={root!r})\n"
         "open(tmp + '/part.onnx', 'wb').write(b'x' * 1000)\n"
         "with _locked(tmp, True):\n    print(tmp, flush=True)\n    time.sleep(120)\n"],
        stdout=subprocess.PIPE, text=True)
    try:
        live = child.stdout.readline().strip()
        assert os.path.isdir(live)
        young = os.path.join(root, ".tmp-young")
        os.mkdir(young)
        _age(live, 2 * C.DEBRIS_AGE_S)
        assert C.cached_export(SOURCE, "fp32", SIZE, CM) == folder
        assert os.path.isdir(live) and os.path.isdir(young)  # held by a live process / too recent
        os.kill(child.pid, signal.SIGKILL)
        child.wait(timeout=30)
        assert C.cached_export(SOURCE, "fp32", SIZE, CM) == folder
        assert not os.path.exists(live) and os.path.isdir(young)  # the killed export's folder is gone
        _age(young, 2 * C.DEBRIS_AGE_S)
        assert C.clean_debris(root) == [young]
        read_manifest(folder)  # the cache entry itself is untouched
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
