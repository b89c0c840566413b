"""CUDA graphs for the Generator's task calls, without the user asking for them.

On CUDA a task call launches one kernel per layer op, and at batch 1 the launches cost
more than the math. ``TaskGraphs`` captures each (task, input signature) once — tensor
shapes, dtypes and every non-tensor argument — and replays it after, as vLLM does for its
decode step; eager execution is the opt-out (``soat.load(..., graphs=False)``).

A call runs eagerly instead when a graph could not reproduce it: off CUDA, on a backend
whose work cannot be captured (ONNX Runtime, TensorRT), inside another capture, when an
input requires grad, with ``noise="random"`` (drawn on the host per call), or with an input
tensor on another device. The first call of a new signature costs a few eager runs plus the
capture; ``Generator.warmup`` pays that at start-up. At most ``max_graphs`` captures are
kept (least recently used dropped); they share one memory pool, which holds the largest
task's working set.
"""

from __future__ import annotations

import weakref
from typing import Any, Callable

import torch
from torch.utils import _pytree as pytree

from .cudagraph import GraphedTask, is_capturing

MAX_GRAPHS = 32
RANDOM_NOISE = "random"


class TaskGraphs:
    """One generator's task graphs: ``call(task, args)`` replays ``task(G, *args)`` or runs it eagerly."""

    def __init__(self, G: Any, enabled: bool, max_graphs: int = MAX_GRAPHS):
        self.enabled = enabled and G.device.type == "cuda" and G.backend.capturable
        generator = weakref.ref(G)  # the graphs live in G: no strong cycle through the closure
        self._graphed = GraphedTask(lambda task, *args: task(generator(), *args), max_graphs=max_graphs)

    def __len__(self) -> int:
        return len(self._graphed)

    def call(self, G: Any, task: Callable[..., torch.Tensor], args: tuple) -> torch.Tensor:
        """``task(G, *args)``, replayed from its CUDA graph where one applies; the result is the
        caller's own tensor (a copy of the graph's static output)."""
        if not self.replayable(args):
            return task(G, *args)
        return self._graphed(task, *args).clone()

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
