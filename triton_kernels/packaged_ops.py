"""The fast path's layer kernels as ``torch.library.triton_op``s, for the graphs compiled into AOTI packages.

``torch.export`` keeps each op as one node (``torch.ops.soat.conv_epilogue``); Inductor then traces
its body, where ``wrap_triton`` exposes the kernel launch, and compiles the kernel into the package
beside its own code. A package built from these ops runs them with neither Python nor this
package installed (``soat export --format aoti --device cuda`` compiles the fused graph modules of
``runtime/fused_graph_modules.py``). Eager calls launch the kernels directly (under ``TRITON_INTERPRET=1`` on CPU tensors, how CI
checks them against the references).

The ops take what the exported graphs give them, with no dispatch between kernel and reference
(the references are the plain graph modules themselves). The epilogue comes in the three forms
the graphs need: ``x`` (a node's graph, the last conv's linked graph), the next conv's modulated
input only (an upsampling conv's linked graph), and both (a 3x3 conv's, whose ``x`` a ToRGB reads). Launch
geometry may not depend on a symbolic size (``_tiles.tile_shape``), so that one package serves every
batch, height and width.

Importing this module imports Triton and registers the ops (once per process).
"""

from typing import Optional, Tuple

import torch
from torch.library import triton_op, wrap_triton

from . import conv_epilogue_kernel, demod_kernel, modulate_kernel, to_rgb_kernel


@triton_op("soat::modulate", mutates_args=())
def modulate(x: torch.Tensor, style: torch.Tensor) -> torch.Tensor:
    """``x [B, C, H, W] * style [B, C]`` per channel, in ``x``'s layout."""
    return modulate_kernel.modulate(x, style, wrap=wrap_triton)


@triton_op("soat::demod", mutates_args=())
def demod(style: torch.Tensor, weight_sq: torch.Tensor) -> torch.Tensor:
    """``[B, O]`` demodulation factors from ``style [B, I]`` and ``weight_sq [I, O]``."""
    return demod_kernel.demod(style, weight_sq, wrap=wrap_triton)


@triton_op("soat::conv_epilogue", mutates_args=())
def conv_epilogue(y: torch.Tensor, demod: torch.Tensor, noise: torch.Tensor, noise_weight: torch.Tensor,
                  bias: torch.Tensor, up: bool) -> torch.Tensor:
    """The styled conv's epilogue (``conv_epilogue.py``): blur when ``up``, demodulation, noise, bias,
    leaky ReLU; ``[B, C, H, W]`` in ``y``'s layout."""
    x, _ = conv_epilogue_kernel.conv_epilogue_modulated(y, demod, noise, noise_weight, bias, up, None, True,
                                                        wrap=wrap_triton)
    return x


@triton_op("soat::conv_epilogue_next", mutates_args=())
def conv_epilogue_next(y: torch.Tensor, demod: torch.Tensor, noise: torch.Tensor, noise_weight: torch.Tensor,
                       bias: torch.Tensor, up: bool, next_style: torch.Tensor) -> torch.Tensor:
    """``conv_epilogue`` writing only the next conv's modulated input ``x * next_style``."""
    _, x_mod = conv_epilogue_kernel.conv_epilogue_modulated(y, demod, noise, noise_weight, bias, up, next_style,
                                                            False, wrap=wrap_triton)
    return x_mod


@triton_op("soat::conv_epilogue_both", mutates_args=())
def conv_epilogue_both(y: torch.Tensor, demod: torch.Tensor, noise: torch.Tensor, noise_weight: torch.Tensor,
                       bias: torch.Tensor, up: bool, next_style: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """``conv_epilogue`` writing ``x`` and the next conv's modulated input ``x * next_style``."""
    return conv_epilogue_kernel.conv_epilogue_modulated(y, demod, noise, noise_weight, bias, up, next_style, True,
                                                        wrap=wrap_triton)


@triton_op("soat::to_rgb", mutates_args=())
def to_rgb(x: torch.Tensor, style: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor,
           skip: Optional[torch.Tensor]) -> torch.Tensor:
    """ToRGB (``to_rgb.py``): the modulated 1x1 conv with ``weight [3, I]``, bias, the upsampled skip."""
    return to_rgb_kernel.to_rgb(x, style, weight, bias, skip, wrap=wrap_triton)
