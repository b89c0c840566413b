"""Feature ops between engine calls: Triton kernels on CUDA, torch references elsewhere.

Each op's module holds its kernel, its torch reference and its wrapper. The torch
backend's fast form also runs the layer kernels here (``conv_epilogue``, ``modulate``,
``demod``, ``rgb_skip``); those are runtime-internal and not re-exported.
"""

from .columns import concat_w, place_columns
from .mask_lerp import mask_lerp, resize_mask
from .ramp_lerp import ramp, ramp_lerp
from .region_copy import region_copy
from .shift_lerp import shift_lerp
from .widen import MODES as WIDEN_MODES, widen

__all__ = ["concat_w", "place_columns", "mask_lerp", "resize_mask", "ramp", "ramp_lerp", "region_copy",
           "shift_lerp", "widen", "WIDEN_MODES"]
