"""CUDA graphs for the Generator's task calls, without the user asking for them, and their batch policy.

On CUDA a task call launches one kernel per layer op, and at batch 1 the launches cost
more than the math. ``CudaGraphTasks`` captures each (task, input signature) once — tensor
shapes, dtypes and every non-tensor argument — and replays it after, as vLLM does for its
decode step; eager execution is the opt-out (``soat.load(..., cuda_graphs=False)``).

A call runs eagerly instead when a CUDA graph could not reproduce it: off CUDA, on a backend
whose work cannot be captured (ONNX Runtime, TensorRT), inside another capture, when an
input requires grad, with ``noise="random"`` (drawn on the host per call), or with an input
tensor on another device. The first call of a new signature costs a few eager runs plus the
capture; ``Generator.warmup`` pays that at start-up. At most ``MAX_CUDA_GRAPHS`` captures are
kept (least recently used dropped); they share one memory pool, which holds the largest
task's working set.

The batch policy, for callers that run one task at many batch sizes (the server's span
batches): ``padded_batch(n)`` is the batch a call of ``n`` rows should run at (few shapes, so few
captures), ``warmup_batches(max_batch)`` every such batch, largest first (the first capture sizes
the shared pool, and the smaller ones reuse its blocks).
"""

from __future__ import annotations

import weakref
from typing import TYPE_CHECKING, Callable

import torch
from torch.utils import _pytree as pytree

from .cudagraph import CudaGraphedTask, is_capturing

if TYPE_CHECKING:
    from .generator import Generator

# CUDA graph captures kept per generator, in each of its caches (task calls; the endless panorama's
# replays): room for every padded batch of a streaming server (8 shapes up to 64) next to the task
# calls of a service. libsoat keeps as many (kMaxCaptures).
MAX_CUDA_GRAPHS = 32
RANDOM_NOISE = "random"


def cuda_graph_batch(n: int) -> int:
    """The batch ``n`` rows are padded to for CUDA-graph replay: a power of two up to 16, then a multiple
    of 16 (1, 2, 4, 8, 16, 32, 48, 64, ...): few captures, and at most 1/3 of a large batch padding
    (powers of two alone padded 48 rows to 64)."""
    return 1 << (n - 1).bit_length() if n <= 16 else -(-n // 16) * 16


class CudaGraphTasks:
    """One generator's CUDA-graph task calls: ``call(task, args)`` replays ``task(G, *args)`` or runs it eagerly."""

    def __init__(self, G: Generator, enabled: bool, max_captures: int = MAX_CUDA_GRAPHS):
        self.enabled = enabled and G.device.type == "cuda" and G.backend.capturable
        generator = weakref.ref(G)  # the captures live in G: no strong cycle through the closure
        self._captures = CudaGraphedTask(lambda task, *args: task(generator(), *args), max_captures=max_captures)

    def __len__(self) -> int:
        return len(self._captures)

    def call(self, G: Generator, task: Callable[..., torch.Tensor], args: tuple) -> torch.Tensor:
        """``task(G, *args)``, replayed from its CUDA graph where one applies; the result is the
        caller's own tensor (a copy of the graph's static output)."""
        if not self.replayable(args):
            return task(G, *args)
        return self._captures(task, *args).clone()

    def replayable(self, args: tuple) -> bool:
        if not self.enabled or is_capturing():
            return False
        leaves = pytree.tree_leaves(args)
        tensors = [x for x in leaves if isinstance(x, torch.Tensor)]
        if any(isinstance(x, str) and x == RANDOM_NOISE for x in leaves):
            return False
        if not tensors or not all(t.is_cuda for t in tensors):
            return False
        return not (torch.is_grad_enabled() and any(t.requires_grad for t in tensors))

    # ---- the batch policy --------------------------------------------------------------------
    def padded_batch(self, n: int) -> int:
        """The batch ``n`` rows should run at: ``cuda_graph_batch(n)`` where calls replay, else ``n``."""
        return cuda_graph_batch(n) if self.enabled else n

    def warmup_batches(self, max_batch: int) -> list[int]:
        """The batches to run once before serving up to ``max_batch`` rows a call, largest first: every
        padded batch where calls replay (so that each is captured then), else just 1."""
        if not self.enabled:
            return [1]
        return sorted({cuda_graph_batch(n) for n in range(1, max_batch + 1)}, reverse=True)
