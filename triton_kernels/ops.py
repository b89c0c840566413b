"""The feature ops the tasks call between layers, each dispatching to its Triton kernel or torch reference."""

from .columns import concat_w, place_columns
from .mask_lerp import check_mask, mask_lerp, resize_mask
from .ramp_lerp import ramp, ramp_lerp
from .region_copy import region_copy
from .shift_lerp import shift_lerp
from .widen import MODES as WIDEN_MODES, widen

__all__ = ["check_mask", "concat_w", "place_columns", "mask_lerp", "resize_mask", "ramp", "ramp_lerp",
           "region_copy", "shift_lerp", "widen", "WIDEN_MODES"]
