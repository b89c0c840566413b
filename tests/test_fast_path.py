"""The fast backend (shared-weight convs, fused epilogues, modulation fused across
layers in ``run_chain``) against the torch backend (reference form), on random styles and noise.

fp32 on the CPU: rel err <= 1e-5 for every task (the fused ops run their torch references
there). With ``SOAT_FEATURE_OPS=triton`` under the Triton interpreter the same fast form runs
its kernels (epilogue, blur, modulation, demodulation) and must equal the reference ops to
rel err <= 1e-6 (an 8 px model keeps the interpreter quick).
"""

import pytest
import torch

import soat
from soat.runtime.inversion import sigma_prior
from soat.runtime.tasks.blend import PAIRED_ENV
from conftest import DEVICE, make_styles, rel_err, tiered

MASK = torch.rand(1, 1, 32, 32, generator=torch.Generator().manual_seed(3))

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
    "blend_vertical": lambda G, a, b: G.blend(a, b, "vertical"),
    "merge": lambda G, a, b: G.merge(a, b),
    "blend_mask": lambda G, a, b: G.blend_mask(a, b, MASK, pose_align=True, num_blend=6),
    "translate": lambda G, a, b: soat.translate(G, G, a, b, num_swap=4, alpha=MASK),
    "panorama": lambda G, a, b: G.panorama([a, b]),  # one merge_extension span, stitched
}


@pytest.fixture(scope="module")
def pair():
    return (soat.load("random:21", size=32, channel_multiplier=1),
            soat.load("random:21", size=32, channel_multiplier=1, backend="fast"))


@pytest.mark.parametrize("task", list(TASKS))
def test_fast_form_equals_reference_form(pair, task):
    ref_g, fast_g = pair
    a, b = make_styles(ref_g, 2, seed=1), make_styles(ref_g, 2, seed=2)
    assert rel_err(TASKS[task](fast_g, a, b), TASKS[task](ref_g, a, b)) <= 1e-5


def test_separate_runs_equal_paired_runs(pair, monkeypatch):
    """Blend-type tasks run both style lists as one batch of 2B where SOAT_PAIRED_MAX_BATCH is at least B, as two
    runs otherwise (the default): the same image to rel err <= 1e-5 (the convs' sums may group differently by
    batch); a setting that is no integer is named."""
    _, fast_g = pair
    a, b = make_styles(fast_g, 2, seed=1), make_styles(fast_g, 2, seed=2)
    separate = fast_g.blend_bbox(a, b, (4, 6, 20, 12))
    monkeypatch.setenv(PAIRED_ENV, "2")
    assert rel_err(fast_g.blend_bbox(a, b, (4, 6, 20, 12)), separate) <= 1e-5
    monkeypatch.setenv(PAIRED_ENV, "two")
    with pytest.raises(soat.SoatError, match=PAIRED_ENV):
        fast_g.blend(a, b)


@pytest.mark.parametrize("task", tiered(["generate", "expand", "blend"], "expand", "blend"))
def test_fast_form_kernels_equal_their_references(task, monkeypatch, exact_fp32):
    pytest.importorskip("triton", reason="needs the triton package (pip install 'soat[test]')")
    G = soat.load("random:22", size=8, channel_multiplier=1, backend="fast", device=DEVICE)
    a, b = make_styles(G, 2, seed=3), make_styles(G, 2, seed=4)
    monkeypatch.setenv("SOAT_FEATURE_OPS", "ref")
    ref = TASKS[task](G, a, b)
    monkeypatch.setenv("SOAT_FEATURE_OPS", "triton")
    assert rel_err(TASKS[task](G, a, b), ref) <= 1e-6


# ---- gradients: the fast backend is differentiable (its kernels yield to their references) ----------------

def _image_grad(G, styles: list[torch.Tensor], target: torch.Tensor, inside: torch.Tensor,
                task: str) -> list[torch.Tensor]:
    """Gradients of an image loss over the pixels ``inside`` the output clamp (where the clamp's
    gradient is 1 for both backends: a pixel at +-1 could fall on either side of it)."""
    leaves = [s.clone().requires_grad_(True) for s in styles]
    out = TASKS[task](G, leaves, [s.detach() for s in styles])
    ((out - target) * inside).square().mean().backward()
    return [s.grad for s in leaves]


@pytest.mark.parametrize("ops", ["auto", pytest.param("triton", marks=pytest.mark.skipif(
    DEVICE != "cpu", reason="the CPU pair runs Triton ops only in the interpreter (CUDA: test_task_graphs)"))])
@pytest.mark.parametrize("task", tiered(["generate", "blend", "expand"], "blend", "expand"))
def test_fast_backend_gradients_equal_the_reference(pair, task, ops, monkeypatch):
    """With the Triton ops requested (interpreter on the CPU) and styles that require grad, every
    kernel runs its torch reference, so the gradients are the torch backend's: rel err <= 2e-3.

    Not 1e-5, though the images agree to ~2e-6: the two arithmetic orders round differently, and
    a pre-activation within ~1e-7 of zero then falls on the other side of a leaky ReLU's kink (one
    such value in a 2 x 512 x 8 x 16 layer moves that layer's gradient by ~3e-3; measured here:
    6e-6 to 4e-4 per sigma entry, while a dropped gradient would give 1)."""
    ref_g, fast_g = pair
    monkeypatch.setenv("SOAT_FEATURE_OPS", ops)
    styles = make_styles(ref_g, 2, seed=5)
    reference = TASKS[task](ref_g, styles, styles)
    target = torch.rand(reference.shape, generator=torch.Generator().manual_seed(6)) * 2 - 1
    inside = reference.abs() < 0.99
    got = _image_grad(fast_g, styles, target, inside, task)
    want = _image_grad(ref_g, styles, target, inside, task)
    assert all(g is not None and g.abs().max() > 0 for g in got)
    assert rel_err(torch.cat(got, 1), torch.cat(want, 1)) <= 2e-3


def test_explicit_triton_kernel_refuses_inputs_that_need_grad():
    from soat.triton_kernels.modulate import modulate
    x, style = torch.rand(1, 4, 3, 3, device=DEVICE), torch.rand(1, 4, device=DEVICE, requires_grad=True)
    with pytest.raises(soat.SoatError, match="no backward pass"):
        modulate(x, style, impl="triton")
    with torch.no_grad():  # no gradients asked for: the kernel runs
        assert modulate(x, style, impl="triton").shape == x.shape


@pytest.mark.full
def test_inversion_on_the_fast_backend_matches_the_torch_backend(pair):
    """Inversion needs gradients: on the fast backend it fits as on the torch backend (same codes to
    rel err <= 1e-4 after a few Adam steps on a 32 px model)."""
    ref_g, fast_g = pair
    target = ref_g.generate(make_styles(ref_g, 1, seed=9)).detach()
    codes = [G.invert(target, steps=6, lpips=False) for G in (fast_g, ref_g)]
    assert rel_err(codes[0], codes[1]) <= 1e-4
    start = sigma_prior(fast_g).mean  # where inversion starts: the codes moved, so gradients arrived
    assert (codes[0] - start).abs().max() > 1e-3
