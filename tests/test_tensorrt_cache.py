"""TensorRT backend (issue 15): TensorRT for RTX builds an engine for every graph of a 32 px export
(fp32 and fp16) on the CPU (``soat engines``), the cache refuses stale, truncated and foreign engines,
the built profiles cover every task's shape plan, and the flavour rules hold. Running an engine needs
an RTX/A100-class GPU (RTX flavour) or data-center TensorRT: that path is skipped here."""

from __future__ import annotations

import argparse
import json
import os
import shutil

import pytest
import torch

import soat
import soat.export
from soat.export import engines as engines_cli
from soat.runtime.backends.trt_engines import (RECORD_FIELDS, engine_paths, engine_record, ensure_engine,
                                               find_engine, stale_reason)
from soat.runtime.backends.trt_flavours import (RtxFlavour, TensorRTFlavour, select_flavour,
                                                unsupported_gpu_message)
from soat.runtime.graphs import graph_ids
from soat.runtime.manifest import read_manifest
from soat.runtime.shape_plan import check_in_profile, profile_shapes, task_envelope
from conftest import make_styles, rel_err

pytestmark = pytest.mark.full  # engine builds, with the test-full extra
trt_rtx = pytest.importorskip("tensorrt_rtx_bindings", reason="TensorRT for RTX is not installed (it comes with "
                                                               "the test-full extra: pip install -e '.[test-full]')")
try:
    import tensorrt  # noqa: F401
    HAS_TRT = True
except ImportError:
    HAS_TRT = False
RTX = RtxFlavour(trt_rtx)
RUNS_HERE = torch.cuda.is_available() and (HAS_TRT or tuple(torch.cuda.get_device_capability()) in RTX.supported())
MAX_BATCH = 4
SMALL = "to_rgb1"  # the quickest graph to rebuild


def _engines(folder: str, *extra: str) -> int:
    parser = argparse.ArgumentParser()
    engines_cli.add_parser(parser.add_subparsers())
    return engines_cli.run(parser.parse_args(["engines", folder, "--flavour", "rtx", "--max-batch", str(MAX_BATCH),
                                              "--no-progress", *extra]))


@pytest.fixture(scope="session")
def built(tmp_path_factory) -> dict:
    """``{dtype: export folder}``: a 32 px export per dtype, with every engine built by ``soat engines``."""
    folders = {}
    for dtype in ("fp32", "fp16"):
        folder = str(tmp_path_factory.mktemp(f"trt-{dtype}"))
        soat.export.export("random:1", folder, dtype=dtype, size=32, channel_multiplier=1, progress=False)
        assert _engines(folder) == 0
        folders[dtype] = folder
    return folders


def _records(folder: str) -> dict[str, dict]:
    out = {}
    for name in os.listdir(os.path.join(folder, "engines")):
        if name.endswith(".json"):
            with open(os.path.join(folder, "engines", name)) as f:
                record = json.load(f)
            out[name.rsplit(".", 2)[0]] = record
    return out


@pytest.mark.parametrize("dtype", ["fp32", "fp16"])
def test_every_graph_builds_for_every_target(built, dtype):
    manifest = read_manifest(built[dtype])
    records = _records(built[dtype])
    assert sorted(records) == sorted(graph_ids(manifest.config))
    targets = "sm80,sm86,sm89,sm120,sm121" if dtype == "fp32" else "sm75,sm80,sm86,sm89,sm120,sm121"
    for gid, r in records.items():
        assert (r["flavour"], r["tensorrt"], r["target"], r["precision"], r["max_batch"]) == \
               ("rtx", trt_rtx.__version__, targets, dtype, MAX_BATCH)
        assert r["graph_sha256"] == manifest.graph_sha256(gid)
        engine, record = engine_paths(os.path.join(built[dtype], "engines"), gid, r)
        assert stale_reason(engine, record, {k: r[k] for k in (*RECORD_FIELDS, "key")}) is None
    assert _engines(built[dtype], "--check") == 0  # all cached: nothing built, nothing refused


def test_built_profiles_cover_every_task_plan(built):
    """The profiles stored with the built engines hold every task's shape plan at batch 1 and the max batch."""
    config = read_manifest(built["fp32"]).config
    records = _records(built["fp32"])
    for gid, signatures in task_envelope(config, MAX_BATCH).items():
        profile = {n: tuple(tuple(s) for s in shapes) for n, shapes in records[gid]["profile"].items()}
        assert profile == profile_shapes(config, gid, MAX_BATCH)
        for sig in signatures:
            shapes = dict(sig)
            if "noise" in shapes:
                shapes["noise"] = (shapes["x"][0], *shapes["noise"][1:])
            check_in_profile(gid, shapes, profile)


@pytest.fixture
def one(built, tmp_path):
    """A copy of the fp16 export with an empty engine folder, and the manifest."""
    folder = str(tmp_path / "export")
    shutil.copytree(built["fp16"], folder, ignore=shutil.ignore_patterns("engines"))
    return folder, read_manifest(folder), os.path.join(folder, "engines")


def test_cache_rebuilds_or_refuses_stale_truncated_and_foreign_engines(one):
    folder, manifest, engines = one
    build = lambda **kw: ensure_engine(RTX, manifest, SMALL, engines, ["sm86"], MAX_BATCH, **kw)  # noqa: E731
    with pytest.raises(soat.SoatError, match="is refused: no cached engine"):
        build(check=True)
    path, record, what = build()
    assert what == "built" and build() == (path, record, "cached")
    rec_path = engine_paths(engines, SMALL, record)[1]
    with open(path, "rb") as f:
        plan = f.read()

    def rewrite(source: str, **changes) -> None:
        with open(source) as f:
            fields = dict(json.load(f), **changes)
        with open(rec_path, "w") as f:
            json.dump(fields, f)

    # a stale record: another TensorRT version wrote it
    rewrite(rec_path, tensorrt="1.6.1.120")
    with pytest.raises(soat.SoatError, match=r"tensorrt: cached '1.6.1.120' != expected"):
        build(check=True)
    assert build()[2].startswith("rebuilt: it was built for something else (tensorrt")
    # a truncated engine file
    with open(path, "wb") as f:
        f.write(plan[:1000])
    assert "truncated or replaced" in stale_reason(path, rec_path, record)
    assert build()[2].startswith("rebuilt: the engine file has 1000 bytes")
    # a foreign engine of the same size (another graph's bytes) and a foreign engine with its own record
    with open(path, "wb") as f:
        f.write(bytes(reversed(plan)))
    assert build()[2] == "rebuilt: the engine file does not match the sha256 in its record"
    other, other_record, _ = ensure_engine(RTX, manifest, "to_rgbs.0", engines, ["sm86"], MAX_BATCH)
    shutil.copy(other, path)
    rewrite(engine_paths(engines, "to_rgbs.0", other_record)[1], key=record["key"])
    assert "graph_sha256: cached" in build()[2]
    # a record that is not JSON, and an engine without a record
    with open(rec_path, "w") as f:
        f.write("{not json")
    assert "unreadable" in build()[2]
    os.remove(rec_path)
    assert "has no record beside it" in build()[2]
    assert build()[2] == "cached"


def test_find_engine_offers_only_intact_engines_for_the_gpu(one):
    folder, manifest, engines = one
    path, record, _ = ensure_engine(RTX, manifest, SMALL, engines, ["sm86", "sm89"], MAX_BATCH)
    wanted = {"graph_sha256": manifest.graph_sha256(SMALL), "flavour": "rtx", "precision": "fp16"}
    on = lambda cc: (lambda r: cc in r["target"].split(","))  # noqa: E731 - RtxFlavour.covers without a GPU
    assert find_engine(engines, SMALL, wanted, on("sm89")) == ((path, record), [])
    assert find_engine(engines, SMALL, wanted, on("sm120")) == (None, [])
    assert find_engine(engines, SMALL, dict(wanted, max_batch=8), on("sm89")) == (None, [])
    with open(path, "ab") as f:
        f.write(b"tail")
    found, refused = find_engine(engines, SMALL, wanted, on("sm89"))
    assert found is None and "truncated or replaced" in refused[0]
    assert find_engine(engines, SMALL, wanted, on("sm89"), excluded=[path]) == (None, [])


def test_soat_engines_reports_and_rebuilds_a_damaged_engine(one, capsys):
    folder, manifest, engines = one
    assert _engines(folder, "--compute-capability", "8.6") == 0
    victim = next(os.path.join(engines, n) for n in os.listdir(engines) if n.startswith("convs.1.") and
                  n.endswith(".engine"))
    with open(victim, "r+b") as f:
        f.truncate(64)
    capsys.readouterr()
    assert _engines(folder, "--compute-capability", "8.6", "--check") == 1
    err = capsys.readouterr().err
    assert "the engine of 'convs.1'" in err and "refused: the engine file has 64 bytes" in err
    assert _engines(folder, "--compute-capability", "8.6") == 0
    assert "convs.1: rebuilt: the engine file has 64 bytes" in capsys.readouterr().err
    assert _engines(folder, "--compute-capability", "8.6", "--check") == 0


def test_rtx_targets_and_the_gpus_it_refuses(monkeypatch):
    assert RTX.supported() == [(7, 5), (8, 0), (8, 6), (8, 9), (12, 0), (12, 1)]
    assert RTX.targets("fp16", ["8.9", "8.6", "8.6"], None) == ["sm86", "sm89"]
    assert RTX.targets("fp32", None, None) == ["sm80", "sm86", "sm89", "sm120", "sm121"]
    with pytest.raises(soat.SoatError, match="fp32 engines cannot target compute capability 7.5"):
        RTX.targets("fp32", ["7.5"], None)
    with pytest.raises(soat.SoatError, match="cannot target compute capability 9.0"):
        RTX.targets("fp16", ["9.0"], None)
    with pytest.raises(soat.SoatError, match="must look like 8.6"):
        RTX.targets("fp16", ["sm86"], None)
    for cc, gpu in [((9, 0), "NVIDIA H100 80GB HBM3"), ((7, 0), "Tesla V100")]:
        monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None, cc=cc: cc)
        monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None, gpu=gpu: gpu)
        with pytest.raises(soat.SoatError) as e:
            RTX.check_device(torch.device("cuda"))
        msg = str(e.value)
        assert "\n" not in msg and f"does not run on {gpu} (compute capability {cc[0]}.{cc[1]})" in msg
        assert "backend='torch', 'fast', 'onnxruntime' or 'aoti'" in msg
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (8, 6))
    RTX.check_device(torch.device("cuda"))
    assert RTX.covers("sm80,sm86", torch.device("cuda")) and not RTX.covers("sm89", torch.device("cuda"))
    assert "12.0, 12.1" in unsupported_gpu_message("1.7", (9, 0), "H100", RTX.supported())


def test_flavour_selection_and_trt_rules(tmp_path):
    assert select_flavour("rtx").name == "rtx"
    assert select_flavour().name == ("trt" if HAS_TRT else "rtx")
    with pytest.raises(soat.SoatError, match="flavour='cuda' is unknown"):
        select_flavour("cuda")
    if not HAS_TRT:
        with pytest.raises(soat.SoatError, match=r"needs NVIDIA TensorRT \(pip install tensorrt\), which is not"):
            select_flavour("trt")
    trt10 = TensorRTFlavour(argparse.Namespace(__version__="10.3.0"))
    assert trt10.network_flags() == 0
    with pytest.raises(soat.SoatError, match="is for the rtx flavour"):
        trt10.targets("fp16", ["8.6"], None)
    with pytest.raises(soat.SoatError, match="builds engines on the GPU they will run on"):
        trt10.targets("fp16", None, None)


def test_engine_key_changes_with_every_field():
    config = soat.GeneratorConfig(size=32, channel_multiplier=1)
    base = dict(graph_sha256="ab" * 32, flavour="rtx", tensorrt="1.7.1.116", target="sm86", precision="fp16",
                max_batch=4, profile=profile_shapes(config, "convs.2", 4))
    changes = dict(graph_sha256="cd" * 32, flavour="trt", tensorrt="1.6.1.120", target="sm86,sm89",
                   precision="fp32", max_batch=8, profile=profile_shapes(config, "convs.2", 8))
    keys = {engine_record(**base)["key"]} | {engine_record(**dict(base, **{k: v}))["key"] for k, v in changes.items()}
    assert len(keys) == len(RECORD_FIELDS) + 1


def test_loading_on_the_cpu_says_cuda_only(built):
    with pytest.raises(soat.SoatError, match="runs on CUDA only"):
        soat.load(built["fp32"], backend="tensorrt")


@pytest.mark.skipif(not RUNS_HERE, reason="needs a GPU that TensorRT for RTX runs on (7.5, 8.x, 12.x) or TensorRT")
def test_engines_reproduce_torch_and_are_cached(built, g32):  # never run in CI: no such GPU is lent
    g = soat.load(built["fp32"], backend="tensorrt", device="cuda")
    s = make_styles(g32, batch=2)
    s2 = [t.flip(0) for t in s]
    ref = g32.merge_extension(s, s2)
    assert rel_err(g.merge_extension([t.cuda() for t in s], [t.cuda() for t in s2]), ref) <= 1e-4
    before = sorted(os.listdir(os.path.join(built["fp32"], "engines")))
    g2 = soat.load(built["fp32"], backend="tensorrt", device="cuda")
    assert rel_err(g2.generate([t.cuda() for t in s]), g32.generate(s)) <= 1e-4
    assert [n for n in sorted(os.listdir(os.path.join(built["fp32"], "engines"))) if n.endswith(".engine")] == \
        [n for n in before if n.endswith(".engine")]
    with pytest.raises(soat.SoatError, match="outside the profile"):  # 40 > 2 x 8 columns: refused before TensorRT
        g.backend.run("convs.2", {"x": torch.zeros(1, 512, 8, 40, device="cuda"),
                                  "style": torch.zeros(1, 512, device="cuda"),
                                  "noise": torch.zeros(1, 1, 16, 80, device="cuda")})
