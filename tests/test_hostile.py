"""Hostile inputs (issue 18, library side): files that crash or exhaust the process, NaN weights, files of
the wrong kind, and an export folder changed after it was checked. Each must end in one clear
``SoatError`` line, before anything large is built.

Files that crashed CPython (a deeply nested pickle segfaults it) are loaded in a child process, so a
regression shows as a failed test, not a dead test run.
"""

from __future__ import annotations

import json
import os
import pickle
import shutil
import struct
import subprocess
import sys
import textwrap
import time
import zipfile

import pytest
import torch

import soat
from soat.runtime.checkpoint import LEGACY_MAGIC, MAX_PICKLE_DEPTH
from soat.runtime.config import GeneratorConfig
from soat.runtime.random_model import random_weights
from soat.runtime.sources import convert
from conftest import make_styles

TESTS = os.path.dirname(os.path.abspath(__file__))


def assert_one_line(excinfo) -> None:
    e = excinfo.value
    assert "\n" not in str(e) and len(str(e)) < 600
    assert e.__cause__ is None and (e.__context__ is None or e.__suppress_context__)


# ---- pickles that crash or hang the unpickler ----------------------------------------------------------

def deep_key_pickle(depth: int = 200_000) -> bytes:
    """``{((((),),),...): None}``: a dict key that is a tuple nested ``depth`` deep (~200 KB). Hashing it
    recurses in C and segfaults CPython, in ``pickle`` and in ``torch.load(weights_only=True)``."""
    return b"\x80\x02}" + b")" + b"\x85" * depth + b"N" + b"s" + b"."


def fan_out_pickle(levels: int = 60) -> bytes:
    """``{t_60: None}`` with ``t_k = (t_{k-1}, t_{k-1})`` through the memo: 1 KB, but hashing the key
    visits 2**60 tuples (the process hangs for ever)."""
    body = b")q\x00" + b"".join(b"h" + bytes([k - 1]) + b"h" + bytes([k - 1]) + b"\x86q" + bytes([k])
                                for k in range(1, levels + 1))
    return b"\x80\x02}" + body + b"N" + b"s" + b"."


def torch_zip(data_pkl: bytes) -> bytes:
    """A torch.save zip file whose ``archive/data.pkl`` is ``data_pkl``."""
    import io

    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr("archive/data.pkl", data_pkl)
        z.writestr("archive/byteorder", "little")
        z.writestr("archive/version", "3\n")
    return buf.getvalue()


def torch_legacy(obj_pkl: bytes) -> bytes:
    """torch.save's legacy format: magic, protocol and sys info pickles, then the object's pickle."""
    info = {"protocol_version": 1001, "little_endian": True, "type_sizes": {"short": 2, "int": 4, "long": 4}}
    return (pickle.dumps(0x1950A86A20F9469CFC6C, protocol=2) + pickle.dumps(1001, protocol=2)
            + pickle.dumps(info, protocol=2) + obj_pkl)


def storage_payload(inner: bytes) -> bytes:
    """An NVIDIA-style pickle whose tensor storage (``torch.storage._load_from_bytes``) is ``inner`` (after a
    popped 80-byte string, so that torch's legacy magic number is not in the file's first 64 bytes)."""
    return (b"\x80\x03X" + struct.pack("<I", 80) + b"p" * 80 + b"0"
            + b"ctorch.storage\n_load_from_bytes\nB" + struct.pack("<I", len(inner)) + inner + b"\x85R.")


def run_child(code: str, timeout: float = 240) -> list[str]:
    """Run ``code`` in a fresh interpreter (tests/ on the path); its stdout lines. Fails on a crash."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([TESTS, os.environ.get("PYTHONPATH", "")])}
    r = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True,
                       timeout=timeout, env=env)
    assert r.returncode == 0, f"child exited {r.returncode} (-11 is a segfault): {r.stderr[-2000:]}"
    return r.stdout.splitlines()


def test_nested_and_fanned_out_pickles_are_refused_before_unpickling(tmp_path):
    assert LEGACY_MAGIC in torch_legacy(b"N.")
    deep, fan = deep_key_pickle(), fan_out_pickle()
    files = {
        "nvidia.pkl": deep, "zip.pt": torch_zip(deep), "legacy.pt": torch_legacy(deep),
        "storage.pkl": storage_payload(torch_legacy(deep)), "fan.pkl": fan, "fan.pt": torch_zip(fan),
        "codes.pt": torch_zip(deep),
    }
    for name, data in files.items():
        (tmp_path / name).write_bytes(data)
    lines = run_child(f"""
        import os, soat
        from soat.runtime.codes import read_codes
        os.chdir({str(tmp_path)!r})
        for name in {sorted(files)!r}:
            try:
                read_codes(name) if name.startswith("codes") else soat.load(name)
                print(name, "LOADED")
            except soat.SoatError as e:
                print(name, "|", e)
        """, timeout=240)
    got = dict(line.split(" ", 1) for line in lines)
    assert sorted(got) == sorted(files)
    for name in files:
        if name.startswith("fan"):
            assert "more than 50000000 objects once its shared references are followed; refused" in got[name], got
        else:
            assert f"nested more than {MAX_PICKLE_DEPTH} levels deep; refused" in got[name], got
        assert "\n" not in got[name]
    assert got["storage.pkl"].startswith("| 'storage.pkl': a tensor storage")


def test_real_checkpoints_pass_the_structure_check(g8, tmp_path):
    """The bound is far above what checkpoints use: a training-style checkpoint with nested extras loads."""
    extras = {"args": {"a": [[[[1, 2]]]]}, "g_optim": {"state": {0: {"step": torch.tensor(3.0)}},
                                                         "param_groups": [{"betas": (0.0, 0.99)}]}}
    path = tmp_path / "ckpt.pt"
    torch.save({"g_ema": g8.backend.weights.state_dict(), **extras}, path)
    soat.load(str(path))
    torch.save({"g_ema": g8.backend.weights.state_dict()}, path, _use_new_zipfile_serialization=False)
    soat.load(str(path))


# ---- safetensors headers with absurd layout fields -------------------------------------------------------

@pytest.fixture(scope="module")
def st8(tmp_path_factory) -> str:
    path = str(tmp_path_factory.mktemp("st") / "m.safetensors")
    convert("random:3", path, 8, 1)
    return path


def rewrite_header(src: str, dst, **fields: str) -> str:
    from safetensors import safe_open
    from safetensors.torch import save_file

    with safe_open(src, framework="pt") as f:
        meta = {**f.metadata(), **fields}
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    save_file(tensors, str(dst), metadata=meta)
    return str(dst)


@pytest.mark.parametrize("fields, pattern", [
    ({"n_mlp": "100000000"}, r"n_mlp=100000000 is outside the range of a StyleGAN2 generator \(1 <= n_mlp <= 32\)"),
    ({"style_dim": "0"}, r"style_dim=0 is outside the range of a StyleGAN2 generator \(1 <= style_dim <= 4096\)"),
    ({"style_dim": "1000000000"}, r"style_dim=1000000000 is outside the range"),
    ({"size": "100"}, r"size=100 is not a StyleGAN2 resolution"),
    ({"size": "1048576"}, r"size=1048576 is not a StyleGAN2 resolution"),
    ({"lr_mlp": "nan"}, r"lr_mlp=nan is outside \(0, 1\]"),
    ({"n_mlp": "-3"}, r"n_mlp=-3 is outside"),
    ({"channel_multiplier": "64"}, r"channel_multiplier=64 is not supported"),
    ({"style_channels": "[" * 100_000}, r"the soat header is incomplete or malformed \(RecursionError"),
    ({"n_mlp": "9" * 5000}, r"the soat header is incomplete or malformed \(ValueError"),
])
def test_absurd_safetensors_header_is_refused_before_building(st8, tmp_path, fields, pattern):
    path = rewrite_header(st8, tmp_path / "bad.safetensors", **fields)
    start = time.perf_counter()
    with pytest.raises(soat.SoatError, match=pattern) as e:
        soat.load(path)
    assert time.perf_counter() - start < 5  # n_mlp=10^8 used to grow memory until the machine ran out
    assert_one_line(e)


def test_absurd_layout_in_a_torch_checkpoint(tmp_path):
    sd = dict(random_weights(GeneratorConfig(size=8, channel_multiplier=1), seed=1).state_dict())
    sd["style.1.weight"] = torch.zeros(0, 0)  # style_dim 0 (used to end in a ZeroDivisionError traceback)
    torch.save({"g_ema": sd}, tmp_path / "s0.pt")
    with pytest.raises(soat.SoatError, match=r"style_dim=0 is outside the range") as e:
        soat.load(str(tmp_path / "s0.pt"))
    assert_one_line(e)


# ---- NaN / inf weights -----------------------------------------------------------------------------------

def test_nan_weights_are_refused_by_every_loader(tmp_path):
    """Issue 18 #4: one NaN in a conv weight gave an all-NaN (all-black) image and exit 0."""
    weights = random_weights(GeneratorConfig(size=8, channel_multiplier=1), seed=2)
    with torch.no_grad():
        weights.convs[1].conv.weight.view(-1)[5] = float("nan")
        weights.to_rgb1.bias.view(-1)[0] = float("inf")
    torch.save({"g_ema": weights.state_dict()}, tmp_path / "nan.pt")
    with pytest.raises(soat.SoatError, match=r"tensor 'to_rgb1.bias' holds 1 NaN or inf value\(s\); the file is "
                                             r"corrupt") as e:
        soat.load(str(tmp_path / "nan.pt"))
    assert_one_line(e)
    with torch.no_grad():
        weights.to_rgb1.bias.zero_()
    from soat.runtime.safetensors_format import save_safetensors

    save_safetensors(weights, str(tmp_path / "nan.safetensors"), "x")
    with pytest.raises(soat.SoatError, match=r"tensor 'convs.1.conv.weight' holds 1 NaN or inf"):
        soat.load(str(tmp_path / "nan.safetensors"))
    import test_nvidia as nv

    with pytest.MonkeyPatch.context() as mp:
        nv.register_nvidia_modules(mp)
        pkl = nv.write_pickle(tmp_path / "nan.pkl", nv.nv_generator(weights))
    with pytest.raises(soat.SoatError, match=r"tensor 'convs.1.conv.weight' holds 1 NaN or inf"):
        soat.load(pkl)


# ---- files of the wrong kind -----------------------------------------------------------------------------

def test_state_dict_with_integer_keys(tmp_path):
    torch.save({"g_ema": {0: torch.zeros(1), 1: torch.zeros(2)}}, tmp_path / "ints.pt")
    with pytest.raises(soat.SoatError, match=r"'g_ema' has keys that are not names \(e.g. 0\)") as e:
        soat.load(str(tmp_path / "ints.pt"))
    assert_one_line(e)


@pytest.mark.parametrize("content", [b"hello world\nthis is text\n", b"nan", b"", b"{\"styles\": [1, 2]}"])
def test_codes_file_that_is_text(tmp_path, content):
    from soat.runtime.codes import read_codes

    (tmp_path / "codes.pt").write_bytes(content)
    with pytest.raises(soat.SoatError, match=r"cannot read .*codes.pt' as inversion codes") as e:
        read_codes(tmp_path / "codes.pt")
    assert_one_line(e)


# ---- export folders: an edited manifest, files changed after the check -----------------------------------

def _copy(folder: str, dst) -> str:
    shutil.copytree(folder, dst)
    return str(dst)


@pytest.mark.parametrize("source", [None, "x", [], {"name": "random:4"}, {"name": 3, "fingerprint": "f"},
                                    {"name": "n", "fingerprint": ["f"]}])
def test_edited_manifest_source(export8, tmp_path, source):
    folder = _copy(export8, tmp_path / "e")
    path = os.path.join(folder, "manifest.json")
    with open(path) as f:
        m = json.load(f)
    m["source"] = source
    with open(path, "w") as f:
        json.dump(m, f)
    with pytest.raises(soat.SoatError, match=r"source .* must be an object with string 'name' and 'fingerprint'; "
                                             r"the manifest was edited") as e:
        soat.load(folder, backend="onnxruntime")
    assert_one_line(e)


def test_onnx_sessions_come_from_the_hashed_bytes(export8, tmp_path):
    """Issue 18 #7: a graph file replaced after the folder was checked (another valid model) was used
    silently; sessions are now made from bytes checked against the manifest."""
    import numpy as np
    import onnx
    from onnx import numpy_helper

    folder = _copy(export8, tmp_path / "e")
    G = soat.load(folder, backend="onnxruntime")
    styles = make_styles(G, 1, seed=3)
    path = os.path.join(folder, "conv1.onnx")
    model = onnx.load(path)
    init = next(t for t in model.graph.initializer if numpy_helper.to_array(t).size > 100)
    init.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(init) * np.float32(1.5), init.name))
    onnx.save(model, path)  # a valid graph of another model, written after the load checked the folder
    with pytest.raises(soat.SoatError, match=r"graph 'conv1': .*conv1.onnx' no longer matches the sha256 it had when "
                                             r"the export was loaded") as e:
        G.generate(styles)
    assert_one_line(e)
    shutil.rmtree(folder)
    shutil.copytree(export8, folder)
    assert soat.load(folder, backend="onnxruntime").generate(styles).shape == (1, 3, 8, 8)


def test_onnx_graph_with_nan_weights(export8, tmp_path):
    """Issue 18 #4 for export folders: a NaN weight in a graph (hashes consistent) is refused, not run."""
    import hashlib

    import numpy as np
    import onnx
    from onnx import numpy_helper

    folder = _copy(export8, tmp_path / "e")
    path = os.path.join(folder, "convs.0.onnx")
    model = onnx.load(path)
    init = next(t for t in model.graph.initializer if numpy_helper.to_array(t).size > 100)
    values = numpy_helper.to_array(init).copy()
    values.flat[3] = np.nan
    init.CopyFrom(numpy_helper.from_array(values, init.name))
    onnx.save(model, path)
    manifest = os.path.join(folder, "manifest.json")
    with open(manifest) as f:
        m = json.load(f)
    with open(path, "rb") as f:
        m["graphs"]["convs.0"]["sha256"] = hashlib.sha256(f.read()).hexdigest()
    with open(manifest, "w") as f:
        json.dump(m, f)
    G = soat.load(folder, backend="onnxruntime")
    with pytest.raises(soat.SoatError, match=rf"graph 'convs.0' of export .*: weight {init.name!r} holds NaN or inf"):
        G.generate(make_styles(G, 1, seed=1))
