"""Local edits: blend with a mask or boxes (attribute transfer) and patch swap.

The behaviour: docs/contract.md#local-blend and docs/contract.md#patch-swap.
"""

from __future__ import annotations

from functools import lru_cache
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F

from ...triton_kernels import ops as K
from ...errors import SoatError
from ..checks import SIGMA_INDEX, check_int
from ..cudagraph import is_capturing
from ..noise import NoiseArg, shared_noise
from .blend import check_pair, lerp_chain, style_pair
from .boxes import box_list, check_box

if TYPE_CHECKING:
    from ..generator import Generator

POSE_STYLES = 4  # pose alignment takes the first four sigma entries (2048 dims) from the source
SWAP_AFTER = "to_rgbs.1"  # patch swap edits the 16x16 block's output
SWAP_GRID = 16


def checked_mask(mask: Any, batch: int, G: Generator) -> torch.Tensor:
    """A task's mask (shape, dtype and values in [0, 1] checked) on G's device and dtype."""
    K.check_mask(mask, batch)
    # a little slack for float rounding (a blurred box peaks at 1 + 1 ulp)
    if not is_capturing() and (not torch.isfinite(mask).all() or mask.min() < -1e-6 or mask.max() > 1 + 1e-6):
        raise SoatError("mask values must be finite and inside [0, 1]")
    return mask.to(G.device, G.dtype)


def alpha_is_zero(style_index: int, pose_align: bool, num_blend: int) -> bool:
    """The reference's per-layer cut-off: blocks past ``num_blend``, and pose alignment's early layers."""
    if style_index == 0:
        return False
    if style_index == 1:
        return pose_align
    return style_index > num_blend or (pose_align and style_index < POSE_STYLES)


def blend_mask(G: Generator, styles1, styles2, mask, pose_align: bool = False, num_blend: int = 99,
               noise: NoiseArg = "fixed") -> torch.Tensor:
    """``[B, 3, R, R]``: at every layer ``lerp(out1, out2, mask resized to the layer)``."""
    s1, s2 = check_pair(G, styles1, styles2)
    num_blend = check_int(num_blend, "num_blend", 0, what=SIGMA_INDEX)
    m = checked_mask(mask, s1[0].shape[0], G)

    def combine(node, a, b):
        return K.mask_lerp(a, b, m, alpha_is_zero(node.style_index, pose_align, num_blend))

    rgb = lerp_chain(style_pair(G, s1, s2, G.noise_fn(noise)), G.chain[1:], combine, G.constant(s1))
    return rgb.clamp(-1, 1)


def gaussian_kernel1d(k: int, sigma: float) -> torch.Tensor:
    x = torch.arange(k, dtype=torch.float32) - k // 2
    g = torch.exp(-x.pow(2.0) / (2 * sigma ** 2))
    return g / g.sum()


def blur_box_mask(box: tuple[int, int, int, int], size: int) -> torch.Tensor:
    """The reference's box mask: 1 inside, separable Gaussian blur (kernel and sigma from the box), reflect pad."""
    x, y, w, h = box
    mask = torch.zeros([1, 1, size, size])
    mask[..., y:y + h, x:x + w] = 1
    k_h = h // 2 + (h // 2) % 2 + 1
    k_w = w // 2 + (w // 2) % 2 + 1
    mask = F.pad(mask, (k_w // 2, k_w // 2, k_h // 2, k_h // 2), mode="reflect")
    mask = F.conv2d(mask, gaussian_kernel1d(k_h, k_h).view(1, 1, k_h, 1))
    return F.conv2d(mask, gaussian_kernel1d(k_w, k_w).view(1, 1, 1, k_w))


def max_box_side(size: int) -> int:
    """The widest (or tallest) box whose blur fits: the reference reflect-pads the R x R mask by half its
    Gaussian kernel (about a quarter of the box), which must stay under R: at most ``4R - 3``."""
    return 4 * size - 3


def check_boxes(boxes: Any, size: int) -> tuple[tuple[int, int, int, int], ...]:
    """One box or several, each checked (may run past the right/bottom edge, must start inside, and be at
    most ``max_box_side`` wide and high)."""
    checked = tuple(check_box(b, "box", size, size, clip=True) for b in box_list(boxes, "box"))
    for box in checked:
        if max(box[2:]) > max_box_side(size):
            raise SoatError(f"box={box} is too large: its blurred mask needs w and h <= {max_box_side(size)} "
                            f"(4R - 3 at {size}px); a box covering the whole image is (0, 0, {size}, {size})")
    return checked


def union_mask(boxes: tuple[tuple[int, int, int, int], ...], size: int) -> torch.Tensor:
    """``[1, 1, R, R]``: the maximum of the checked boxes' blurred masks."""
    return torch.stack([blur_box_mask(b, size) for b in boxes]).amax(0)


def boxes_mask(boxes: Any, size: int) -> torch.Tensor:
    """``[1, 1, R, R]`` mask of one box or several (the maximum of their blurred masks)."""
    return union_mask(check_boxes(boxes, size), size)


@lru_cache(maxsize=64)
def _device_boxes_mask(boxes: tuple, size: int, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """``union_mask`` on the device, made once per boxes (no host-to-device copy per call or in a CUDA graph)."""
    return union_mask(boxes, size).to(device, dtype)


def blend_bbox(G: Generator, styles1, styles2, box, pose_align: bool = False, num_blend: int = 99,
               noise: NoiseArg = "fixed") -> torch.Tensor:
    """``blend_mask`` with the blurred mask of ``box`` ``(x, y, w, h)`` (or a list of boxes)."""
    boxes = check_boxes(box, G.size)
    return blend_mask(G, styles1, styles2, _device_boxes_mask(boxes, G.size, G.device, G.dtype), pose_align,
                      num_blend, noise)


def swap_regions(boxes: Any, size: int, swap: bool) -> list[tuple[int, int, int, int, int, int]]:
    """Box pair in output pixels -> region copies on the 16x16 map, as the reference scales them."""
    if not isinstance(boxes, (list, tuple)) or len(boxes) != 2:
        raise SoatError(f"boxes={boxes!r} must be two boxes ((x1, y1, w1, h1), (x2, y2, w2, h2))")
    scale = size // SWAP_GRID
    (x1, y1, w1, h1), (x2, y2, w2, h2) = (
        [v // scale for v in check_box(b, f"boxes[{i}]", size, size)] for i, b in enumerate(boxes))
    w, h = max(w1, w2), max(h1, h2)
    if w == 0 or h == 0:
        raise SoatError(f"boxes={[tuple(b) for b in boxes]}: on the 16x16 feature map both boxes cover no whole cell "
                        f"{'wide' if w == 0 else 'high'}; patch swap needs a box at least R/16 = {scale} px wide and "
                        f"high (at {size}px)")
    for name, (x, y) in (("boxes[0]", (x1, y1)), ("boxes[1]", (x2, y2))):
        if x + w > SWAP_GRID or y + h > SWAP_GRID:
            raise SoatError(f"{name}: on the 16x16 feature map the copied region ({w}x{h} cells at {x},{y}) runs past "
                            f"the edge, because the other box is larger; make the boxes the same size or move them inward")
    copies = [(y1, x1, y2, x2, h, w)]
    if swap:
        copies.append((y2, x2, y1, x1, h, w))
    return copies


def patch_swap(G: Generator, styles1, styles2, boxes, swap: bool = True, noise: NoiseArg = "fixed") -> torch.Tensor:
    """``[B, 3, R, R]``: chain 1 with 16x16 feature regions of chain 2 copied (and swapped) in."""
    if G.size < 2 * SWAP_GRID:
        raise SoatError(f"patch swap edits the 16x16 block before later layers; it needs a model of at least 32px "
                        f"(this one is {G.size}px)")
    s1, s2 = check_pair(G, styles1, styles2)
    copies = swap_regions(boxes, G.size, swap)
    noise_at = shared_noise(G.noise_fn(noise))
    cut = next(i for i, n in enumerate(G.chain) if n.id == SWAP_AFTER) + 1
    const = G.constant(s1)
    x1, rgb1 = G.run_chain(s1, noise_at, G.chain[1:cut], const)
    x2, _ = G.run_chain(s2, noise_at, G.chain[1:cut - 1], const)
    x1 = K.region_copy(x1, x2, copies)
    _, rgb = G.run_chain(s1, noise_at, G.chain[cut:], x1, rgb1)
    return rgb.clamp(-1, 1)
