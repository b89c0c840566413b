"""Every task with its feature ops run by the Triton kernels (compiled on a GPU, the interpreter on
the CPU) equals the same task with the torch reference ops: the kernels as the tasks call them,
shapes and strides included. fp32 (TF32 off on a GPU), rel err <= 1e-6 (the kernels are checked op
by op in test_kernels.py)."""

import pytest
import torch

pytest.importorskip("triton", reason="needs the triton package (pip install 'soat[test]')")

import soat  # noqa: E402
from conftest import DEVICE, make_styles, rel_err, tiered  # noqa: E402

MASK = torch.rand(1, 1, 16, 16, generator=torch.Generator().manual_seed(3)).to(DEVICE)

# 16 px models keep the interpreter quick; patch swap needs 32 px
TASKS = {
    "blend_vertical": lambda G, a, b: G.blend(a, b, "vertical"),
    "merge_extension": lambda G, a, b: G.merge_extension(a, b),
    "merge": lambda G, a, b: G.merge(a, b),
    "panorama": lambda G, a, b: G.panorama([a, b, a]),
    "expand_reflect": lambda G, a, b: G.expand(a, "reflect", noise="fixed"),
    "expand_vertical": lambda G, a, b: G.expand(a, "vertical", noise="fixed"),
    "blend_bbox": lambda G, a, b: G.blend_bbox(a, b, (2, 3, 10, 6), pose_align=True, num_blend=6),
    "shift": lambda G, a, b: G.shift(a, (0, 0, 4, 4), [(8, 0), (4, 8)], layers=(8, 16), strength=0.8),
    "translate_mask": lambda G, a, b: soat.translate(G, G, a, b, num_swap=4, alpha=MASK),
    "patch_swap": lambda G, a, b: G.patch_swap(a, b, ((0, 0, 16, 8), (8, 16, 16, 16))),
}


pytestmark = pytest.mark.usefixtures("exact_fp32")  # true fp32 convs on CUDA (conftest)


@pytest.fixture(scope="module")
def models():
    """16 and 32 px models on the kernels' device (the Triton kernels need CUDA tensors there)."""
    return {size: soat.load(f"random:{size}", size=size, channel_multiplier=1, device=DEVICE) for size in (16, 32)}


@pytest.mark.parametrize("task", tiered(TASKS, "merge_extension", "merge", "panorama", "blend_bbox", "translate_mask"))
def test_task_with_triton_ops_equals_reference_ops(models, task, monkeypatch):
    G = models[32 if task == "patch_swap" else 16]
    a, b = make_styles(G, 2, seed=7), make_styles(G, 2, seed=8)
    monkeypatch.setenv("SOAT_FEATURE_OPS", "ref")
    ref = TASKS[task](G, a, b)
    monkeypatch.setenv("SOAT_FEATURE_OPS", "triton")
    out = TASKS[task](G, a, b)
    assert out.shape == ref.shape
    assert rel_err(out, ref) <= 1e-6


def test_unknown_feature_ops_setting_is_named(g16, monkeypatch):
    monkeypatch.setenv("SOAT_FEATURE_OPS", "fast")
    with pytest.raises(soat.SoatError, match="SOAT_FEATURE_OPS"):
        g16.blend(make_styles(g16, 1, seed=1), make_styles(g16, 1, seed=2))
