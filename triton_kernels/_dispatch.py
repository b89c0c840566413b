"""Choosing between a Triton kernel and its torch reference, loading the kernels, and the argument checks."""

from __future__ import annotations

import functools
import importlib
import importlib.util
import numbers
import os
from types import ModuleType

import torch

from ..errors import SoatError

IMPLS = ("auto", "triton", "ref")
DTYPES = (torch.float32, torch.float16, torch.bfloat16)
DIMS = "BCHW"


@functools.cache
def triton_installed() -> bool:
    return importlib.util.find_spec("triton") is not None


def interpreting() -> bool:
    """True under ``TRITON_INTERPRET=1``: kernels then run on CPU tensors (how CI tests them)."""
    return os.environ.get("TRITON_INTERPRET") == "1"


def use_triton(impl: str, *tensors: torch.Tensor | None) -> bool:
    """True when the Triton kernel should run: ``impl='triton'``, or ``'auto'`` on CUDA tensors.

    ``'auto'`` falls back to the reference where Triton is not installed, and whenever an
    input requires grad (the kernels have no backward pass; the references are plain torch
    ops, so autograd sees every step). The environment variable ``SOAT_FEATURE_OPS``
    (``auto``, ``triton`` or ``ref``) replaces ``'auto'`` for every op a task calls (to debug
    a task with the reference ops on the GPU, or to run the kernels inside whole tasks under
    the interpreter). ``TRITON_INTERPRET=1`` lets ``impl='triton'`` run on CPU tensors (how
    CI tests kernels). ``None`` entries (absent optional inputs) are ignored.
    """
    present = [t for t in tensors if t is not None]
    needs_grad = torch.is_grad_enabled() and any(t.requires_grad for t in present)
    if impl == "triton" and needs_grad:
        raise SoatError("impl='triton' has no backward pass and an input requires grad; use impl='auto' "
                        "(the torch reference runs when gradients are needed) or impl='ref'")
    if impl == "auto":
        impl = os.environ.get("SOAT_FEATURE_OPS", "auto")
    if impl not in IMPLS:
        raise SoatError(f"impl={impl!r} is unknown (SOAT_FEATURE_OPS or the impl argument); use one of {IMPLS}")
    if impl == "ref" or needs_grad:
        return False
    on_cuda = all(t.is_cuda for t in present)
    if impl == "auto":
        return on_cuda and triton_installed()
    if not triton_installed():
        raise SoatError("impl='triton' needs the triton package (pip install 'soat[triton]'); or use impl='ref'")
    if not on_cuda and not interpreting():
        devices = sorted({str(t.device) for t in present})
        raise SoatError(f"impl='triton' needs CUDA tensors (got {', '.join(devices)}); "
                        f"CPU tensors run Triton only under TRITON_INTERPRET=1")
    return True


@functools.cache
def kernels(name: str) -> ModuleType:
    """The kernel module ``soat.triton_kernels.<name>_kernel``, imported on the first Triton launch.

    Importing it imports Triton and jits its kernels, so the op modules call this only once
    :func:`use_triton` has chosen the kernel: ``import soat`` and the torch references never
    import Triton. ``triton.jit`` reads ``TRITON_INTERPRET`` when a kernel module is imported:
    set it before the first launch.
    """
    return importlib.import_module(f"{__package__}.{name}_kernel")


def _describe(t) -> str:
    return str(list(t.shape)) if isinstance(t, torch.Tensor) else type(t).__name__


@functools.cache
def _dim_indices(same: str) -> tuple[int, ...]:
    return tuple(DIMS.index(d) for d in same)


def check_maps(maps: dict[str, torch.Tensor], same: str = DIMS) -> None:
    """Each value must be a ``[B, C, H, W]`` fp32/fp16/bf16 tensor; all on one device, of one dtype,
    and equal in the dimensions named by ``same`` (letters of ``"BCHW"``)."""
    dims = _dim_indices(same)
    first = t0 = shape0 = None
    for name, t in maps.items():
        if not isinstance(t, torch.Tensor) or t.dim() != 4:
            raise SoatError(f"{name} must be a [B, C, H, W] tensor; got {_describe(t)}")
        if t.dtype not in DTYPES:
            raise SoatError(f"{name} has dtype {t.dtype}; use torch.float32, torch.float16 or torch.bfloat16")
        shape = tuple(t.shape)
        if first is None:
            first, t0, shape0 = name, t, shape
            continue
        if t.device != t0.device:
            raise SoatError(f"{name} is on {t.device} but {first} is on {t0.device}; put them on one device")
        if t.dtype != t0.dtype:
            raise SoatError(f"{name} has dtype {t.dtype} but {first} has {t0.dtype}; they must match")
        if any(shape[i] != shape0[i] for i in dims):
            raise SoatError(f"{name} has shape {list(shape)} but {first} has {list(shape0)}; "
                            f"their sizes {', '.join(same)} must match")


def check_int(value, name: str, low: int = 0, high: int | None = None) -> int:
    """``value`` as an int in ``[low, high]``, or a SoatError naming it."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < low or (
            high is not None and value > high):
        allowed = f"an integer >= {low}" if high is None else f"an integer in [{low}, {high}]"
        raise SoatError(f"{name}={value!r} must be {allowed}")
    return int(value)


def check_int_rows(rows, name: str, fields: tuple[str, ...], lows: tuple[int, ...]) -> list[tuple[int, ...]]:
    """``rows`` as a list of ``len(fields)``-tuples of ints, each at least its ``lows`` entry, or a SoatError."""
    if not isinstance(rows, (list, tuple)):
        raise SoatError(f"{name} must be a list of ({', '.join(fields)}); got {type(rows).__name__}")
    checked = []
    for i, row in enumerate(rows):
        if not isinstance(row, (list, tuple)) or len(row) != len(fields):
            raise SoatError(f"{name}[{i}]={row!r} must be ({', '.join(fields)})")
        checked.append(tuple(check_int(v, f"{name}[{i}].{f}", low) for v, f, low in zip(row, fields, lows)))
    return checked
