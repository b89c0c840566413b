"""CUDA graphs for whole task schedules: capture once per (task, shapes), replay after.

A task call launches one kernel per layer op; at batch 1 the launches cost more
than the math. ``cuda_graphed(fn)`` captures ``fn``'s whole schedule (engine calls and
feature-op kernels) into one CUDA graph per input signature and replays it, with
inputs copied into static buffers. Inputs are validated once per call outside the
graph (the checks that read values back to the host are skipped during capture), and
for NaN/inf inside it unless the caller's inputs are its own (``check_inputs=False``).
"""

from __future__ import annotations

from typing import Any, Callable

import torch
from torch.utils import _pytree as pytree

from ..errors import SoatError
from .lru import LRU


def is_capturing() -> bool:
    """True while a CUDA graph is being captured (no host syncs allowed)."""
    return torch.cuda.is_available() and torch.cuda.is_current_stream_capturing()


def first_nonfinite(tensors: list[torch.Tensor]) -> int | None:
    """Index of the first tensor holding NaN or inf, else None; one host sync for the whole list.
    Skipped while a CUDA graph is being captured (no sync is allowed there; ``CudaGraphedTask``
    checks its inputs inside the graph instead)."""
    if is_capturing() or not tensors:
        return None
    if len({t.device for t in tensors}) == 1:
        if bool(torch.isfinite(torch.cat([t.detach().reshape(-1) for t in tensors])).all()):
            return None
    return next((i for i, t in enumerate(tensors) if not bool(torch.isfinite(t).all())), None)


def _signature(leaves: list[Any]) -> tuple:
    return tuple((tuple(x.shape), x.dtype, x.device) if isinstance(x, torch.Tensor) else x for x in leaves)


class _Capture:
    """One captured graph: its static inputs (views into one flat buffer per dtype, so that
    loading them and checking them for NaN/inf is one kernel each), its finiteness flag and output."""

    def __init__(self, tensors: list[torch.Tensor]):
        by_dtype: dict[torch.dtype, list[int]] = {}
        for i, x in enumerate(tensors):
            by_dtype.setdefault(x.dtype, []).append(i)
        self.groups = []
        self.static: list[torch.Tensor] = [None] * len(tensors)
        for dtype, indices in by_dtype.items():
            flat = torch.empty(sum(tensors[i].numel() for i in indices), dtype=dtype, device=tensors[0].device)
            start = 0
            for i in indices:
                n = tensors[i].numel()
                self.static[i] = flat[start:start + n].view(tensors[i].shape)
                start += n
            self.groups.append((flat, indices))
        self.load(tensors)
        self.graph = torch.cuda.CUDAGraph()
        self.finite = self.out = None

    def load(self, tensors: list[torch.Tensor]) -> None:
        for flat, indices in self.groups:
            torch.cat([tensors[i].detach().reshape(-1) for i in indices], out=flat)

    def check_inputs(self) -> torch.Tensor:
        """Captured into the graph: True when every input is finite."""
        return torch.stack([torch.isfinite(flat).all() for flat, _ in self.groups]).all()


class CudaGraphedTask:
    """``fn(*args)`` replayed from a CUDA graph per input signature.

    Tensor leaves of ``args`` (nested lists allowed) are copied into static buffers;
    other leaves are part of the signature. The graph also checks its inputs for NaN
    and inf (one flag read back after the replay: the call's only host sync), unless
    ``check_inputs=False``: for callers whose inputs the model made itself, so that the
    call returns while the GPU still runs and the host can prepare the next one. All
    captures share one memory pool, so a call's result lives until the next call of any
    shape: clone it if it must outlive that. With ``max_captures``, the least recently used
    capture is dropped when a new one would exceed it.
    """

    def __init__(self, fn: Callable[..., torch.Tensor], warmup: int = 2, max_captures: int | None = None,
                 check_inputs: bool = True):
        self.fn = fn
        self.warmup = warmup
        self.check_inputs = check_inputs
        self._captures: LRU[tuple, _Capture] = LRU(max_captures)
        self._pool = None  # one memory pool for every capture: replays are sequential, so they can share it

    @property
    def max_captures(self) -> int | None:
        return self._captures.capacity

    @max_captures.setter
    def max_captures(self, value: int | None) -> None:
        self._captures.capacity = value

    def __len__(self) -> int:
        return len(self._captures)

    def __call__(self, *args: Any) -> torch.Tensor:
        leaves, spec = pytree.tree_flatten(args)
        tensors = [x for x in leaves if isinstance(x, torch.Tensor)]
        if not tensors or any(not x.is_cuda for x in tensors):
            raise SoatError("graphed tasks need CUDA tensors; load the generator with device='cuda'")
        key = (_signature(leaves), str(spec))
        captured = self._captures.peek(key)
        if captured is not None:
            captured.load(tensors)
        else:  # the least recently used capture goes first (its memory returns to the pool)
            captured = self._captures.get(key, lambda: self._capture(leaves, spec, tensors))
        captured.graph.replay()
        if self.check_inputs and not bool(captured.finite):
            raise SoatError("an input of the graphed task contains NaN or inf")
        return captured.out

    def _capture(self, leaves: list[Any], spec, tensors: list[torch.Tensor]) -> _Capture:
        captured = _Capture(tensors)
        static = iter(captured.static)
        args = pytree.tree_unflatten([next(static) if isinstance(x, torch.Tensor) else x for x in leaves], spec)
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side), torch.no_grad():
            for _ in range(self.warmup):  # fills lazy caches (widened noise, Triton autotune) outside capture
                self.fn(*args)
        torch.cuda.current_stream().wait_stream(side)
        if self._pool is None:
            self._pool = torch.cuda.graph_pool_handle()
        with torch.cuda.graph(captured.graph, pool=self._pool), torch.no_grad():
            if self.check_inputs:
                captured.finite = captured.check_inputs()
            captured.out = self.fn(*args)
        return captured


def cuda_graphed(fn: Callable[..., torch.Tensor], warmup: int = 2, check_inputs: bool = True) -> CudaGraphedTask:
    """Wrap a task call (e.g. ``lambda s1, s2: G.blend(s1, s2)``) for CUDA-graph replay."""
    return CudaGraphedTask(fn, warmup, check_inputs=check_inputs)
