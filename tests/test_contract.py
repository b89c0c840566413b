"""The export contract (docs/contract.md#export-folders): what an export folder carries and what its consumers
may rely on.

- psi-truncation centres where the checkpoint says (rosinality's ``latent_avg``, NVIDIA's ``w_avg``) on every
  backend: the torch backend, its ONNX export on ONNX Runtime and its AOTInductor export (CPU fp32, rel err
  <= 1e-5);
- a folder replaced after ``soat.load`` gives the first model's image exactly or one ``SoatError``, never a
  mix of two models (ONNX and AOTI);
- the run plan and the shapes in the manifest are the contract's (``graphs.run_plan``, ``graphs.signature``),
  and a plan that cannot run is refused when the folder is read;
- old manifests still load; one without mean styles refuses truncation in one line.
"""

from __future__ import annotations

import json
import os
import shutil

import pytest
import torch

import soat
import soat.export
from soat.export.aoti_export import export_aoti
from soat.runtime.config import GeneratorConfig
from soat.runtime.graphs import run_plan
from soat.runtime.manifest import MANIFEST, read_manifest
from soat.runtime.random_model import random_weights
from conftest import as_format, make_styles, rel_err
from test_aoti import aoti_dir  # noqa: F401  (the shared 32px AOTI export)
from test_loading import rosinality_g_ema, save_ckpt
from test_nvidia import nv_generator, write_pickle

TOL = 1e-5
PSI = 0.6


def _z(n: int = 2) -> torch.Tensor:
    return torch.randn(n, 512, generator=torch.Generator().manual_seed(3))


def _far_mean(seed: int) -> torch.Tensor:
    """A mean latent far from the sampled one, so that a wrong centre shows (0.37 rel err once, issue 27)."""
    return 3.0 * torch.randn(512, generator=torch.Generator().manual_seed(seed))


@pytest.fixture(scope="module")
def latent_avg_ckpt(tmp_path_factory) -> str:
    """A rosinality checkpoint (8px) with a top-level ``latent_avg``."""
    config = GeneratorConfig(size=8, channel_multiplier=1)
    sd = random_weights(config, seed=11).state_dict()
    return save_ckpt(tmp_path_factory.mktemp("ckpt") / "latent_avg.pt", rosinality_g_ema(sd, config),
                     latent_avg=_far_mean(1))


@pytest.fixture(scope="module")
def w_avg_pickle(tmp_path_factory) -> str:
    """An NVIDIA snapshot (8px) whose mapping carries ``w_avg``."""
    mp = pytest.MonkeyPatch()
    from test_nvidia import register_nvidia_modules
    register_nvidia_modules(mp)
    try:
        weights = random_weights(GeneratorConfig(size=8, channel_multiplier=1), seed=12)
        folder = tmp_path_factory.mktemp("nv")
        return write_pickle(folder / "network-snapshot-000100.pkl", nv_generator(weights, _far_mean(2)))
    finally:
        mp.undo()


@pytest.fixture(scope="module")
def latent_avg_aoti(latent_avg_ckpt, tmp_path_factory) -> str:
    """The checkpoint's AOTInductor export (CPU, 8px: 11 small packages)."""
    folder = tmp_path_factory.mktemp("aoti") / "latent_avg"
    export_aoti(latent_avg_ckpt, folder, progress=False)
    return str(folder)


def _truncated(G: soat.Generator) -> torch.Tensor:
    with torch.no_grad():
        return G.generate(G.styles(_z(), truncation=PSI))


@pytest.mark.parametrize("source", ["latent_avg_ckpt", "w_avg_pickle"])
def test_truncation_centre_is_the_checkpoints_on_onnxruntime(source, request, tmp_path, monkeypatch):
    pytest.importorskip("onnxruntime")
    monkeypatch.setenv("SOAT_CACHE_DIR", str(tmp_path / "cache"))
    path = request.getfixturevalue(source)
    reference = soat.load(path)
    assert reference.mean_source == "checkpoint w_avg"
    soat.export.export(path, tmp_path / "onnx", progress=False)
    G = soat.load(str(tmp_path / "onnx"), backend="onnxruntime")
    assert G.mean_source == "stored in the export"
    assert rel_err(_truncated(G), _truncated(reference)) <= TOL
    # the checkpoint through the export cache goes the same way
    cached = soat.load(path, backend="onnxruntime")
    assert rel_err(_truncated(cached), _truncated(reference)) <= TOL


@pytest.mark.full
def test_truncation_centre_is_the_checkpoints_on_aoti(latent_avg_ckpt, latent_avg_aoti):
    reference = soat.load(latent_avg_ckpt)
    G = soat.load(latent_avg_aoti, backend="aoti")
    assert rel_err(_truncated(G), _truncated(reference)) <= TOL


def _swap(folder: str, replacement: str) -> None:
    """Replace ``folder`` by a copy of another export, as ``soat export --force`` or a user's ``mv`` would."""
    staged = folder + ".new"
    shutil.copytree(replacement, staged)
    shutil.rmtree(folder)
    os.replace(staged, folder)


def test_onnx_folder_swapped_after_load_never_mixes_models(g16, tmp_path):
    pytest.importorskip("onnxruntime")
    first, second = str(tmp_path / "first"), str(tmp_path / "second")
    soat.export.export("random:16", first, size=16, channel_multiplier=1, progress=False)
    soat.export.export("random:17", second, size=16, channel_multiplier=1, progress=False)
    G = soat.load(first, backend="onnxruntime")
    s = make_styles(g16, batch=2, seed=9)
    before = G.generate(s)
    _swap(first, second)
    assert torch.equal(G.generate(s), before)  # its sessions were built from the bytes it checked
    with pytest.raises(soat.SoatError, match="no longer matches the sha256.*load .* again"):
        G.styles(_z())  # the mapping graph's session is made now, from the other model's file


@pytest.mark.full
def test_aoti_folder_swapped_after_load_never_mixes_models(aoti_dir, latent_avg_aoti, g32, tmp_path):
    folder = str(tmp_path / "export")
    shutil.copytree(aoti_dir, folder)
    G = soat.load(folder, backend="aoti")
    s = make_styles(g32, batch=2, seed=9)
    before = G.generate(s)  # loads the linked graphs (and the ToRGBs) only
    _swap(folder, latent_avg_aoti)
    assert torch.equal(G.generate(s), before)  # loaded packages are the ones it checked
    with pytest.raises(soat.SoatError, match=r"graph 'conv1'.*no longer matches the sha256"):
        G.blend(s, s)  # node by node: the plain graphs load now, and the folder's files are another model's


@pytest.mark.full
def test_tampered_package_is_refused_at_its_load(aoti_dir, g32, tmp_path):
    folder = str(tmp_path / "export")
    shutil.copytree(aoti_dir, folder)
    G = soat.load(folder, backend="aoti")
    with open(os.path.join(folder, "mapping.pt2"), "r+b") as f:
        f.seek(100)
        f.write(b"\0" * 8)
    with pytest.raises(soat.SoatError, match="graph 'mapping'.*no longer matches"):
        G.styles(_z())


@pytest.mark.full
def test_manifest_holds_the_contracts_plan_and_shapes(aoti_dir, g32):
    m = read_manifest(aoti_dir)
    n = len(g32.chain)
    assert len(m.runs) == (n - 1) * n // 2
    for (first, last), plan in m.runs.items():
        assert plan == run_plan(g32.config, first, last)
    with open(os.path.join(aoti_dir, MANIFEST)) as f:
        shapes = json.load(f)["graphs"]["convs.0.linked"]["shapes"]
    assert shapes["inputs"]["x_mod"][2:] == ["height", "width"]
    assert shapes["inputs"]["noise"] == shapes["outputs"]["next_x_mod"][:1] + [1, "2*height", "2*width"]


def _edit(folder: str, tmp_path, edit) -> str:
    copy = str(tmp_path / "edited")
    shutil.copytree(folder, copy)
    path = os.path.join(copy, MANIFEST)
    with open(path) as f:
        m = json.load(f)
    edit(m)
    with open(path, "w") as f:
        json.dump(m, f)
    return copy


@pytest.mark.full
def test_a_plan_that_cannot_run_is_refused(aoti_dir, g32, tmp_path):
    def drop_x(m):  # the last conv's linked step no longer keeps the x the final ToRGB reads
        steps = m["runs"][f"1:{len(g32.chain)}"]
        steps[-2]["writes"] = []

    with pytest.raises(soat.SoatError, match=r"run 1:\d+ runs 'to_rgbs.2' without its input; re-export"):
        read_manifest(_edit(aoti_dir, tmp_path, drop_x))


@pytest.mark.full
def test_a_plan_of_another_schedule_is_followed(aoti_dir, g32, tmp_path, monkeypatch):
    """The backends read the plan, they do not re-derive it: a folder whose plan runs every node's own graph
    runs them (and gives the same image)."""
    def node_by_node(m):
        chain = m["chain"]
        for key, steps in m["runs"].items():
            first, last = map(int, key.split(":"))
            m["runs"][key] = [{"graph": node["id"], "writes": node["outputs"]} for node in chain[first:last]]

    G = soat.load(_edit(aoti_dir, tmp_path, node_by_node), backend="aoti")
    ran = []
    run = G.backend.run
    monkeypatch.setattr(G.backend, "run", lambda gid, inputs: ran.append(gid) or run(gid, inputs))
    s = make_styles(g32, seed=5)
    assert rel_err(G.generate(s), g32.generate(s)) <= TOL
    assert ran == [n.id for n in g32.chain]


def test_old_onnx_export_without_mean_styles_refuses_truncation(g8, export8, tmp_path):
    def as_format_4(m):
        as_format(m, 4)["mean_styles"] = None

    G = soat.load(_edit(export8, tmp_path, as_format_4), backend="onnxruntime")
    s = make_styles(g8, seed=2)
    assert rel_err(G.generate(s), g8.generate(s)) <= TOL  # the folder loads and runs
    with pytest.raises(soat.SoatError, match=r"format 4\) stores no mean styles.*re-export"):
        G.styles(_z(), truncation=0.7)
    G.estimate_mean_styles(_z(64))  # the explicit way to a sampled centre still works
    G.styles(_z(), truncation=0.7)
