"""Export (issue 5): per-layer ONNX graphs, the manifest and its checks, the export cache, and the
ONNX Runtime backend, which must reproduce the torch backend on every task (rel err <= 1e-5).

One 32px model (and a second one for translation) is exported once per module; node graphs
are checked alone on widened maps, tasks end to end. On a machine with CUDA and
onnxruntime-gpu the task tests also run on ORT-CUDA (against the torch CPU reference).
"""

from __future__ import annotations

import json
import os
import shutil

import numpy as np
import pytest
import torch

import soat
import soat.export
from soat.export.cache import cached_export
from soat.runtime.graphs import graph_ids, input_shapes
from soat.runtime.manifest import FORMAT_VERSION, MANIFEST, read_manifest
from soat.export.onnx_export import cache_key
from soat.runtime.chain import build_chain
from soat.runtime.files import file_sha256
from conftest import make_styles, onnx_export, pick, rel_err, tiered

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

TOL = 1e-5
HAS_ORT_CUDA = torch.cuda.is_available() and "CUDAExecutionProvider" in ort.get_available_providers()
DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(not HAS_ORT_CUDA, reason="needs CUDA and onnxruntime-gpu"))]


@pytest.fixture(scope="module")
def export_dir(g32, tmp_path_factory) -> str:
    return onnx_export(g32, tmp_path_factory, "export32")


@pytest.fixture(scope="module")
def export_dir_b(g32b, tmp_path_factory) -> str:
    return onnx_export(g32b, tmp_path_factory, "export32b")


@pytest.fixture(scope="module", params=DEVICES)
def g_ort(request, export_dir) -> soat.Generator:
    return soat.load(export_dir, backend="onnxruntime", device=request.param)


# ---- the graphs -------------------------------------------------------------------------------

def test_every_graph_passes_the_checker_with_standard_ops(export_dir, g32):
    manifest = read_manifest(export_dir)
    assert sorted(manifest.graphs) == sorted(graph_ids(g32.config))
    for gid in graph_ids(g32.config):
        model = onnx.load(manifest.graph_path(gid))
        onnx.checker.check_model(model, full_check=True)
        assert {op.domain for op in model.opset_import} <= {"", "ai.onnx"}
        assert max(op.version for op in model.opset_import) >= 17
        assert {n.domain for n in model.graph.node} <= {"", "ai.onnx"}, gid
        assert model.graph.initializer, f"{gid} has no initializers"
        for value in [*model.graph.input, *model.graph.output]:
            dims = value.type.tensor_type.shape.dim
            assert dims, f"{gid}.{value.name} has no static rank"
            assert dims[0].dim_param == "batch" or value.name == "noise", (gid, value.name)
            if len(dims) == 4 and gid != "input":
                assert dims[2].dim_param and dims[3].dim_param, f"{gid}.{value.name}: height/width not dynamic"


def test_manifest_records_chain_layout_and_checksums(export_dir, g32):
    with open(os.path.join(export_dir, MANIFEST)) as f:
        m = json.load(f)
    assert m["format_version"] == FORMAT_VERSION and m["exporter"]["soat"] == soat.__version__
    assert [n["id"] for n in m["chain"]] == [n.id for n in build_chain(g32.config)]
    assert m["style_channels"] == g32.style_channels and m["dtype"] == "fp32" and m["opset"] == 17
    assert m["source"]["fingerprint"] == g32.fingerprint
    assert m["graphs"]["convs.0"] == {**m["graphs"]["convs.0"], "file": "convs.0.onnx",
                                      "inputs": ["x", "style", "noise"], "outputs": ["x_out"]}
    assert m["graphs"]["to_rgbs.0"]["inputs"] == ["x", "skip", "style"]
    with np.load(os.path.join(export_dir, m["noise"]["file"]), allow_pickle=False) as noise:
        for i, buf in enumerate(g32.fixed_noise):
            np.testing.assert_array_equal(noise[f"noise_{i}"], buf.numpy())


@pytest.mark.parametrize("batch, noise_batch", tiered([(1, 1), (3, 1), (3, 3)], (3, 1), (3, 3)))
def test_each_node_graph_equals_the_torch_node_on_widened_maps(g32, export_dir, batch, noise_batch):
    """Every graph alone, on random features 2R wide; the noise per sample or broadcast."""
    backend = soat.load(export_dir, backend="onnxruntime").backend
    gen = torch.Generator().manual_seed(batch)
    for gid in graph_ids(g32.config):
        node = next((n for n in g32.chain if n.id == gid), None)
        r = node.resolution // node.up if node else None
        shapes = input_shapes(g32.config, gid, batch, height=r, width=None if r is None else 2 * r)
        if "noise" in shapes:
            shapes["noise"] = (noise_batch, *shapes["noise"][1:])
        inputs = {name: torch.randn(shape, generator=gen) for name, shape in shapes.items()}
        if "style" in inputs:
            inputs["style"] += 1.0  # sigma sits around its affine bias, 1
        want = g32.backend.run(gid, inputs)
        got = backend.run(gid, inputs)
        assert got.keys() == want.keys()
        for name in want:
            assert rel_err(got[name], want[name]) <= TOL, (gid, name)


# ---- every task on ORT equals the torch backend -------------------------------------------------

def _tasks():
    box = (6, 5, 14, 12)
    return {
        "generate_batch_2": lambda G, s1, s2: G.generate([torch.cat([a, b]) for a, b in zip(s1, s2)]),
        "generate_random_noise": lambda G, s1, s2: (torch.manual_seed(7), G.generate(s1, noise="random"))[1],
        "blend_horizontal": lambda G, s1, s2: G.blend(s1, s2, "horizontal"),
        "blend_vertical": lambda G, s1, s2: G.blend(s1, s2, "vertical"),
        "merge_extension": lambda G, s1, s2: G.merge_extension(s1, s2),
        "merge": lambda G, s1, s2: G.merge(s1, s2),
        "panorama_3": lambda G, s1, s2: G.panorama([s1, s2, [t.flip(1) for t in s1]]),
        "expand_horizontal": lambda G, s1, s2: G.expand(s1, "horizontal", noise="fixed"),
        "expand_vertical": lambda G, s1, s2: G.expand(s1, "vertical", noise="fixed"),
        "expand_reflect": lambda G, s1, s2: G.expand(s1, "reflect", noise="fixed"),
        "blend_bbox": lambda G, s1, s2: G.blend_bbox(s1, s2, box),
        "blend_bbox_pose": lambda G, s1, s2: G.blend_bbox(s1, s2, box, pose_align=True, num_blend=5),
        "patch_swap": lambda G, s1, s2: G.patch_swap(s1, s2, ((0, 2, 8, 10), (18, 16, 8, 10))),
        "shift": lambda G, s1, s2: G.shift(s1, (4, 4, 8, 8), [(18, 16), (2, 20)]),
    }


@pytest.mark.parametrize("task", tiered(_tasks(), "generate_random_noise", "blend_horizontal", "merge_extension",
                                        "panorama_3", "expand_horizontal", "expand_vertical", "blend_bbox"))
def test_task_on_onnxruntime_equals_torch(g32, g_ort, task):
    if task == "generate_random_noise" and g_ort.device.type == "cuda":
        pytest.skip("the CPU and CUDA random generators draw different noise")
    s = make_styles(g32, batch=2, seed=11)
    s1, s2 = pick(s, 0), pick(s, 1)  # batch 1 keeps the torch reference quick; batches run in generate_batch_2
    run = _tasks()[task]
    want = run(g32, s1, s2)
    got = run(g_ort, s1, s2)
    assert rel_err(got, want) <= TOL


@pytest.mark.full
def test_translate_with_two_exported_generators_equals_torch(g32, g32b, export_dir, export_dir_b):
    s1, s2 = make_styles(g32, batch=1, seed=3), make_styles(g32b, batch=1, seed=4)
    o1 = soat.load(export_dir, backend="onnxruntime")
    o2 = soat.load(export_dir_b, backend="onnxruntime")
    mask = torch.zeros(1, 1, 32, 32)
    mask[..., 8:24, 4:20] = 0.7  # a local translation: covers the scalar alpha's path too
    want = soat.translate(g32, g32b, s1, s2, num_swap=4, alpha=mask)
    assert rel_err(soat.translate(o1, o2, s1, s2, num_swap=4, alpha=mask), want) <= TOL


def test_sigma_space_on_onnxruntime_equals_torch(g32, g_ort):
    z = torch.randn(3, 512, generator=torch.Generator().manual_seed(5))
    assert rel_err(g_ort.w(z), g32.w(z)) <= TOL
    for got, want in zip(g_ort.styles(z), g32.styles(z)):
        assert rel_err(got, want) <= TOL
    wplus = torch.randn(2, g32.config.n_latent, 512, generator=torch.Generator().manual_seed(6))
    for got, want in zip(g_ort.styles_from_w(wplus), g32.styles_from_w(wplus)):
        assert rel_err(got, want) <= TOL


# ---- the manifest refuses a tampered folder -------------------------------------------------------

def _copy(export_dir: str, tmp_path) -> str:
    folder = str(tmp_path / "copy")
    shutil.copytree(export_dir, folder)
    return folder


def _edit_manifest(folder: str, **fields) -> None:
    path = os.path.join(folder, MANIFEST)
    with open(path) as f:
        m = json.load(f)
    m.update(fields)
    with open(path, "w") as f:
        json.dump(m, f)


def _flip_byte(folder: str, name: str = "convs.1.onnx") -> None:
    path = os.path.join(folder, name)
    data = bytearray(open(path, "rb").read())
    data[len(data) // 2] ^= 0x01
    open(path, "wb").write(bytes(data))


@pytest.mark.parametrize("tamper, message", [
    (_flip_byte, "'convs.1.onnx' does not match its sha256"),
    (lambda d: os.remove(os.path.join(d, "to_rgbs.1.onnx")), "'to_rgbs.1.onnx' is missing"),
    (lambda d: os.remove(os.path.join(d, "noise.npz")), "'noise.npz' is missing"),
    (lambda d: _edit_manifest(d, format_version=FORMAT_VERSION + 1), "newer than this soat reads"),
    (lambda d: _edit_manifest(d, extra={"a": 1}), "unknown fields ['extra']"),
    (lambda d: _edit_manifest(d, style_channels=[1]), "the chain does not match"),
    (lambda d: os.remove(os.path.join(d, MANIFEST)), "is not an export folder"),
])
def test_tampered_export_is_refused(export_dir, tmp_path, tamper, message):
    folder = _copy(export_dir, tmp_path)
    tamper(folder)
    with pytest.raises(soat.SoatError) as err:
        soat.load(folder, backend="onnxruntime")
    assert message in str(err.value)


def test_an_export_folder_needs_no_backend(export_dir, tmp_path, capsys, monkeypatch):
    """The manifest says which backend runs a folder; a backend that cannot is one line naming the one that can,
    spelled as the caller spells it (before any model loads, on the command line)."""
    from soat.cli import main
    assert soat.load(export_dir).backend.name == "onnxruntime"
    out = tmp_path / "e.png"
    assert main(["expand", "--checkpoint", export_dir, "--seeds", "3", "-o", str(out)]) == 0 and out.exists()
    with pytest.raises(soat.SoatError, match=r"holds onnx graphs, which backend='torch' does not run; leave backend "
                                             r"out or use backend='onnxruntime'$"):
        soat.load(export_dir, backend="torch")
    monkeypatch.setattr(soat, "load", lambda *a, **k: pytest.fail("loaded before the arguments were checked"))
    assert main(["blend", "--checkpoint", export_dir, "--backend", "fast", "-o", str(tmp_path / "b.png")]) == 2
    err = capsys.readouterr().err
    assert err == (f"soat: error: export {export_dir!r} holds onnx graphs, which --backend fast does not run; leave "
                   "--backend out or use --backend onnxruntime\n")


def test_load_checks_dtype_and_layout_against_the_export(export_dir):
    with pytest.raises(soat.SoatError, match=r"is fp32 but fp16 was asked for; load it as fp32 \(dtype='fp32', "
                                             r"--dtype fp32\), or export again with --dtype fp16"):
        soat.load(export_dir, backend="onnxruntime", dtype="fp16")
    with pytest.raises(soat.SoatError, match="holds a 32px generator but size=64"):
        soat.load(export_dir, backend="onnxruntime", size=64)
    with pytest.raises(soat.SoatError, match="exports are fp32 or fp16"):
        soat.load(export_dir, backend="onnxruntime", dtype="bf16")


def test_export_rejects_bad_arguments(g32, tmp_path):
    with pytest.raises(soat.SoatError, match="dtype='bf16' cannot be exported"):
        soat.export.export(g32, tmp_path, dtype="bf16")
    with pytest.raises(soat.SoatError, match="opset=13 is not supported"):
        soat.export.export(g32, tmp_path, opset=13)
    with pytest.raises(soat.SoatError, match="must be a checkpoint path"):
        soat.export.export(42, tmp_path)


# ---- the export cache ------------------------------------------------------------------------------

def test_checkpoint_source_is_exported_once_into_the_cache(g8, tmp_path, monkeypatch):
    monkeypatch.setenv("SOAT_CACHE_DIR", str(tmp_path / "cache"))
    ckpt = str(tmp_path / "g8.pt")
    torch.save({"g_ema": g8.backend.weights.state_dict()}, ckpt)
    g = soat.load(ckpt, backend="onnxruntime")
    folder = cached_export(ckpt, "fp32")
    assert folder.startswith(str(tmp_path / "cache" / "exports"))
    assert g.fingerprint == file_sha256(ckpt)
    stamp = os.stat(os.path.join(folder, MANIFEST)).st_mtime_ns
    s = make_styles(g8, batch=2)
    assert rel_err(soat.load(ckpt, backend="onnxruntime").generate(s), g8.generate(s)) <= TOL
    assert os.stat(os.path.join(folder, MANIFEST)).st_mtime_ns == stamp, "a valid cached export was rewritten"
    _flip_byte(folder, "conv1.onnx")  # a corrupt cache entry is replaced, not used
    assert cached_export(ckpt, "fp32") == folder
    read_manifest(folder)


def test_cache_key_depends_on_source_dtype_opset_and_version(monkeypatch):
    keys = {cache_key("random:3:8:1", "fp32", 17), cache_key("random:3:8:2", "fp32", 17),
            cache_key("random:3:8:1", "fp16", 17), cache_key("random:3:8:1", "fp32", 18)}
    monkeypatch.setattr(soat.version, "__version__", "99.0")
    keys.add(cache_key("random:3:8:1", "fp32", 17))
    assert len(keys) == 5 and cache_key("random:3:8:1", "fp32", 17) == cache_key("random:3:8:1", "fp32", 17)


def test_fp16_export_is_valid_onnx_and_needs_cuda_on_onnxruntime(g8, tmp_path):
    soat.export.export(g8, tmp_path, dtype="fp16", progress=False)
    model = onnx.load(str(tmp_path / "convs.0.onnx"))
    onnx.checker.check_model(model, full_check=True)
    assert {init.data_type for init in model.graph.initializer} == {onnx.TensorProto.FLOAT16}
    with pytest.raises(soat.SoatError, match="runs fp32 exports only"):
        soat.load(str(tmp_path), backend="onnxruntime", dtype="fp16")


def test_cli_export(tmp_path, capsys):
    import argparse

    from soat.export import cli

    parser = argparse.ArgumentParser(prog="soat")
    cli.add_parser(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["export", "--checkpoint", "random:2", "-o", str(tmp_path), "--size", "8", "--no-progress"])
    assert cli.run(args) == 0
    assert capsys.readouterr().out.strip() == str(tmp_path / MANIFEST)
    assert read_manifest(str(tmp_path)).source["name"] == "random:2"


# ---- a 256px export ------------------------------------------------------------------------------

@pytest.mark.full
def test_256px_export_checks_and_matches_torch(g256, tmp_path):
    soat.export.export(g256, tmp_path, progress=False)
    backend = soat.load(str(tmp_path), backend="onnxruntime").backend
    for gid in graph_ids(g256.config):
        onnx.checker.check_model(str(tmp_path / f"{gid}.onnx"))
    gen = torch.Generator().manual_seed(0)
    for gid in ("conv1", "convs.10", "to_rgbs.5"):
        node = next(n for n in g256.chain if n.id == gid)
        r = node.resolution // node.up
        shapes = input_shapes(g256.config, gid, 1, height=r, width=2 * r)
        inputs = {name: torch.randn(shape, generator=gen) for name, shape in shapes.items()}
        inputs["style"] += 1.0
        out = node.output
        assert rel_err(backend.run(gid, inputs)[out], g256.backend.run(gid, inputs)[out]) <= TOL, gid
