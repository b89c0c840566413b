"""The argument types and output checks every ``soat`` command shares (soat/cli.py, invert_cli.py,
the bench and the export commands import them from here).

Every check here runs before a model is loaded or anything is computed, and reports a user
mistake as ``SoatError`` / ``argparse.ArgumentTypeError`` (one line, exit status 2).
"""

from __future__ import annotations

import argparse
import math
import os
import re
from typing import Iterable, Iterator

import torch

from .errors import SoatError
from .runtime.config import SUPPORTED_SIZES
from .runtime.capabilities import BACKEND_CHOICES as BACKENDS
from .runtime.registry import REGISTRY, entry_for, is_remote

MAX_SEED = 2 ** 32 - 1  # NumPy's RandomState (the panorama sampler, NVIDIA's scripts) takes seeds below 2**32
DTYPE_CHOICES = ("fp32", "fp16", "bf16")
CHECKPOINT_HELP = ("model: a registry name (" + ", ".join(REGISTRY) + "; downloaded once), an https:// URL, "
                   "a rosinality/SOAT .pt, an NVIDIA .pkl, a soat .safetensors, an export folder, "
                   "or random[:SEED] for the embedded random-weights model")
_RANDOM = re.compile(r"^random(?::(\d+))?$")
_SEED_PART = re.compile(r"^(\d+)(?:-(\d+))?$")


# ---- argument types ----------------------------------------------------------------------------
class Seeds:
    """Seeds written as ``0-7,9``: kept as ranges, counted and iterated without building a list."""

    def __init__(self, ranges: list[tuple[int, int]], text: str) -> None:
        self.ranges, self.text = ranges, text

    def __len__(self) -> int:
        return sum(hi - lo + 1 for lo, hi in self.ranges)

    def __iter__(self) -> Iterator[int]:
        for lo, hi in self.ranges:
            yield from range(lo, hi + 1)

    def __eq__(self, other: object) -> bool:
        return list(self) == list(other) if isinstance(other, (list, Seeds)) else NotImplemented

    def __repr__(self) -> str:
        return f"Seeds({self.text!r})"


def parse_seeds(text: str) -> Seeds:
    """``"0-3,7"`` -> seeds 0, 1, 2, 3, 7. Seeds are integers 0 to 2**32 - 1; ranges run upwards."""
    ranges = []
    for part in text.split(","):
        m = _SEED_PART.match(part.strip())
        if not m:
            raise SoatError(f"{part!r} is not a seed; write integers and ranges like 0-7,9")
        lo = int(m.group(1))
        hi = int(m.group(2)) if m.group(2) is not None else lo
        if hi > MAX_SEED:
            raise SoatError(f"{hi} is too large; seeds run from 0 to {MAX_SEED}")
        if hi < lo:
            raise SoatError(f"the range {part} runs backwards; write {hi}-{lo}")
        ranges.append((lo, hi))
    return Seeds(ranges, text)


def _arg_type(fn):
    """An argparse ``type=`` from a checker that raises SoatError (argparse prints the message)."""
    def wrapped(text: str):
        try:
            return fn(text)
        except SoatError as e:
            raise argparse.ArgumentTypeError(str(e)) from None
    wrapped.__name__ = fn.__name__.lstrip("_")
    return wrapped


seeds_arg = _arg_type(parse_seeds)


@_arg_type
def device_arg(text: str) -> str:
    """``cpu``, ``cuda`` or ``cuda:N``, and CUDA only where a GPU is present."""
    try:
        dev = torch.device(text)
    except (RuntimeError, TypeError):
        dev = None
    if dev is None or dev.type not in ("cpu", "cuda"):
        raise SoatError(f"{text!r} is not a device; use cpu or cuda")
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise SoatError(f"{text!r}: no CUDA GPU is available here; use cpu")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise SoatError(f"{text!r}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    return text


def number(cast=float, lo: float | None = None, hi: float | None = None):
    """An argparse type: a finite ``cast`` number (``int`` or ``float``) in ``[lo, hi]`` (open ends: None)."""
    @_arg_type
    def checked(text: str):
        try:
            value = cast(text)
        except ValueError:
            raise SoatError(f"{text!r} is not {'an integer' if cast is int else 'a number'}") from None
        if not math.isfinite(value):
            raise SoatError(f"{text!r} must be a finite number")
        if (lo is not None and value < lo) or (hi is not None and value > hi):
            raise SoatError(f"{value} is out of range; use {lo} to {hi}" if hi is not None else
                            f"{value} is out of range; use {lo} or more")
        return value
    return checked


finite_float = number(float)


def int_range(lo: int, hi: int | None = None):
    """An argparse type: an integer in ``[lo, hi]``."""
    return number(int, lo, hi)


def check_checkpoint(source: str, flag: str = "--checkpoint") -> str:
    """A model source that can be loaded: an existing path, random[:SEED], a registry name or a URL."""
    m = _RANDOM.match(source)
    if m:
        if m.group(1) is not None and int(m.group(1)) > MAX_SEED:
            raise SoatError(f"{flag} {source}: the seed of the random model runs from 0 to {MAX_SEED}")
        return source
    if os.path.exists(source) or is_remote(source):
        return source
    raise SoatError(f"checkpoint not found: {source!r} ({flag} takes {CHECKPOINT_HELP})")


def known_size(source: str, size: int | None) -> int | None:
    """The model's resolution when it is known before loading (``--size``, random, registry name)."""
    if size:
        return size
    if _RANDOM.match(source):
        return 256
    return entry_for(source).size or None if is_remote(source) else None


# ---- options -----------------------------------------------------------------------------------
def add_checkpoint(p: argparse.ArgumentParser, default: str = "random") -> None:
    p.add_argument("--checkpoint", default=default, metavar="MODEL", help=f"{CHECKPOINT_HELP} (default {default})")


def add_layout(p: argparse.ArgumentParser) -> None:
    p.add_argument("--size", type=int, choices=SUPPORTED_SIZES, metavar="R",
                   help="resolution: checked against a checkpoint, the random model's size (default 256); "
                        f"one of {', '.join(map(str, SUPPORTED_SIZES))}")
    p.add_argument("--channel-multiplier", type=int, choices=[1, 2],
                   help="channel multiplier: checked against a checkpoint, the random model's (default 2)")


def add_device(p: argparse.ArgumentParser, default: str = "cpu") -> None:
    p.add_argument("--device", type=device_arg, default=default, help=f"cpu, cuda or cuda:N (default {default})")


def add_dtype(p: argparse.ArgumentParser) -> None:
    p.add_argument("--dtype", default="fp32", choices=DTYPE_CHOICES, help="precision (default fp32)")


def add_backend(p: argparse.ArgumentParser) -> None:
    p.add_argument("--backend", default="auto", choices=BACKENDS,
                   help="auto (fast for fp16/bf16, else torch), torch (the reference), fast (fused kernels); "
                        "the others run an export folder (a checkpoint is exported into the cache first)")


def add_force(p: argparse.ArgumentParser) -> None:
    p.add_argument("--force", action="store_true", help="replace outputs that already exist")


# ---- outputs -----------------------------------------------------------------------------------
def _check_writable_folder(folder: str, flag: str, path: str) -> None:
    if not os.path.isdir(folder):
        raise SoatError(f"{flag} {path}: the folder {folder} does not exist")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise SoatError(f"{flag} {path}: the folder {folder} is not writable")


def check_output_file(path: str, force: bool, suffix: str = ".png", flag: str = "-o") -> str:
    """One output file: ends with ``suffix``, its folder exists and is writable, no file there unless ``force``."""
    if not path.lower().endswith(suffix):
        raise SoatError(f"{flag} {path}: this command writes one {suffix} file; give a name ending in {suffix}")
    if os.path.isdir(path):
        raise SoatError(f"{flag} {path} is a folder; give a file name ending in {suffix}")
    _check_writable_folder(os.path.dirname(os.path.abspath(path)), flag, path)
    if os.path.lexists(path) and not force:
        raise SoatError(f"{flag} {path} exists; pass --force to replace it")
    return path


def check_output_folder(path: str, force: bool, names: Iterable[str], flag: str = "-o") -> str:
    """An output folder (created if its parent exists) none of whose ``names`` exist unless ``force``."""
    if os.path.splitext(path)[1].lower() in (".png", ".json", ".html", ".pt", ".safetensors"):
        raise SoatError(f"{flag} {path}: this command writes several files into a folder; give a folder name")
    if os.path.lexists(path) and not os.path.isdir(path):
        raise SoatError(f"{flag} {path} is a file; this command writes into a folder")
    if os.path.isdir(path):
        _check_writable_folder(path, flag, path)
        if not force:
            existing = next((n for n in names if os.path.lexists(os.path.join(path, n))), None)
            if existing is not None:
                raise SoatError(f"{flag} {path}: {existing} exists there; pass --force to replace it")
    else:
        _check_writable_folder(os.path.dirname(os.path.abspath(path)), flag, path)
    return path
