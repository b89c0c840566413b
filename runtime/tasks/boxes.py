"""Validation of user boxes ``(x, y, w, h)`` in output pixels."""

from __future__ import annotations

import numbers
from typing import Any

from ...errors import SoatError

Box = tuple[int, int, int, int]


def check_box(box: Any, name: str, width: int, height: int, clip: bool = False) -> Box:
    """An integer box with positive size inside ``width x height`` (``clip``: may run past the right/bottom edge)."""
    try:
        if any(isinstance(v, (bool, str, bytes)) or not isinstance(v, numbers.Real) for v in box):
            raise TypeError  # True is not a pixel, nor is "5"
        x, y, w, h = (int(v) for v in box)
        ok = all(float(v) == int(v) for v in box)
    except (TypeError, ValueError, OverflowError):
        raise SoatError(f"{name}={box!r} must be 4 integers (x, y, w, h) in output pixels") from None
    if not ok:
        raise SoatError(f"{name}={tuple(box)} must be whole pixels (x, y, w, h)")
    if w <= 0 or h <= 0:
        raise SoatError(f"{name}={(x, y, w, h)} has a zero or negative size; w and h must be >= 1")
    inside = x >= 0 and y >= 0 and (x < width and y < height if clip else x + w <= width and y + h <= height)
    if not inside:
        limit = "start inside" if clip else "lie inside"
        raise SoatError(f"{name}={(x, y, w, h)} leaves the image; boxes must {limit} the {width}x{height} output")
    return x, y, w, h


def box_list(boxes: Any, name: str) -> list:
    """One box or a list of boxes -> a list of boxes."""
    if isinstance(boxes, (list, tuple)) and boxes and all(isinstance(b, (list, tuple)) for b in boxes):
        return list(boxes)
    return [boxes]
