"""The fast torch backend: shared-weight convs and fused Triton layer kernels, channels_last.

Every styled conv is the dense conv of the modulated input with the shared weight
(``graph_modules.ModConv``, as exported) followed by one epilogue kernel (demodulation,
blur of the upsampling layers, noise, bias, leaky ReLU); ToRGB is one kernel (modulated
1x1 conv, bias, upsampled skip). Inside a run of layers (``run_chain``) each epilogue
also writes the next conv's modulated input, so no separate modulation pass (nor its
rounding) is made. The kernels run on CUDA tensors; elsewhere their torch references
run (fp32 CPU: equal to the torch backend to rel err <= 1e-5).

Differentiable: the kernels fall back to their torch references whenever an input
requires grad (``triton_kernels._dispatch.use_triton``), so autograd sees every op.
"""

from __future__ import annotations

from typing import Sequence

import torch

from ...triton_kernels.conv_epilogue import conv_epilogue_modulated
from ...triton_kernels.demod import demod
from ...triton_kernels.modulate import modulate
from ...triton_kernels.to_rgb import to_rgb
from ..backend import execute_plan
from ..capabilities import backend_spec
from ..chain import CONST, TO_RGB, LayerNode, Step, build_chain, node_inputs
from ..graph_modules import StyledConvNode, ToRGBNode, graph_module
from ..graphs import PlanStep, chain_index, graph_ids, graph_io, linked_node_id, run_plan
from ..weights import StyleGAN2Weights


class FastTorchBackend:
    """The fused fast path: ``run(graph_id, inputs)`` for single graphs, ``run_chain`` across layers.

    Args:
        weights: the model (kept on the host as given: the exporter's source).
        device, dtype: where the graph modules' weights go (fp16/bf16 are this backend's use).
    """

    name = "fast"
    differentiable, capturable = backend_spec(name).differentiable, backend_spec(name).capturable

    def __init__(self, weights: StyleGAN2Weights, device: torch.device | str = "cpu",
                 dtype: torch.dtype = torch.float16):
        self.config = weights.config
        self.device = torch.device(device)
        self.dtype = dtype
        self.weights = weights
        self._nodes = {n.id: n for n in build_chain(self.config)}
        self._graphs = {gid: self._prepare(graph_module(weights, gid)) for gid in graph_ids(self.config)}

    def _prepare(self, module: torch.nn.Module) -> torch.nn.Module:
        module = module.to(self.device, self.dtype).eval().requires_grad_(False)
        return module.to(memory_format=torch.channels_last)

    def run(self, graph_id: str, inputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        module = self._graphs[graph_id]
        names, (output,) = graph_io(self.config, graph_id)
        if graph_id not in self._nodes:  # mapping and styles: the graph modules as they are
            return {output: module(*(inputs[n] for n in names))}
        node = self._nodes[graph_id]
        if node.kind == CONST:
            out = module(inputs["style"]).contiguous(memory_format=torch.channels_last)
        elif node.kind == TO_RGB:
            out = _to_rgb(module, inputs["x"], inputs["style"], inputs.get("skip"))
        else:
            out, _ = _styled_conv(module, modulate(inputs["x"], inputs["style"]), inputs["style"], inputs["noise"],
                                  None, True)
        return {output: out}

    def run_chain(self, steps: Sequence[Step], x: torch.Tensor,
                  rgb: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Consecutive nodes ``(node, style, noise)`` from ``x`` (and RGB); returns the last of each.

        The run follows the contract's plan (``graphs.run_plan``): where it links styled convs, each one's
        epilogue writes the next conv's modulated input, and ``x`` itself only where the run reads it.
        """
        if not steps:
            return x, rgb
        first = chain_index(self.config, steps[0][0].id)
        return execute_plan(run_plan(self.config, first, first + len(steps)), steps, x, rgb, self._run_node,
                            self._run_linked, modulate)

    def _run_node(self, node: LayerNode, x: torch.Tensor, style: torch.Tensor, noise: torch.Tensor | None,
                  skip: torch.Tensor | None) -> torch.Tensor:
        return self.run(node.id, node_inputs(x, style, noise, skip))[node.output]

    def _run_linked(self, step: PlanStep, x_mod: torch.Tensor, style: torch.Tensor, noise: torch.Tensor | None,
                    next_style: torch.Tensor | None) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        module = self._graphs[linked_node_id(step.graph)]
        return _styled_conv(module, x_mod, style, noise, next_style, "x" in step.writes)


def _styled_conv(module: StyledConvNode, x_mod: torch.Tensor, style: torch.Tensor, noise: torch.Tensor,
                 next_style: torch.Tensor | None, write_x: bool) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """A styled conv on its modulated input: the shared-weight conv, then the fused epilogue.

    Returns ``(x or None, the next conv's modulated input or None)``.
    """
    y = module.conv.shared_conv(x_mod)
    d = demod(style, module.conv.weight_sq)
    return conv_epilogue_modulated(y, d, noise, module.noise_weight, module.bias, module.conv.upsample, next_style,
                                   write_x)


def _to_rgb(module: ToRGBNode, x: torch.Tensor, style: torch.Tensor, skip: torch.Tensor | None) -> torch.Tensor:
    """ToRGB in one kernel: modulated 1x1 conv, bias, and the upsampled skip (None for to_rgb1)."""
    return to_rgb(x, style, module.conv.weight[:, :, 0, 0], module.bias, skip)
