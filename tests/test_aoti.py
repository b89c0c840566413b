"""AOTInductor export and the ``aoti`` backend (issue 19): every task equals the torch backend (CPU fp32,
rel err <= 1e-5), the manifest records format, torch version, device and mean styles, and packages built by
another torch or for another device are refused.

One 32px export (``aoti_export_dir``) serves this module and ``test_cpp.py``. Compiling it costs minutes on
2 cores, so it is kept under ``build/`` keyed by the torch version and the exporter's sources, and reused
by later sessions while neither changes.
"""

from __future__ import annotations

import ctypes
import hashlib
import json
import os
import shutil
from concurrent.futures import ThreadPoolExecutor

import pytest
import torch

import soat
import soat.export
from soat.export.aoti_export import dynamic_shapes, export_aoti
from soat.runtime.graphs import graph_ids
from soat.runtime.manifest import MANIFEST, read_manifest
from conftest import make_styles, pick, rel_err

TOL = 1e-5
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SOURCE = ("random:1", 32, 1)  # the g32 fixture's model
_KEYED = ("export/aoti_export.py", "runtime/graph_modules.py", "runtime/manifest.py", "runtime/layers.py")


def aoti_export_dir() -> str:
    """The shared 32px CPU fp32 AOTI export (built once, reused while torch and the exporter are unchanged)."""
    h = hashlib.sha256(torch.__version__.encode())
    for rel in _KEYED:
        with open(os.path.join(ROOT, rel), "rb") as f:
            h.update(f.read())
    folder = os.path.join(os.environ.get("SOAT_TEST_BUILD", os.path.join(ROOT, "build")),
                          f"test-aoti32-{h.hexdigest()[:12]}")
    if not os.path.isfile(os.path.join(folder, MANIFEST)):
        export_aoti(SOURCE[0], folder, size=SOURCE[1], channel_multiplier=SOURCE[2], progress=False)
        parent = os.path.dirname(folder)
        for stale in os.listdir(parent):  # exports of older keys (~110 MB each)
            if stale.startswith("test-aoti32-") and os.path.join(parent, stale) != folder:
                shutil.rmtree(os.path.join(parent, stale), ignore_errors=True)
    return folder


@pytest.fixture(scope="session")
def aoti_dir() -> str:
    return aoti_export_dir()


@pytest.fixture(scope="module")
def g_aoti(aoti_dir) -> soat.Generator:
    return soat.load(aoti_dir, backend="aoti")


def _tasks():
    from test_export import _tasks as onnx_tasks  # the same task list as the ONNX backend's tests
    return onnx_tasks()


@pytest.mark.parametrize("task", list(_tasks()))
def test_task_on_aoti_equals_torch(g32, g_aoti, task):
    s = make_styles(g32, batch=2, seed=11)
    s1, s2 = pick(s, 0), pick(s, 1)
    run = _tasks()[task]
    assert rel_err(run(g_aoti, s1, s2), run(g32, s1, s2)) <= TOL


def test_panorama_columns_and_truncation_equal_torch(g32, g_aoti):
    assert rel_err(g_aoti.panorama_columns(4, 20, 70), g32.panorama_columns(4, 20, 70)) <= TOL
    z = torch.randn(3, 512, generator=torch.Generator().manual_seed(5))
    for got, want in zip(g_aoti.styles(z, truncation=0.7), g32.styles(z, truncation=0.7)):
        assert rel_err(got, want) <= TOL
    wplus = torch.randn(2, g32.config.n_latent, 512, generator=torch.Generator().manual_seed(6))
    for got, want in zip(g_aoti.styles_from_w(wplus), g32.styles_from_w(wplus)):
        assert rel_err(got, want) <= TOL


def test_concurrent_calls_equal_sequential_ones(g_aoti):
    """Packages run single-threaded (capturable); the backend's lock keeps two threads off one package."""
    styles = [make_styles(g_aoti, batch=2, seed=seed) for seed in (21, 22, 23, 24)]
    want = [g_aoti.generate(s) for s in styles]
    with ThreadPoolExecutor(4) as pool:
        got = list(pool.map(g_aoti.generate, styles))
    assert all(torch.equal(a, b) for a, b in zip(got, want))


def test_loading_makes_libtorch_global(g_aoti):
    """expose_cxx_runtime: after a load, libtorch_cpu's symbols resolve in the global scope (as in C++)."""
    g_aoti.generate(make_styles(g_aoti, seed=3))
    assert hasattr(ctypes.CDLL(None), "aoti_torch_empty_strided")


def test_mean_styles_are_stored_not_sampled(g32, aoti_dir, monkeypatch):
    G = soat.load(aoti_dir, backend="aoti")
    monkeypatch.setattr(G, "estimate_mean_styles", lambda z: pytest.fail("sampled at load"))
    for got, want in zip(G.mean_styles(), g32.mean_styles()):
        assert rel_err(got, want) <= TOL


def test_stored_mean_styles_follow_the_checkpoint_w_avg(tmp_path):
    from soat.export.aoti_export import _write_mean_styles
    from soat.runtime.sources import load_weights
    import numpy as np
    weights, _ = load_weights("random:2", 8, 1)
    weights.w_avg = torch.randn(512, generator=torch.Generator().manual_seed(1))
    _write_mean_styles(weights, str(tmp_path / "m.npz"))
    G = soat.load("random:2", size=8, channel_multiplier=1)
    want = G.styles_from_w(weights.w_avg.reshape(1, -1))
    got = torch.from_numpy(np.load(tmp_path / "m.npz")["mean_styles"])
    assert rel_err(got, torch.cat(want, 1)) <= TOL


def test_manifest_records_format_torch_and_device(aoti_dir, g32):
    m = read_manifest(aoti_dir)
    assert m.graph_format == "aoti" and m.device == "cpu" and m.exporter["torch"] == torch.__version__
    assert sorted(m.graphs) == sorted(graph_ids(g32.config))
    assert all(g["file"].endswith(".pt2") and g["format"] == "aoti" for g in m.graphs.values())
    assert m.mean_styles["shape"] == [1, sum(g32.style_channels)]


def test_every_graph_has_dynamic_batch_and_size(g32):
    for gid in graph_ids(g32.config):
        assert 0 in next(iter(dynamic_shapes(g32.config, gid).values())), gid


def _copy_with(aoti_dir, tmp_path, **fields) -> str:
    folder = str(tmp_path / "copy")
    shutil.copytree(aoti_dir, folder)
    path = os.path.join(folder, MANIFEST)
    with open(path) as f:
        m = json.load(f)
    for k, v in fields.items():
        if k == "torch":
            m["exporter"]["torch"] = v
        else:
            m[k] = v
    with open(path, "w") as f:
        json.dump(m, f)
    return folder


def test_other_torch_or_device_or_backend_is_refused(aoti_dir, tmp_path):
    with pytest.raises(soat.SoatError, match="compiled by torch 2.0.0.*re-export"):
        soat.load(_copy_with(aoti_dir, tmp_path / "a", torch="2.0.0"), backend="aoti")
    with pytest.raises(soat.SoatError, match="compiled for device 'cuda'"):
        soat.load(_copy_with(aoti_dir, tmp_path / "b", device="cuda"), backend="aoti")
    with pytest.raises(soat.SoatError, match="holds aoti graphs.*backend='aoti'"):
        soat.load(aoti_dir, backend="onnxruntime")
    with pytest.raises(soat.SoatError, match="is fp32 but dtype='bf16'"):
        soat.load(aoti_dir, backend="aoti", dtype="bf16")
    with pytest.raises(soat.SoatError, match="loads an export folder"):
        soat.load("random:1", backend="aoti")


def test_onnx_export_is_refused_by_aoti(g8, tmp_path):
    pytest.importorskip("onnx")
    soat.export.export(g8, tmp_path / "onnx", progress=False)
    with pytest.raises(soat.SoatError, match="holds onnx graphs.*--format aoti"):
        soat.load(str(tmp_path / "onnx"), backend="aoti")


def test_export_arguments_and_atomic_folder(tmp_path):
    with pytest.raises(soat.SoatError, match="cannot be exported as aoti"):
        export_aoti("random:1", tmp_path / "x", dtype="int8")
    with pytest.raises(soat.SoatError, match="not an aoti export device"):
        export_aoti("random:1", tmp_path / "x", device="tpu")
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "notes.txt").write_text("keep me")
    with pytest.raises(soat.SoatError, match="is not an export folder"):
        export_aoti("random:1", busy, size=8, channel_multiplier=1, progress=False)
    assert (busy / "notes.txt").read_text() == "keep me"
    assert not [p for p in os.listdir(tmp_path) if p.startswith(".")]  # no temporary folder left behind


def test_export_workers_must_be_a_positive_integer(tmp_path, capsys):
    from soat.cli import main
    assert main(["export", "--checkpoint", "random:3", "-o", str(tmp_path / "w"), "--format", "aoti", "--workers", "0"]) == 2
    assert "workers=0 must be an integer >= 1" in capsys.readouterr().err
    for bad in (-2, 1.5, True):
        with pytest.raises(soat.SoatError, match="must be an integer >= 1"):
            export_aoti("random:3", tmp_path / "x", workers=bad)


def test_cli_export_format_aoti_passes_device_and_dtype(tmp_path, monkeypatch, capsys):
    from soat.cli import main
    from soat.export import cli as export_cli
    calls = []
    monkeypatch.setattr(export_cli, "export_aoti", lambda *a, **k: calls.append((a, k)) or "m.json")
    assert main(["export", "--checkpoint", "random:3", "-o", str(tmp_path / "e"), "--format", "aoti", "--device", "cpu",
                 "--dtype", "bf16", "--workers", "3", "--no-progress"]) == 0
    (args, kwargs), = calls
    assert args[0] == "random:3" and kwargs["dtype"] == "bf16" and kwargs["device"] == "cpu" and kwargs["workers"] == 3
    assert main(["export", "--checkpoint", "random:3", "-o", str(tmp_path / "x"), "--workers", "2"]) == 2
    assert "--workers is for --format aoti" in capsys.readouterr().err
    assert main(["export", "--checkpoint", "random:3", "-o", str(tmp_path / "o"), "--dtype", "bf16"]) == 2  # ONNX: fp32/fp16
    assert "cannot be exported" in capsys.readouterr().err
