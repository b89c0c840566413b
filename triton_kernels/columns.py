"""Column ops of the merge and panorama tasks.

``concat_w``: two maps side by side along W (the two conv1 outputs of ``merge``).
``place_columns``: ``out[..., c0:c0+n] = span[..., s0:s0+n]`` in place (panorama stitching).

Both kernels (``columns_kernel.py``) are copies (outputs equal the reference bit for bit):
``concat_w`` reads each output column from one of its two inputs in one launch;
``place_columns`` copies the column range through strided views, so the span is never
gathered into a temporary.
"""

from __future__ import annotations

import torch

from ..errors import SoatError
from ._dispatch import check_int, check_maps, kernels, use_triton
from ._tiles import is_dense_map


def concat_w_ref(x1: torch.Tensor, x2: torch.Tensor) -> torch.Tensor:
    """``[B, C, H, W1]``, ``[B, C, H, W2]`` -> ``[B, C, H, W1 + W2]``."""
    return torch.cat([x1, x2], 3)


def concat_w(x1: torch.Tensor, x2: torch.Tensor, impl: str = "auto") -> torch.Tensor:
    """Concatenate along W; Triton on CUDA, the reference elsewhere.

    Args:
        x1: ``[B, C, H, W1]``; x2: ``[B, C, H, W2]`` (any strides).
    Returns:
        ``[B, C, H, W1 + W2]`` in ``x1``'s layout (NCHW or channels_last).
    """
    check_maps({"x1": x1, "x2": x2}, same="BCH")
    if not use_triton(impl, x1, x2):
        return concat_w_ref(x1, x2)
    return kernels("columns").concat_w(x1, x2)


def place_columns_ref(out: torch.Tensor, span: torch.Tensor, out_col: int, span_col: int, width: int) -> torch.Tensor:
    """Write ``span[..., span_col:span_col+width]`` into ``out[..., out_col:out_col+width]``; returns ``out``."""
    out[..., out_col:out_col + width] = span[..., span_col:span_col + width]
    return out


def place_columns(out: torch.Tensor, span: torch.Tensor, out_col: int, span_col: int, width: int,
                  impl: str = "auto") -> torch.Tensor:
    """Column placement in place; Triton on CUDA, the reference elsewhere.

    Args:
        out: ``[B, C, H, Wo]`` destination, contiguous NCHW or channels_last; written in place.
        span: ``[B, C, H, Ws]`` source (any strides, e.g. a column slice), not sharing memory with ``out``.
        out_col, span_col, width: the column ranges ``[out_col, out_col + width)`` and
            ``[span_col, span_col + width)``, inside their maps.
    Returns:
        ``out``.
    """
    check_maps({"out": out, "span": span}, same="BCH")
    width = check_int(width, "width", 0, min(out.shape[3], span.shape[3]))
    out_col = check_int(out_col, "out_col", 0, out.shape[3] - width)
    span_col = check_int(span_col, "span_col", 0, span.shape[3] - width)
    if not is_dense_map(out):
        raise SoatError(f"out has strides {out.stride()}; it must be contiguous NCHW or channels_last")
    if out.untyped_storage().data_ptr() == span.untyped_storage().data_ptr():
        raise SoatError("span shares memory with out; place columns from a separate tensor")
    if not use_triton(impl, out, span):
        return place_columns_ref(out, span, out_col, span_col, width)
    return kernels("columns").place_columns(out, span, out_col, span_col, width)
