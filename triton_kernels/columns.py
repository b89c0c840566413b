"""Column ops of the merge and panorama tasks.

``concat_w``: two maps side by side along W (the two conv1 outputs of ``merge``).
``place_columns``: ``out[..., c0:c0+n] = span[..., s0:s0+n]`` in place (panorama stitching).
"""

from __future__ import annotations

import torch

from ._dispatch import use_triton


def concat_w_ref(x1: torch.Tensor, x2: torch.Tensor) -> torch.Tensor:
    """``[B, C, H, W1]``, ``[B, C, H, W2]`` -> ``[B, C, H, W1 + W2]``."""
    return torch.cat([x1, x2], 3)


def concat_w(x1: torch.Tensor, x2: torch.Tensor, impl: str = "auto") -> torch.Tensor:
    use_triton(impl, x1, x2)
    return concat_w_ref(x1, x2)


def place_columns_ref(out: torch.Tensor, span: torch.Tensor, out_col: int, span_col: int, width: int) -> torch.Tensor:
    """Write ``span[..., span_col:span_col+width]`` into ``out[..., out_col:out_col+width]``; returns ``out``."""
    out[..., out_col:out_col + width] = span[..., span_col:span_col + width]
    return out


def place_columns(out: torch.Tensor, span: torch.Tensor, out_col: int, span_col: int, width: int,
                  impl: str = "auto") -> torch.Tensor:
    use_triton(impl, out, span)
    return place_columns_ref(out, span, out_col, span_col, width)
