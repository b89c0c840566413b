"""The argument types and output checks every ``soat`` command shares (soat/cli.py, invert_cli.py,
the bench and the export commands import them from here).

Every check here runs before a model is loaded or anything is computed, and reports a user
mistake as ``SoatError`` / ``argparse.ArgumentTypeError`` (one line, exit status 2).
"""

from __future__ import annotations

import argparse
import os
import re
from typing import Collection, Iterable, Iterator

from .errors import SoatError
from .runtime.config import SUPPORTED_SIZES
from .runtime.capabilities import AUTO, BACKEND_CHOICES, BACKENDS, PRECISION_NAMES
from .runtime.checks import MAX_SEED, check_device, check_float, check_int, check_seed, random_seed
from .runtime.manifest import export_backend
from .runtime.registry import REGISTRY, entry_for, is_remote

DTYPE_CHOICES = PRECISION_NAMES
CHECKPOINT_HELP = ("model: a registry name (" + ", ".join(REGISTRY) + "; downloaded once), an https:// URL, "
                   "a rosinality/SOAT .pt, an NVIDIA .pkl, a soat .safetensors, an export folder, "
                   "or random[:SEED] for the embedded random-weights model")
_WEIGHTS_AUTO = "fast for fp16/bf16, else torch"
_DIFFERENTIABLE = tuple(b for b in BACKENDS if b.differentiable)


def _backend_clauses(specs) -> str:
    """One clause per backend, from the table: "torch (the reference arithmetic in plain torch), ..."."""
    return ", ".join(f"{b.name} ({b.summary})" for b in specs)


BACKEND_HELP = (f"{AUTO} (an export folder's own backend, named by its manifest; else {_WEIGHTS_AUTO}), "
                + _backend_clauses(BACKENDS) + "; an export backend given a checkpoint exports it into the cache first")
_SEED_PART = re.compile(r"^(\d+)(?:-(\d+))?$")
_LOOKUPS = 1024  # output names looked up one by one; more are matched against the folder's listing


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

    def __contains__(self, seed: object) -> bool:
        return isinstance(seed, int) and any(lo <= seed <= hi for lo, hi in self.ranges)

    def __eq__(self, other: object) -> bool:
        return list(self) == list(other) if isinstance(other, (list, Seeds)) else NotImplemented

    def __repr__(self) -> str:
        return f"Seeds({self.text!r})"


class SeedFiles(Collection[str]):
    """The files ``seedNNNN.png`` of ``Seeds`` (``soat generate``): iterated lazily, and a name is tested
    against the seed ranges, so a folder is checked for 4e9 seeds without making 4e9 names."""

    _NAME = re.compile(r"^seed([0-9]{4,64})\.png$")

    def __init__(self, seeds: Seeds) -> None:
        self.seeds = seeds

    @staticmethod
    def name(seed: int) -> str:
        return f"seed{seed:04d}.png"

    def __len__(self) -> int:
        return len(self.seeds)

    def __iter__(self) -> Iterator[str]:
        return (self.name(s) for s in self.seeds)

    def __contains__(self, name: object) -> bool:
        m = self._NAME.match(name) if isinstance(name, str) else None
        return m is not None and self.name(int(m.group(1))) == name and int(m.group(1)) in self.seeds


def parse_seeds(text: str) -> Seeds:
    """``"0-3,7"`` -> seeds 0, 1, 2, 3, 7. Seeds are integers 0 to 2**32 - 1; ranges run upwards."""
    ranges = []
    for part in text.split(","):
        m = _SEED_PART.match(part.strip())
        if not m:
            raise SoatError(f"{part!r} is not a seed; write integers and ranges like 0-7,9")
        lo, hi = m.group(1), m.group(2) if m.group(2) is not None else m.group(1)
        lo, hi = (check_seed(int(t) if len(t) <= 20 else MAX_SEED + 1, shown=t) for t in (lo, hi))
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
    check_device(text, shown=repr(text))
    return text


def number(cast=float, lo: float | None = None, hi: float | None = None, what: str = "an integer"):
    """An argparse type: a finite ``cast`` number (``int`` or ``float``) in ``[lo, hi]`` (open ends: None),
    checked as the Python API checks it (``runtime/checks.py``; ``what`` names an integer's kind)."""
    @_arg_type
    def checked(text: str):
        try:
            value = cast(text)
        except ValueError:
            value = text  # not a number: the shared check says so
        if cast is int:
            return check_int(value, "", lo, hi, what, shown=repr(text))
        return check_float(value, "", lo, hi, shown=repr(text))
    return checked


finite_float = number(float)


def int_range(lo: int, hi: int | None = None, what: str = "an integer"):
    """An argparse type: an integer in ``[lo, hi]``."""
    return number(int, lo, hi, what)


def check_checkpoint(source: str, flag: str = "--checkpoint", backend: str | None = None) -> str:
    """A model source that can be loaded: an existing path, random[:SEED], a registry name or a URL; with the
    command's ``backend``, an export folder must be of a format that backend runs (``--backend auto`` picks it)."""
    if random_seed(source, flag) is not None:
        return source
    if backend is not None:
        export_backend(source, backend, "--backend")
    if os.path.exists(source) or is_remote(source):
        return source
    raise SoatError(f"checkpoint not found: {source!r} ({flag} takes {CHECKPOINT_HELP})")


def known_size(source: str, size: int | None) -> int | None:
    """The model's resolution when it is known before loading (``--size``, random, registry name)."""
    if size:
        return size
    if random_seed(source) is not None:
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


def add_backend(p: argparse.ArgumentParser, differentiable: bool = False) -> None:
    """``--backend``; ``differentiable``: only the backends whose outputs carry gradients (inversion)."""
    if differentiable:
        choices = (AUTO, *(b.name for b in _DIFFERENTIABLE))
        text = f"{AUTO} ({_WEIGHTS_AUTO}), " + _backend_clauses(_DIFFERENTIABLE)
    else:
        choices, text = BACKEND_CHOICES, BACKEND_HELP
    p.add_argument("--backend", default=AUTO, choices=choices, help=text)


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


def _first_existing(folder: str, names: Iterable[str]) -> str | None:
    """The first of ``names`` that exists in ``folder``; a collection longer than the folder's listing (a
    range of seeds) is checked by listing the folder instead of looking up every name."""
    if isinstance(names, Collection) and len(names) > _LOOKUPS:
        listing = sorted(os.listdir(folder))
        if len(listing) < len(names):
            return next((n for n in listing if n in names), None)
    return next((n for n in names if os.path.lexists(os.path.join(folder, n))), None)


def check_output_folder(path: str, force: bool, names: Iterable[str], flag: str = "-o") -> str:
    """An output folder (created if its parent exists) none of whose ``names`` exist unless ``force``."""
    if os.path.splitext(path)[1].lower() in (".png", ".json", ".html", ".pt", ".safetensors"):
        raise SoatError(f"{flag} {path}: this command writes several files into a folder; give a folder name")
    if os.path.lexists(path) and not os.path.isdir(path):
        raise SoatError(f"{flag} {path} is a file; this command writes into a folder")
    if os.path.isdir(path):
        _check_writable_folder(path, flag, path)
        if not force:
            existing = _first_existing(path, names)
            if existing is not None:
                raise SoatError(f"{flag} {path}: {existing} exists there; pass --force to replace it")
    else:
        _check_writable_folder(os.path.dirname(os.path.abspath(path)), flag, path)
    return path
