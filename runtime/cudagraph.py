"""CUDA graphs for whole task schedules: capture once per (task, shapes), replay after.

A task call launches one kernel per layer op; at batch 1 the launches cost more
than the math. ``graphed(fn)`` captures ``fn``'s whole schedule (engine calls and
feature-op kernels) into one CUDA graph per input signature and replays it, with
inputs copied into static buffers. Inputs are validated once per call outside the
graph (the checks that read values back to the host are skipped during capture).
"""

from __future__ import annotations

from typing import Any, Callable

import torch
from torch.utils import _pytree as pytree

from .errors import SoatError


def is_capturing() -> bool:
    """True while a CUDA graph is being captured (no host syncs allowed)."""
    return torch.cuda.is_available() and torch.cuda.is_current_stream_capturing()


def _signature(leaves: list[Any]) -> tuple:
    return tuple((tuple(x.shape), x.dtype, x.device) if isinstance(x, torch.Tensor) else x for x in leaves)


class GraphedTask:
    """``fn(*args)`` replayed from a CUDA graph per input signature.

    Tensor leaves of ``args`` (nested lists allowed) are copied into static buffers;
    other leaves are part of the signature. Returns the graph's static output:
    clone it if it must outlive the next call.
    """

    def __init__(self, fn: Callable[..., torch.Tensor], warmup: int = 2):
        self.fn = fn
        self.warmup = warmup
        self._graphs: dict[tuple, tuple[torch.cuda.CUDAGraph, list, Any]] = {}

    def __call__(self, *args: Any) -> torch.Tensor:
        leaves, spec = pytree.tree_flatten(args)
        tensors = [x for x in leaves if isinstance(x, torch.Tensor)]
        if any(not x.is_cuda for x in tensors):
            raise SoatError("graphed tasks need CUDA tensors; load the generator with device='cuda'")
        for x in tensors:
            if not torch.isfinite(x).all():
                raise SoatError("an input of the graphed task contains NaN or inf")
        key = (_signature(leaves), str(spec))
        if key not in self._graphs:
            self._graphs[key] = self._capture(leaves, spec)
        graph, static, out = self._graphs[key]
        for dst, src in zip(static, leaves):
            if isinstance(dst, torch.Tensor):
                dst.copy_(src)
        graph.replay()
        return out

    def _capture(self, leaves: list[Any], spec) -> tuple[torch.cuda.CUDAGraph, list, Any]:
        static = [x.clone() if isinstance(x, torch.Tensor) else x for x in leaves]
        args = pytree.tree_unflatten(static, spec)
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side), torch.no_grad():
            for _ in range(self.warmup):  # fills lazy caches (widened noise, Triton autotune) outside capture
                self.fn(*args)
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph), torch.no_grad():
            out = self.fn(*args)
        return graph, static, out


def graphed(fn: Callable[..., torch.Tensor], warmup: int = 2) -> GraphedTask:
    """Wrap a task call (e.g. ``lambda s1, s2: G.blend(s1, s2)``) for CUDA-graph replay."""
    return GraphedTask(fn, warmup)
