"""The torch backend's fast form (shared-weight convs, fused epilogues, modulation fused across
layers in ``run_chain``) against the reference form, on random styles and noise.

fp32 on the CPU: rel err <= 1e-5 for every task (the fused ops run their torch references
there). With ``SOAT_FEATURE_OPS=triton`` under the Triton interpreter the same fast form runs
its kernels (epilogue, blur, modulation, demodulation) and must equal the reference ops to
rel err <= 1e-6 (an 8 px model keeps the interpreter quick).
"""

import os

os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402
import torch  # noqa: E402

import soat  # noqa: E402
from conftest import make_styles, rel_err  # noqa: E402

TASKS = {
    "generate": lambda G, a, b: G.generate(a),
    "generate_explicit_noise": lambda G, a, b: G.generate(a, noise=[
        torch.randn(n.shape, generator=torch.Generator().manual_seed(k)) for k, n in enumerate(G.fixed_noise)]),
    "blend": lambda G, a, b: G.blend(a, b),
    "merge_extension": lambda G, a, b: G.merge_extension(a, b),
    "expand": lambda G, a, b: G.expand(a, "reflect", noise="fixed"),
    "blend_bbox": lambda G, a, b: G.blend_bbox(a, b, (4, 6, 20, 12)),
    "patch_swap": lambda G, a, b: G.patch_swap(a, b, ((0, 0, 16, 16), (16, 16, 16, 16))),
    "shift": lambda G, a, b: G.shift(a, (0, 0, 8, 8), [(16, 0)], layers=(8, 16), strength=0.8),
}


@pytest.fixture(scope="module")
def pair():
    return (soat.load("random:21", size=32, channel_multiplier=1),
            soat.load("random:21", size=32, channel_multiplier=1, fast=True))


@pytest.mark.parametrize("task", list(TASKS))
def test_fast_form_equals_reference_form(pair, task):
    ref_g, fast_g = pair
    a, b = make_styles(ref_g, 2, seed=1), make_styles(ref_g, 2, seed=2)
    assert rel_err(TASKS[task](fast_g, a, b), TASKS[task](ref_g, a, b)) <= 1e-5


@pytest.mark.parametrize("task", ["generate", "expand", "blend"])
def test_fast_form_kernels_equal_their_references(task, monkeypatch):
    pytest.importorskip("triton", reason="needs the triton package (pip install 'soat[test]')")
    G = soat.load("random:22", size=8, channel_multiplier=1, fast=True)
    a, b = make_styles(G, 2, seed=3), make_styles(G, 2, seed=4)
    monkeypatch.setenv("SOAT_FEATURE_OPS", "ref")
    ref = TASKS[task](G, a, b)
    monkeypatch.setenv("SOAT_FEATURE_OPS", "triton")
    assert rel_err(TASKS[task](G, a, b), ref) <= 1e-6
