"""The argument checks that the Python API, the command line (``soat/options.py``) and the server's options
(``serve/replica.py``) share, so that each refuses the same values with the same words.

Every check raises ``SoatError`` with one line that names the argument and the value (``NAME=VALUE must
be ...``; the command line shows the text typed after argparse's ``argument --FLAG:``). Numbers are
numbers: ``True``, ``"0.7"`` and ``None`` are not; NaN and inf are not finite; an integer argument takes
no float, not even ``64.0``.
"""

from __future__ import annotations

import math
import numbers
import operator
import os
import re
from typing import Any

import torch

from ..errors import SoatError

MAX_SEED = 2 ** 32 - 1  # NumPy's RandomState (the panorama sampler, NVIDIA's scripts) takes seeds below 2**32
RANDOM_SOURCE = re.compile(r"^random(?::([0-9]+))?$")
# a mistyped random model (Random:3, random-3, random3, random:abc); not a file name such as random.pt or randomly
_RANDOM_LIKE = re.compile(r"^random(?:[^a-z/.\\].*)?$", re.IGNORECASE)
SIGMA_INDEX = "an integer sigma index"  # what num_blend (--num-blend) is


def _label(name: str, value: Any, shown: str | None) -> str:
    text = shown if shown is not None else f"{name}={value!r}"
    return text if len(text) <= 80 else f"{text[:60]}...({len(text)} characters)"


def spelled(name: str, value: str) -> str:
    """An option set to ``value`` as the caller writes it: ``--backend aoti`` where ``name`` is a command-line
    flag, ``backend='aoti'`` in Python."""
    return f"{name} {value}" if name.startswith("--") else f"{name}={value!r}"


def _bounds(lo, hi) -> str:
    if lo is not None and hi is not None:
        return f" from {lo} to {hi}"
    return f" >= {lo}" if lo is not None else f" <= {hi}" if hi is not None else ""


def _as_int(value: Any) -> int | None:
    """``value`` as an ``int`` if it is an integer (Python, NumPy), else None (bools, floats, strings)."""
    if isinstance(value, bool):
        return None
    try:
        return operator.index(value)
    except TypeError:
        return None


def check_int(value: Any, name: str, lo: int | None = None, hi: int | None = None, what: str = "an integer",
              shown: str | None = None) -> int:
    """``value`` as an ``int`` in ``[lo, hi]`` (open ends: None): ``"NAME=VALUE must be WHAT from LO to HI"``.
    Python and NumPy integers pass; bools, floats (even whole ones) and strings do not."""
    v = _as_int(value)
    if v is None or (lo is not None and v < lo) or (hi is not None and v > hi):
        raise SoatError(f"{_label(name, value, shown)} must be {what}{_bounds(lo, hi)}")
    return v


def check_float(value: Any, name: str, lo: float | None = None, hi: float | None = None,
                shown: str | None = None) -> float:
    """``value`` as a finite ``float`` in ``[lo, hi]``: ``"NAME=VALUE must be a finite number"``, or ``"must be
    in [LO, HI]"`` / ``"must be >= LO"`` for a finite number out of range. Bools and strings are not numbers."""
    label = _label(name, value, shown)
    try:
        v = float(value) if isinstance(value, numbers.Real) and not isinstance(value, bool) else math.nan
    except OverflowError:  # an int beyond float's range
        v = math.nan
    if not math.isfinite(v):
        where = f" in [{lo}, {hi}]" if lo is not None and hi is not None else _bounds(lo, hi)
        raise SoatError(f"{label} must be a finite number{where}")
    if (lo is not None and v < lo) or (hi is not None and v > hi):
        where = f"in [{lo}, {hi}]" if lo is not None and hi is not None else _bounds(lo, hi).strip()
        raise SoatError(f"{label} must be {where}")
    return v


def check_truncation(value: Any, name: str = "truncation", shown: str | None = None) -> float:
    """Truncation psi: any finite number (1 = none, 0 = the mean style, > 1 extrapolates)."""
    return check_float(value, name, shown=shown)


def check_seed(value: Any, name: str = "seed", hi: int = MAX_SEED, shown: str | None = None) -> int:
    """A seed: an integer from 0 to ``hi`` (``MAX_SEED``, what NumPy's RandomState takes, unless said)."""
    label = _label(name, value, shown)
    v = _as_int(value)
    if v is None:
        raise SoatError(f"{label} is not a seed; seeds are integers from 0 to {hi}")
    if v < 0 or v > hi:
        raise SoatError(f"{label} is {'negative' if v < 0 else 'too large'}; seeds run from 0 to {hi}")
    return v


def random_seed(source: str, name: str = "source") -> int | None:
    """The seed of ``random[:SEED]`` (0 for ``random``), None for any other source. Something written like the
    random model (``Random:3``, ``random-3``, ``random:abc``) that is not a file is refused with the right form."""
    m = RANDOM_SOURCE.match(source)
    if m is None:
        if _RANDOM_LIKE.match(source) and not os.path.exists(source):
            raise SoatError(f"{name}={source!r} is neither a file nor the random model, which is written random or "
                            f"random:SEED (SEED an integer from 0 to {MAX_SEED}, e.g. random:3)")
        return None
    digits = m.group(1) or "0"
    if len(digits) > len(str(MAX_SEED)) or int(digits) > MAX_SEED:
        raise SoatError(f"{name}={source!r}: the seed of the random model runs from 0 to {MAX_SEED}")
    return int(digits)


def check_source(source: Any, name: str = "source") -> str:
    """A model source as a string: a path (``os.PathLike`` too), a registry name, a URL or ``random[:SEED]``."""
    if isinstance(source, os.PathLike):
        source = os.fspath(source)
    if not isinstance(source, str) or not source:
        raise SoatError(f"{name}={source!r} is not a model; give a checkpoint or export folder path, a registry "
                        "name (soat models), an https:// URL or random[:SEED]")
    random_seed(source, name)
    return source


def check_device(device: Any, name: str = "device", here: bool = True, shown: str | None = None) -> torch.device:
    """``cpu``, ``cuda`` or ``cuda:N`` as a ``torch.device``; with ``here``, CUDA only where this machine has
    that GPU (the server's replicas may run on other machines: they check where they load)."""
    label = _label(name, device, shown)
    try:
        dev = None if isinstance(device, bool) else torch.device(device)
    except (RuntimeError, TypeError, ValueError):
        dev = None
    if dev is None or dev.type not in ("cpu", "cuda"):
        raise SoatError(f"{label} is not a device; use cpu, cuda or cuda:N")
    if here and dev.type == "cuda":
        if not torch.cuda.is_available():
            raise SoatError(f"{label}: no CUDA GPU is available here; use cpu")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise SoatError(f"{label}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    return dev


def check_images(images: Any, name: str = "images") -> torch.Tensor:
    """Images as the tasks return them: a floating tensor ``[B, 3, H, W]`` in [-1, 1]; ``[3, H, W]`` is one
    image (returned as ``[1, 3, H, W]``). Other channel counts, integer tensors (uint8 pixels) and empty
    images are refused."""
    want = "a float tensor [B, 3, H, W] (or [3, H, W]) in [-1, 1], as the tasks return"
    if not isinstance(images, torch.Tensor):
        raise SoatError(f"{name} must be {want}; got {type(images).__name__}")
    if images.ndim == 3:
        images = images.unsqueeze(0)
    if images.ndim != 4:
        raise SoatError(f"{name} must be {want}; got shape {list(images.shape)}")
    if images.shape[1] != 3:
        raise SoatError(f"{name} must have 3 channels (RGB), {want}; got {images.shape[1]} channel"
                        f"{'s' if images.shape[1] != 1 else ''} (shape {list(images.shape)})")
    if not images.is_floating_point():
        raise SoatError(f"{name} must be {want}; got dtype {str(images.dtype).replace('torch.', '')} (uint8 "
                        "pixels 0..255 are images.float() / 127.5 - 1)")
    if images.numel() == 0:
        raise SoatError(f"{name} has no pixels (shape {list(images.shape)})")
    return images
