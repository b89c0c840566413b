"""The torch backend: the reference executor of the layer chain (CPU or CUDA)."""

from __future__ import annotations

from typing import Sequence

import torch

from .. import layers
from ...triton_kernels.modulate import modulate
from ..chain import CONST, CONV, CONV_UP, TO_RGB, LayerNode, Step, build_chain, node_inputs, run_steps
from ..weights import StyleGAN2Weights

MAPPING, STYLES = "mapping", "styles"


class TorchBackend:
    """Runs one graph at a time on given tensors: ``run(node_id, inputs) -> outputs``.

    Graph ids are the chain's node ids plus ``mapping`` (``z [B, 512] -> w [B, 512]``)
    and ``styles`` (``wplus [B, n_latent, 512] -> styles [B, total]``).

    Two forms of the same arithmetic: the reference form (one grouped conv per layer
    with per-sample weights, as the paper's code) and the fast form (``fast=True``;
    the default for fp16/bf16): all samples share one dense conv weight, the input is
    modulated and the output demodulated, tensors channels_last. The fast form is the
    exported graphs' modules (``graph_modules.py``), so torch, ONNX and TensorRT run
    one definition.
    """

    name = "torch"

    def __init__(self, weights: StyleGAN2Weights, device: torch.device | str = "cpu",
                 dtype: torch.dtype = torch.float32, fast: bool | None = None):
        self.config = weights.config
        self.device = torch.device(device)
        self.dtype = dtype
        self.fast = dtype != torch.float32 if fast is None else fast
        self._nodes = {n.id: n for n in build_chain(self.config)}
        self._fast_graphs = self._build_fast_graphs(weights) if self.fast else {}
        self.weights = weights.to(device=device, dtype=dtype).eval().requires_grad_(False)
        styled = build_chain(self.config)[1:]
        self._w_indices = [n.w_index for n in styled]
        self._modulations = [self.weights.node_module(n.id).conv.modulation for n in styled]

    def _build_fast_graphs(self, weights: StyleGAN2Weights) -> dict:
        from ..graph_modules import graph_module
        graphs = {}
        for node_id in self._nodes:
            m = graph_module(weights, node_id).to(self.device, self.dtype).eval().requires_grad_(False)
            m.fused = True
            graphs[node_id] = m.to(memory_format=torch.channels_last)
        return graphs

    def run(self, node_id: str, inputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        if node_id == MAPPING:
            return {"w": layers.mapping_network(inputs["z"], list(self.weights.style)[1:])}
        if node_id == STYLES:
            return {"styles": layers.affine_styles(inputs["wplus"], self._w_indices, self._modulations)}
        node = self._nodes[node_id]
        if self.fast:
            out = self._fast_graphs[node_id](*(inputs[name] for name in node.inputs))
            if node.kind == CONST:
                out = out.contiguous(memory_format=torch.channels_last)
            return {node.output: out}
        m = self.weights.node_module(node_id)
        if node.kind == CONST:
            return {"x": m.input.repeat(inputs["style"].shape[0], 1, 1, 1)}
        if node.kind == TO_RGB:
            rgb = layers.to_rgb(inputs["x"], inputs["style"], m.conv.weight, m.conv.scale, m.bias, inputs.get("skip"))
            return {"rgb": rgb}
        x = layers.styled_conv(inputs["x"], inputs["style"], inputs["noise"], m.conv.weight, m.conv.scale,
                               m.noise.weight, m.activate.bias, upsample=node.kind == CONV_UP)
        return {"x": x}

    def run_chain(self, steps: Sequence[Step], x: torch.Tensor,
                  rgb: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Consecutive nodes ``(node, style, noise)`` from features ``x`` (and RGB); returns the last of each.

        In the fast form each layer's epilogue also writes the next conv's modulated input,
        so a run of layers makes no separate modulation pass (nor its rounding).
        """
        if not self.fast:
            return run_steps(self._run_node, steps, x, rgb)
        x_mod = None
        for k, (node, style, noise) in enumerate(steps):
            if node.kind == TO_RGB:
                rgb = self._run_node(node, x, style, noise, rgb)
                continue
            if node.kind == CONST:
                x = self._run_node(node, x, style, noise, rgb)
                continue
            later = steps[k + 1:]
            following = next((s for s in later if s[0].kind in (CONV, CONV_UP)), None)
            # x itself is needed by a ToRGB right after this layer, or as the run's result
            write_x = following is None or later[0][0].kind == TO_RGB
            if x_mod is None:
                x_mod = modulate(x, style)
            x, x_mod = self._fast_graphs[node.id].fused_step(x_mod, style, noise,
                                                             None if following is None else following[1], write_x)
        return x, rgb

    def _run_node(self, node: LayerNode, x: torch.Tensor, style: torch.Tensor, noise: torch.Tensor | None,
                  skip: torch.Tensor | None) -> torch.Tensor:
        return self.run(node.id, node_inputs(x, style, noise, skip))[node.output]
