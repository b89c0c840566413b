"""TensorRT backend (issue 5): optimization profiles and the engine cache's key and checks, in pure
Python; the real engine path needs TensorRT, which is not installable on the machines here."""

from __future__ import annotations

import hashlib
import json
import os

import pytest
import torch

import soat
import soat.export
from soat.runtime.backends.trt_backend import (LATENT_MAX_BATCH, RECORD_FIELDS, engine_paths, engine_record,
                                     profile_shapes, stale_reason)
from conftest import make_styles, rel_err

try:
    import tensorrt  # noqa: F401
    HAS_TRT = torch.cuda.is_available()
except ImportError:
    HAS_TRT = False

CONFIG = soat.GeneratorConfig(size=32, channel_multiplier=1)


def _record(**changes) -> dict:
    fields = dict(graph_sha256="ab" * 32, tensorrt_version="10.3.0", gpu="NVIDIA H100 80GB HBM3",
                  precision="fp16", profile=profile_shapes(CONFIG, "convs.2"))
    fields.update(changes)
    return engine_record(**fields)


def test_profiles_cover_batch_and_twofold_widening():
    p = profile_shapes(CONFIG, "convs.2", max_batch=8)  # 16x16 block's conv_up: 8x8 in, 16x16 out
    assert p["x"] == ((1, 512, 8, 8), (1, 512, 8, 8), (8, 512, 16, 16))
    assert p["noise"] == ((1, 1, 16, 16), (1, 1, 16, 16), (8, 1, 32, 32))
    assert p["style"] == ((1, 512), (1, 512), (8, 512))
    assert profile_shapes(CONFIG, "to_rgbs.1")["skip"][2][2:] == (16, 16)
    assert profile_shapes(CONFIG, "input") == {"style": ((1, 512), (1, 512), (16, 512))}
    assert profile_shapes(CONFIG, "mapping")["z"][2] == (LATENT_MAX_BATCH, 512)
    assert profile_shapes(CONFIG, "styles")["wplus"][2] == (LATENT_MAX_BATCH, CONFIG.n_latent, 512)


def test_engine_key_changes_with_every_field():
    base = _record()
    assert set(base) == {*RECORD_FIELDS, "key"} and base["key"] == _record()["key"]
    changed = [_record(graph_sha256="cd" * 32), _record(tensorrt_version="10.4.0"), _record(gpu="NVIDIA H200"),
               _record(precision="fp32"), _record(profile=profile_shapes(CONFIG, "convs.2", max_batch=4))]
    assert len({base["key"], *(r["key"] for r in changed)}) == 6
    engine, record = engine_paths("/cache", "convs.2", base)
    assert engine == f"/cache/convs.2.{base['key'][:16]}.engine" and record.endswith(".json")


def _write(tmp_path, record: dict, plan: bytes = b"engine bytes", sha: str | None = None):
    engine, rec = engine_paths(str(tmp_path), "convs.2", record)
    with open(engine, "wb") as f:
        f.write(plan)
    with open(rec, "w") as f:
        json.dump(dict(record, engine_sha256=sha or hashlib.sha256(plan).hexdigest()), f)
    return engine, rec


def test_stale_or_foreign_engines_are_never_loaded(tmp_path):
    expected = _record()
    engine, rec = engine_paths(str(tmp_path), "convs.2", expected)
    assert stale_reason(engine, rec, expected) == "no cached engine"
    _write(tmp_path, expected)
    assert stale_reason(engine, rec, expected) is None
    for field, value in [("tensorrt", "8.6.1"), ("gpu", "NVIDIA A100"), ("precision", "fp32")]:
        _write(tmp_path, dict(expected, **{field: value}))  # a foreign record under this engine's name
        reason = stale_reason(engine, rec, expected)
        assert f"{field}: cached {value!r}" in reason
    _write(tmp_path, expected, sha="0" * 64)
    assert "does not match the sha256" in stale_reason(engine, rec, expected)
    os.remove(rec)
    assert "has no record" in stale_reason(engine, rec, expected)
    with open(rec, "w") as f:
        f.write("{not json")
    assert "unreadable" in stale_reason(engine, rec, expected)


@pytest.mark.skipif(HAS_TRT, reason="TensorRT is installed")
def test_tensorrt_backend_without_tensorrt_says_so(g8, tmp_path):
    soat.export.export(g8, tmp_path, progress=False)
    with pytest.raises(soat.SoatError, match="TensorRT, which is not installed"):
        soat.load(str(tmp_path), backend="tensorrt")


@pytest.mark.skipif(not HAS_TRT, reason="TensorRT is not installable here")
def test_tensorrt_engines_reproduce_torch_and_are_cached(g32, tmp_path, monkeypatch):
    monkeypatch.setenv("SOAT_CACHE_DIR", str(tmp_path / "cache"))
    soat.export.export(g32, tmp_path / "onnx", progress=False)
    g = soat.load(str(tmp_path / "onnx"), backend="tensorrt", device="cuda")
    s = make_styles(g32, batch=2)
    s2 = [t.flip(0) for t in s]
    assert rel_err(g.merge_extension(s, s2), g32.merge_extension(s, s2)) <= 1e-5  # fp32 engines, TF32 off
    engines = sorted(os.listdir(tmp_path / "cache" / "tensorrt"))
    g2 = soat.load(str(tmp_path / "onnx"), backend="tensorrt", device="cuda")
    assert rel_err(g2.generate(s), g32.generate(s)) <= 1e-5
    assert sorted(os.listdir(tmp_path / "cache" / "tensorrt")) == engines
