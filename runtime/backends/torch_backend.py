"""The torch backend: the reference executor of the layer chain (CPU or CUDA, any dtype)."""

from __future__ import annotations

import torch

from .. import layers
from ..backend import NodeByNode
from ..capabilities import backend_spec
from ..chain import CONST, CONV_UP, TO_RGB, build_chain
from ..graphs import MAPPING, STYLES
from ..weights import StyleGAN2Weights


class TorchBackend(NodeByNode):
    """The paper's arithmetic, one graph at a time: ``run(graph_id, inputs) -> outputs``.

    Each styled layer is one grouped conv with per-sample weights, as the paper's code
    computes it (``layers.py``); every task's image equals the reference's to float
    rounding. Differentiable: inversion runs here.
    """

    name = "torch"
    differentiable, capturable = backend_spec(name).differentiable, backend_spec(name).capturable

    def __init__(self, weights: StyleGAN2Weights, device: torch.device | str = "cpu",
                 dtype: torch.dtype = torch.float32):
        self.config = weights.config
        self.device = torch.device(device)
        self.dtype = dtype
        self.weights = weights.to(device=device, dtype=dtype).eval().requires_grad_(False)
        self._nodes = {n.id: n for n in build_chain(self.config)}
        styled = build_chain(self.config)[1:]
        self._w_indices = [n.w_index for n in styled]
        self._modulations = [self.weights.node_module(n.id).conv.modulation for n in styled]

    def run(self, graph_id: str, inputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        if graph_id == MAPPING:
            return {"w": layers.mapping_network(inputs["z"], list(self.weights.style)[1:])}
        if graph_id == STYLES:
            return {"styles": layers.affine_styles(inputs["wplus"], self._w_indices, self._modulations)}
        node = self._nodes[graph_id]
        m = self.weights.node_module(graph_id)
        if node.kind == CONST:
            return {"x": m.input.repeat(inputs["style"].shape[0], 1, 1, 1)}
        if node.kind == TO_RGB:
            rgb = layers.to_rgb(inputs["x"], inputs["style"], m.conv.weight, m.conv.scale, m.bias, inputs.get("skip"))
            return {"rgb": rgb}
        x = layers.styled_conv(inputs["x"], inputs["style"], inputs["noise"], m.conv.weight, m.conv.scale,
                               m.noise.weight, m.activate.bias, upsample=node.kind == CONV_UP)
        return {"x": x}
