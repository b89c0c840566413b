"""The ``Backend`` protocol: what the Generator and the tasks need from an executor of the graphs.

A backend runs the graphs of ``soat.runtime.graphs`` (the chain's nodes, ``mapping`` and
``styles``) on tensors named as in the chain. The Generator calls ``run`` for single graphs
and ``run_chain`` for a run of consecutive nodes; a backend that fuses across layer
boundaries (the fast torch backend) implements ``run_chain`` itself, the others inherit
``NodeByNode.run_chain``. Tasks never see a backend: adding one touches no task.
"""

from __future__ import annotations

from typing import Callable, Protocol, Sequence, runtime_checkable

import torch

from .chain import TO_RGB, LayerNode, Step, advance, node_inputs, run_steps
from .graphs import PlanStep


@runtime_checkable
class Backend(Protocol):
    """An executor of the layer chain's graphs.

    Attributes:
        name: the name ``soat.load(backend=...)`` takes (``torch``, ``fast``, ``onnxruntime``, ``tensorrt``).
        device, dtype: where and in which precision the graphs run (inputs are given in them).
        differentiable: outputs carry autograd history to inputs that require grad
            (inversion needs it; exported engines do not give it).
        capturable: its work on CUDA can be captured into a CUDA graph on torch's current
            stream (the Generator then replays task calls; ``task_graphs.py``).
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


# (plan step, modulated input, style, noise, next conv's style or None) -> (x or None, next x_mod or None)
RunLinked = Callable[[PlanStep, torch.Tensor, torch.Tensor, "torch.Tensor | None", "torch.Tensor | None"],
                     tuple["torch.Tensor | None", "torch.Tensor | None"]]


def execute_plan(plan: Sequence[PlanStep], steps: Sequence[Step], x: torch.Tensor, rgb: torch.Tensor | None,
                 run_node: Callable[..., torch.Tensor], run_linked: RunLinked,
                 modulate: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Run ``steps`` as ``plan`` says (``graphs.run_plan``; from the manifest for exports).

    A node's own graph runs on ``x`` (``run_node``); a linked step runs on the modulated input the previous
    step kept, or on ``modulate(x, style)`` where none is held, and is given the next styled conv's style
    where it keeps ``next_x_mod``. Returns the last features and RGB.
    """
    x_mod = None  # the next styled conv's modulated input, once a linked step kept it
    for k, ((node, style, noise), step) in enumerate(zip(steps, plan, strict=True)):
        if step.graph == node.id:
            x, rgb = advance(node, run_node(node, x, style, noise, rgb), x, rgb)
            if node.kind != TO_RGB:  # a ToRGB leaves the features, and so their modulated form, as they are
                x_mod = None
            continue
        if x_mod is None:
            x_mod = modulate(x, style)
        next_style = (next(s for n, s, _ in steps[k + 1:] if n.styled_conv) if "next_x_mod" in step.writes
                      else None)
        x, x_mod = run_linked(step, x_mod, style, noise, next_style)
    return x, rgb
