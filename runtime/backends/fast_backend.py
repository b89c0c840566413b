"""The fast torch backend: shared-weight convs and fused Triton layer kernels, channels_last.

Every styled conv is the dense conv of the modulated input with the shared weight
(``graph_modules.ModConv``, as exported) followed by one epilogue kernel (demodulation,
blur of the upsampling layers, noise, bias, leaky ReLU); ToRGB is one kernel (modulated
1x1 conv, bias, upsampled skip). Inside a run of layers (``run_chain``) each epilogue
also writes the next conv's modulated input, so no separate modulation pass (nor its
rounding) is made, and the demodulation factors of all the run's styled convs are
computed up front in one launch (``triton_kernels.demod.demod_layers``). The kernels
run on CUDA tensors; elsewhere their torch references run (fp32 CPU: equal to the torch
backend to rel err <= 1e-5).

Differentiable: the kernels fall back to their torch references whenever an input
requires grad (``triton_kernels._dispatch.use_triton``), so autograd sees every op.
"""

from __future__ import annotations

from typing import Sequence

import torch

from ...triton_kernels.conv_epilogue import conv_epilogue_modulated
from ...triton_kernels.demod import DemodTable, demod_layers
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
        # every styled conv's weight_sq packed for the one-launch demodulation; the modules keep views of it
        convs = [n.id for n in self._nodes.values() if n.styled_conv]
        self._layer = {node_id: k for k, node_id in enumerate(convs)}
        self._demod = DemodTable([self._graphs[node_id].conv.weight_sq for node_id in convs])
        for node_id, k in self._layer.items():
            self._graphs[node_id].conv.weight_sq = self._demod.weight_sq(k)

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
            (d,) = demod_layers([inputs["style"]], self._demod, self._layer[graph_id])
            out = self._styled_node(graph_id, inputs["x"], inputs["style"], inputs["noise"], d)
        return {output: out}

    def _styled_node(self, node_id: str, x: torch.Tensor, style: torch.Tensor, noise: torch.Tensor,
                     demod: torch.Tensor) -> torch.Tensor:
        """A styled conv's own graph given its demodulation factors: ``x`` modulated here, the conv and epilogue."""
        out, _ = _styled_conv(self._graphs[node_id], modulate(x, style), demod, noise, None, True)
        return out

    def run_chain(self, steps: Sequence[Step], x: torch.Tensor,
                  rgb: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Consecutive nodes ``(node, style, noise)`` from ``x`` (and RGB); returns the last of each.

        The run follows the contract's plan (``graphs.run_plan``): where it links styled convs, each one's
        epilogue writes the next conv's modulated input, and ``x`` itself only where the run reads it. The
        demodulation factors of every styled conv of the run come from one launch before the first layer.
        """
        if not steps:
            return x, rgb
        first = chain_index(self.config, steps[0][0].id)
        convs = [(node.id, style) for node, style, _ in steps if node.styled_conv]
        factors = {}
        if convs:  # styled convs are consecutive layers of the table, as the run's nodes are of the chain
            ds = demod_layers([style for _, style in convs], self._demod, self._layer[convs[0][0]])
            factors = {node_id: d for (node_id, _), d in zip(convs, ds)}

        def run_node(node: LayerNode, x: torch.Tensor, style: torch.Tensor, noise: torch.Tensor | None,
                     skip: torch.Tensor | None) -> torch.Tensor:
            if node.styled_conv:
                return self._styled_node(node.id, x, style, noise, factors[node.id])
            return self.run(node.id, node_inputs(x, style, noise, skip))[node.output]

        def run_linked(step: PlanStep, x_mod: torch.Tensor, style: torch.Tensor, noise: torch.Tensor | None,
                       next_style: torch.Tensor | None) -> tuple[torch.Tensor | None, torch.Tensor | None]:
            node_id = linked_node_id(step.graph)
            return _styled_conv(self._graphs[node_id], x_mod, factors[node_id], noise, next_style, "x" in step.writes)

        return execute_plan(run_plan(self.config, first, first + len(steps)), steps, x, rgb, run_node, run_linked,
                            modulate)


def _styled_conv(module: StyledConvNode, x_mod: torch.Tensor, demod: torch.Tensor, noise: torch.Tensor,
                 next_style: torch.Tensor | None, write_x: bool) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """A styled conv on its modulated input and its demodulation factors: the shared-weight conv, then the fused
    epilogue.

    Returns ``(x or None, the next conv's modulated input or None)``.
    """
    y = module.conv.shared_conv(x_mod)
    return conv_epilogue_modulated(y, demod, noise, module.noise_weight, module.bias, module.conv.upsample,
                                   next_style, write_x)


def _to_rgb(module: ToRGBNode, x: torch.Tensor, style: torch.Tensor, skip: torch.Tensor | None) -> torch.Tensor:
    """ToRGB in one kernel: modulated 1x1 conv, bias, and the upsampled skip (None for to_rgb1)."""
    return to_rgb(x, style, module.conv.weight[:, :, 0, 0], module.bias, skip)
