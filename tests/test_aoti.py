"""AOTInductor export and the ``aoti`` backend (issue 19): every task equals the torch backend (CPU fp32,
rel err <= 1e-5), the manifest records format, torch version, device and mean styles, and packages built by
another torch or for another device are refused.

One 32px export (``aoti_export_dir``) serves this module and ``test_cpp.py``. Compiling it costs minutes on
2 cores, so it is kept under ``build/`` keyed by the torch version and the exporter's sources, and reused
by later sessions while neither changes; the tests that use it are in the full tier (``--full``).
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
from soat.runtime.graphs import graph_ids, linked_ids
from soat.runtime.manifest import MANIFEST, read_manifest
from conftest import as_format, make_styles, pick, rel_err, tiered

TOL = 1e-5
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SOURCE = ("random:1", 32, 1)  # the g32 fixture's model
_KEYED = ("export/aoti_export.py", "export/folder.py", "runtime/graph_modules.py", "runtime/graphs.py",
          "runtime/manifest.py", "runtime/layers.py")


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


@pytest.mark.full
@pytest.mark.parametrize("task", list(_tasks()))
def test_task_on_aoti_equals_torch(g32, g_aoti, task):
    s = make_styles(g32, batch=2, seed=11)
    s1, s2 = pick(s, 0), pick(s, 1)
    run = _tasks()[task]
    assert rel_err(run(g_aoti, s1, s2), run(g32, s1, s2)) <= TOL


@pytest.mark.full
def test_panorama_columns_and_truncation_equal_torch(g32, g_aoti):
    assert rel_err(g_aoti.panorama_columns(4, 20, 70), g32.panorama_columns(4, 20, 70)) <= TOL
    z = torch.randn(3, 512, generator=torch.Generator().manual_seed(5))
    for got, want in zip(g_aoti.styles(z, truncation=0.7), g32.styles(z, truncation=0.7)):
        assert rel_err(got, want) <= TOL
    wplus = torch.randn(2, g32.config.n_latent, 512, generator=torch.Generator().manual_seed(6))
    for got, want in zip(g_aoti.styles_from_w(wplus), g32.styles_from_w(wplus)):
        assert rel_err(got, want) <= TOL


@pytest.mark.full
def test_concurrent_calls_equal_sequential_ones(g_aoti):
    """Packages run single-threaded (capturable); the backend's lock keeps two threads off one package."""
    styles = [make_styles(g_aoti, batch=2, seed=seed) for seed in (21, 22, 23, 24)]
    want = [g_aoti.generate(s) for s in styles]
    with ThreadPoolExecutor(4) as pool:
        got = list(pool.map(g_aoti.generate, styles))
    assert all(torch.equal(a, b) for a, b in zip(got, want))


@pytest.mark.full
def test_loading_makes_libtorch_global(g_aoti):
    """expose_cxx_runtime: after a load, libtorch_cpu's symbols resolve in the global scope (as in C++)."""
    g_aoti.generate(make_styles(g_aoti, seed=3))
    assert hasattr(ctypes.CDLL(None), "aoti_torch_empty_strided")


@pytest.mark.full
def test_every_run_of_layers_equals_torch(g32, g_aoti):
    """Linked graphs take over wherever a run chains styled convs; a run may start and end at any layer (the
    tasks cut the chain between blocks, before a ToRGB, after a conv): every one equals the torch backend."""
    s = make_styles(g32, batch=2, seed=4)
    noise_at = g32.noise_fn("fixed")
    chain = g32.chain
    for first in range(1, len(chain)):
        x, rgb = g32.run_chain(s, noise_at, chain[1:first], g32.constant(s))
        for last in range(first + 1, len(chain) + 1):
            want = g32.run_chain(s, noise_at, chain[first:last], x, rgb)
            got = g_aoti.run_chain(s, noise_at, chain[first:last], x, rgb)
            for a, b in zip(got, want):
                assert (a is None) == (b is None) and (a is None or rel_err(a, b) <= TOL), (first, last)


@pytest.mark.full
def test_generate_runs_linked_graphs(g_aoti, monkeypatch):
    """One ATen multiply modulates conv1's input; from there every styled conv runs its linked graph."""
    ran, s = [], make_styles(g_aoti, seed=2)
    run = g_aoti.backend.run
    monkeypatch.setattr(g_aoti.backend, "run", lambda gid, inputs: ran.append(gid) or run(gid, inputs))
    g_aoti.generate(s)
    want = [n.id + ".linked" if n.kind in ("conv", "conv_up") else n.id for n in g_aoti.chain]
    assert ran == want


@pytest.mark.full
def test_folders_without_linked_graphs_run_node_by_node(aoti_dir, g32, tmp_path):
    """A format 3 folder (before linked graphs) loads and runs every node's graph."""
    with open(os.path.join(aoti_dir, MANIFEST)) as f:
        graphs = json.load(f)["graphs"]
    v3 = {gid: g for gid, g in graphs.items() if not gid.endswith(".linked")}
    G = soat.load(_copy_with(aoti_dir, tmp_path / "v3", graphs=v3, format_version=3), backend="aoti")
    assert not G.backend.manifest.linked
    s = make_styles(g32, seed=6)
    assert rel_err(G.generate(s), g32.generate(s)) <= TOL


@pytest.mark.full
def test_mean_styles_are_stored_not_sampled(g32, aoti_dir, monkeypatch):
    G = soat.load(aoti_dir, backend="aoti")
    monkeypatch.setattr(G, "estimate_mean_styles", lambda z: pytest.fail("sampled at load"))
    for got, want in zip(G.mean_styles(), g32.mean_styles()):
        assert rel_err(got, want) <= TOL


def test_stored_mean_styles_follow_the_checkpoint_w_avg(tmp_path):
    from soat.export.folder import write_mean_styles
    from soat.runtime.sources import load_weights
    import numpy as np
    weights, fingerprint = load_weights("random:2", 8, 1)
    weights.w_avg = torch.randn(512, generator=torch.Generator().manual_seed(1))
    write_mean_styles(weights, fingerprint, str(tmp_path / "m.npz"))
    G = soat.load("random:2", size=8, channel_multiplier=1)
    want = G.styles_from_w(weights.w_avg.reshape(1, -1))
    got = torch.from_numpy(np.load(tmp_path / "m.npz")["mean_styles"])
    assert rel_err(got, torch.cat(want, 1)) <= TOL


@pytest.mark.full
def test_manifest_records_format_torch_and_device(aoti_dir, g32):
    m = read_manifest(aoti_dir)
    assert m.graph_format == "aoti" and m.device == "cpu" and m.exporter["torch"] == torch.__version__
    assert sorted(m.graphs) == sorted(graph_ids(g32.config) + linked_ids(g32.config)) and m.linked
    assert all(g["file"].endswith(".pt2") and g["format"] == "aoti" for g in m.graphs.values())
    assert m.mean_styles["shape"] == [1, sum(g32.style_channels)]


def test_every_graph_has_dynamic_batch_and_size(g32):
    for gid in graph_ids(g32.config) + linked_ids(g32.config):
        assert 0 in next(iter(dynamic_shapes(g32.config, gid).values())), gid


def _copy_with(aoti_dir, tmp_path, format_version: int | None = None, **fields) -> str:
    """A copy of the export with manifest fields replaced (``torch``: the exporter's torch version), written as
    ``format_version``'s manifest where given."""
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
    if format_version is not None:
        as_format(m, format_version)
    with open(path, "w") as f:
        json.dump(m, f)
    return folder


@pytest.mark.full
def test_other_torch_or_device_or_backend_is_refused(aoti_dir, tmp_path):
    with pytest.raises(soat.SoatError, match="compiled by torch 2.0.0.*re-export"):
        soat.load(_copy_with(aoti_dir, tmp_path / "a", torch="2.0.0"), backend="aoti")
    with pytest.raises(soat.SoatError, match="compiled for device 'cuda'"):
        soat.load(_copy_with(aoti_dir, tmp_path / "b", device="cuda"), backend="aoti")
    with pytest.raises(soat.SoatError, match="holds aoti graphs.*backend='aoti'"):
        soat.load(aoti_dir, backend="onnxruntime")
    assert soat.load(aoti_dir).backend.name == "aoti"  # the manifest names it: no backend needed
    with pytest.raises(soat.SoatError, match="is fp32 but bf16 was asked for"):
        soat.load(aoti_dir, backend="aoti", dtype="bf16")
    with pytest.raises(soat.SoatError, match="loads an export folder"):
        soat.load("random:1", backend="aoti")


def test_onnx_export_is_refused_by_aoti(export8):
    with pytest.raises(soat.SoatError, match="holds onnx graphs.*--format aoti"):
        soat.load(export8, backend="aoti")


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


# The fused form (what CUDA exports compile): the fast path's kernels as torch.library.triton_ops

def _fused_cases(config):
    """One plain conv, one upsampling conv, the first ToRGB and one with a skip; then the linked graphs of the
    first conv (both outputs), of an upsampling conv (the next input only) and of the last conv (``x`` only)."""
    from soat.runtime.chain import CONV_UP, TO_RGB, build_chain
    chain = build_chain(config)
    pick_first = lambda test: next(n.id for n in chain if test(n))  # noqa: E731
    conv, up = (pick_first(lambda n: n.kind not in (CONV_UP, TO_RGB) and n.noise_index is not None),
                pick_first(lambda n: n.kind == CONV_UP))
    return [conv, up, pick_first(lambda n: n.kind == TO_RGB), pick_first(lambda n: n.kind == TO_RGB and "skip" in n.inputs),
            f"{conv}.linked", f"{up}.linked", linked_ids(config)[-1]]


@pytest.mark.parametrize("case", tiered(range(7), 0, 1, 5))  # the first plain and the upsampling convs: slow
def test_fused_graph_modules_equal_the_plain_ones(g32, case):
    """Under TRITON_INTERPRET on the CPU (on CUDA tensors on a GPU): batch 3 and a 6 x 10 map, fp32 rel err
    <= 1e-5; a conv's output stays channels_last (the next graph reads it without a copy)."""
    pytest.importorskip("triton")
    from soat.runtime.fused_graph_modules import fused_graph_module
    from soat.runtime.graph_modules import graph_module
    from soat.runtime.graphs import graph_io, input_shapes
    from soat.runtime.sources import load_weights
    from conftest import DEVICE
    weights, _ = load_weights(*SOURCE)
    gid = _fused_cases(g32.config)[case]
    plain, fused = (f(weights, gid).to(DEVICE).eval() for f in (graph_module, fused_graph_module))
    shapes = input_shapes(g32.config, gid, batch=3, height=6, width=10)
    gen = torch.Generator().manual_seed(case)
    names = graph_io(g32.config, gid)[0]
    args = [torch.randn(shapes[n], generator=gen).to(DEVICE) for n in names]
    args = [a.contiguous(memory_format=torch.channels_last) if n in fused.channels_last_inputs else a
            for n, a in zip(names, args)]
    with torch.no_grad():
        want, got = plain(*args), fused(*args)
    for got, want in zip(*((t,) if torch.is_tensor(t) else t for t in (got, want)), strict=True):
        assert rel_err(got, want) <= TOL, gid
        assert got.shape[1] == 3 or got.is_contiguous(memory_format=torch.channels_last), gid


@pytest.mark.full
def test_fused_graph_modules_export_with_dynamic_shapes(g32):
    """``torch.export`` keeps each fused op as one node and every batch, height and width symbolic (no launch
    geometry specializes them). Run in a process without TRITON_INTERPRET: the interpreter's kernels cannot be
    traced; Inductor's compile of the ops needs a GPU (bench/gpu_run.sh, step aoti)."""
    pytest.importorskip("triton")
    import subprocess
    import sys
    code = f"""
import torch
from soat.export.aoti_export import channels_last_inputs, dynamic_shapes, example_inputs
from soat.runtime.fused_graph_modules import fused_graph_module
from soat.runtime.graphs import graph_io
from soat.runtime.sources import load_weights
weights, _ = load_weights{SOURCE!r}
for gid in {_fused_cases(g32.config)!r}:
    module = fused_graph_module(weights, gid).eval()
    names = graph_io(weights.config, gid)[0]
    args = example_inputs(weights.config, gid, torch.float32, "cpu", channels_last_inputs(module))
    specs = dynamic_shapes(weights.config, gid)
    program = torch.export.export(module, args, dynamic_shapes=tuple(specs.get(n) for n in names))
    ops = sorted({{str(n.target) for n in program.graph.nodes if str(n.target).startswith("soat.")}})
    x = next(n for n in program.graph.nodes if n.op == "placeholder" and n.name in ("x", "x_mod")).meta["val"]
    print(gid, ops, all(isinstance(d, torch.SymInt) for d in (x.shape[0], x.shape[2], x.shape[3])))
"""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    lines = dict(line.split(" ", 1) for line in out.stdout.splitlines())
    conv, up, rgb, rgb_skip, conv_linked, up_linked, last_linked = _fused_cases(g32.config)
    for gid in (conv, up):
        assert lines[gid] == "['soat.conv_epilogue.default', 'soat.demod.default', 'soat.modulate.default'] True"
    for gid in (rgb, rgb_skip):
        assert lines[gid] == "['soat.to_rgb.default'] True"
    assert lines[conv_linked] == "['soat.conv_epilogue_both.default', 'soat.demod.default'] True"
    assert lines[up_linked] == "['soat.conv_epilogue_next.default', 'soat.demod.default'] True"
    assert lines[last_linked] == "['soat.conv_epilogue.default', 'soat.demod.default'] True"


@pytest.mark.full
def test_manifest_lists_channels_last_inputs(aoti_dir, tmp_path):
    """Formats 3 and 4 list each graph's channels_last inputs (none for a CPU export); a name that is not an input
    is refused; format 2 folders (no such field) still load."""
    m = read_manifest(aoti_dir)
    assert all(m.channels_last(gid) == () for gid in m.graphs)
    with open(os.path.join(aoti_dir, MANIFEST)) as f:
        graphs = json.load(f)["graphs"]
    bad = {gid: {**g, "channels_last": ["nope"]} for gid, g in graphs.items()}
    with pytest.raises(soat.SoatError, match="channels_last inputs \\['nope'\\].*re-export"):
        read_manifest(_copy_with(aoti_dir, tmp_path / "bad", graphs=bad))
    v2 = {gid: {k: v for k, v in g.items() if k != "channels_last"} for gid, g in graphs.items()
          if not gid.endswith(".linked")}
    assert read_manifest(_copy_with(aoti_dir, tmp_path / "v2", graphs=v2, format_version=2)).channels_last("conv1") == ()


@pytest.mark.full
def test_backend_passes_inputs_in_the_listed_memory_format(aoti_dir, monkeypatch):
    """The packages read inputs with the strides they were compiled for: the backend passes ``x`` channels_last
    where the manifest says so, and every other input contiguous."""
    G = soat.load(aoti_dir, backend="aoti")
    for g in G.backend.manifest.graphs.values():  # listed as a CUDA export lists them (a CPU folder may not: it is
        g["channels_last"] = ["x"] if "x" in g["inputs"] else []  # refused when read), in this loaded copy only
    seen = []

    class Recorder:
        def run(self, args):
            seen.append(args)
            return [torch.zeros(1)]

    backend = G.backend
    monkeypatch.setattr(backend, "_model", lambda gid: Recorder())
    x = torch.randn(2, 512, 8, 8)
    backend.run("convs.0", {"x": x, "style": torch.randn(2, 512), "noise": torch.randn(1, 1, 16, 16)})
    (got_x, style, noise), = seen
    assert got_x.is_contiguous(memory_format=torch.channels_last) and not got_x.is_contiguous()
    assert torch.equal(got_x, x) and style.is_contiguous() and noise.is_contiguous() and noise.shape[0] == 2
