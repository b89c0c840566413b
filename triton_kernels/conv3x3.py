"""A 3x3 styled conv and its epilogue in one kernel: the conv output never reaches memory.

The fast path otherwise runs a styled conv as the shared-weight conv (cuDNN) followed by the
epilogue kernel (``conv_epilogue.py``), which reads the conv output back: a write and a read
of the whole map, and a launch, per layer. Here the conv is an implicit GEMM in Triton
(``conv3x3_kernel.py``): ``out[p, o] = sum_{tap, i} x_mod[p + tap, i] * weight[o, i, tap]``
over ``[pixels, output channels]`` tiles, accumulated in fp32, and the epilogue (demodulation,
noise, bias, leaky ReLU, the next conv's modulated input) is applied to the accumulator
before one rounding. Small maps split the GEMM's K dimension over several programs (their
output tiles alone would leave most of the card idle), with a second launch that sums the
fp32 partials in a fixed order and applies the epilogue.

Only the convs of stride 1 (not the upsampling layers, whose transposed conv and blur stay
with cuDNN and the epilogue kernel) and up to ``FUSED_CONV_MAX_BATCH`` samples take it: at
large batches cuDNN's convs are near the card's matmul rate and the fused form has to match
them (``bench/kernels.py --levers`` times both, ``bench/conv_tiles.py`` each layer's launch choices). The result equals the reference's up to the
order of the fp32 sums (fp32: rel err <= 1e-5), and rounds once where the reference rounds
the conv output too.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ._dispatch import env_batch_limit, kernels, use_triton
from .conv_epilogue import conv_epilogue_modulated

# the largest batch whose 3x3 styled convs take the fused kernel; larger batches keep cuDNN and the epilogue kernel.
# Off (0) until a GPU run shows where it beats them (bench/NOTES.md round 9; SOAT_FUSED_CONV_MAX_BATCH turns it on)
FUSED_CONV_MAX_BATCH = 0
FUSED_CONV_ENV = "SOAT_FUSED_CONV_MAX_BATCH"  # replaces it (0: never), e.g. to time both forms


def fused_conv_max_batch() -> int:
    """``FUSED_CONV_MAX_BATCH``, or the integer in ``SOAT_FUSED_CONV_MAX_BATCH``."""
    return env_batch_limit(FUSED_CONV_ENV, FUSED_CONV_MAX_BATCH, "whose 3x3 convs run fused with their epilogue")


def conv3x3_epilogue_ref(x_mod: torch.Tensor, weight: torch.Tensor, demod: torch.Tensor, noise: torch.Tensor,
                         noise_weight: torch.Tensor, bias: torch.Tensor, next_style: torch.Tensor | None,
                         write_x: bool) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """The ops the kernel replaces: the shared-weight conv (padding 1), then the epilogue's reference."""
    y = F.conv2d(x_mod, weight, padding=1)
    return conv_epilogue_modulated(y, demod, noise, noise_weight, bias, False, next_style, write_x, impl="ref")


def conv3x3_epilogue(x_mod: torch.Tensor, weight: torch.Tensor, demod: torch.Tensor, noise: torch.Tensor,
                     noise_weight: torch.Tensor, bias: torch.Tensor, next_style: torch.Tensor | None, write_x: bool,
                     impl: str = "auto") -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """A stride-1 3x3 styled conv from its modulated input, with its epilogue (module docstring).

    The runtime's own call (shapes come from the chain, so no user-facing checks here).

    Args:
        x_mod: the modulated input ``[B, I, H, W]`` (channels_last for coalesced loads).
        weight: the shared, scaled weight ``[O, I, 3, 3]`` (channels_last for coalesced loads).
        demod, noise, noise_weight, bias, next_style, write_x: as ``conv_epilogue.conv_epilogue_modulated``.
    Returns:
        ``(x or None, x_mod of the next conv or None)``, ``[B, O, H, W]`` in ``x_mod``'s layout and dtype.
    """
    if not write_x and next_style is None:
        raise ValueError("conv3x3_epilogue needs write_x or next_style: it would write nothing")
    if not use_triton(impl, x_mod, weight, demod, noise, noise_weight, bias, next_style):
        return conv3x3_epilogue_ref(x_mod, weight, demod, noise, noise_weight, bias, next_style, write_x)
    return kernels("conv3x3").conv3x3_epilogue(x_mod, weight, demod, noise, noise_weight, bias, next_style, write_x)
