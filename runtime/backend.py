"""The ``Backend`` protocol: what the Generator and the tasks need from an executor of the graphs.

A backend runs the graphs of ``soat.runtime.graphs`` (the chain's nodes, ``mapping`` and
``styles``) on tensors named as in the chain. The Generator calls ``run`` for single graphs
and ``run_chain`` for a run of consecutive nodes; a backend that fuses across layer
boundaries (the fast torch backend) implements ``run_chain`` itself, the others inherit
``NodeByNode.run_chain``. Tasks never see a backend: adding one touches no task.
"""

from __future__ import annotations

from typing import Protocol, Sequence, runtime_checkable

import torch

from .chain import LayerNode, Step, node_inputs, run_steps


@runtime_checkable
class Backend(Protocol):
    """An executor of the layer chain's graphs.

    Attributes:
        name: the name ``soat.load(backend=...)`` takes (``torch``, ``fast``, ``onnxruntime``, ``tensorrt``).
        device, dtype: where and in which precision the graphs run (inputs are given in them).
        differentiable: outputs carry autograd history to inputs that require grad
            (inversion needs it; exported engines do not give it).
        capturable: its work on CUDA can be captured into a CUDA graph on torch's current
            stream (the Generator then replays task calls; ``cuda_graph_tasks.py``).
    """

    name: str
    device: torch.device
    dtype: torch.dtype
    differentiable: bool
    capturable: bool

    def run(self, graph_id: str, inputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """One graph: named inputs (``graph_io``'s names) -> named outputs."""
        ...

    def run_chain(self, steps: Sequence[Step], x: torch.Tensor,
                  rgb: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Consecutive nodes ``(node, style, noise)`` from features ``x`` (and RGB); returns the last of each."""
        ...


class NodeByNode:
    """``run_chain`` as one ``run`` per node, for backends that do not fuse across nodes."""

    def run_chain(self, steps: Sequence[Step], x: torch.Tensor,
                  rgb: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor | None]:
        return run_steps(self.run_node, steps, x, rgb)

    def run_node(self, node: LayerNode, x: torch.Tensor, style: torch.Tensor, noise: torch.Tensor | None = None,
                 skip: torch.Tensor | None = None) -> torch.Tensor:
        """One chain node on given tensors; returns its ``x`` or ``rgb`` output."""
        return self.run(node.id, node_inputs(x, style, noise, skip))[node.output]
