"""The layer chain: the one description of a StyleGAN2 synthesis network.

The torch backend, the exporter, every backend and every task read this list.
A node's id is its state-dict prefix in rosinality's layout (``conv1``,
``to_rgb1``, ``convs.{k}``, ``to_rgbs.{j}``; ``input`` for the constant), so
manifest ids, ONNX file names and module names agree.

Named tensors at a node boundary (batch B, spatial H x W of the node's input):

- ``style``  [B, in_channels]: the node's sigma entry (the constant uses only
  its batch size, as the reference's ``ConstantInput`` does).
- ``x``      [B, in_channels, H, W]: features in; out: [B, out_channels, H', W'].
- ``noise``  [1 or B, 1, H', W']: per-pixel noise of a styled conv.
- ``skip``   [B, 3, H, W]: the previous RGB (ToRGB nodes of the blocks).
- ``rgb``    [B, 3, H, W]: a ToRGB output.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from typing import Callable, Sequence

import torch

from .config import GeneratorConfig

CONST, CONV, CONV_UP, TO_RGB = "const", "conv", "conv_up", "to_rgb"


@dataclass(frozen=True)
class LayerNode:
    """One layer of the synthesis chain.

    Attributes:
        id: state-dict prefix (``convs.3``), also the graph and manifest name.
        kind: ``const``, ``conv`` (3x3 styled conv), ``conv_up`` (upsampling
            styled conv) or ``to_rgb``.
        inputs: named inputs, in graph order.
        outputs: named outputs (``x`` or ``rgb``).
        style_index: index into the sigma list (the constant borrows conv1's).
        w_index: index into W+ that feeds this node's affine.
        noise_index: index of ``noises.noise_{i}``, or None.
        in_channels, out_channels: feature channels.
        resolution: output side at the model's native size (4, 8, ... R).
        up: spatial factor from input to output (2 for conv_up; ToRGB of a
            block upsamples its skip by 2).
    """

    id: str
    kind: str
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]
    style_index: int
    w_index: int
    noise_index: int | None
    in_channels: int
    out_channels: int
    resolution: int
    up: int = 1

    @property
    def output(self) -> str:
        return self.outputs[0]

    @property
    def styled_conv(self) -> bool:
        """A styled conv (3x3 or upsampling): the nodes with a modulated input."""
        return self.kind in (CONV, CONV_UP)

    def output_size(self, height: int, width: int) -> tuple[int, int]:
        """Spatial size of the output for an input of ``height x width``."""
        return height * self.up, width * self.up


@lru_cache(maxsize=None)
def build_chain(config: GeneratorConfig) -> tuple[LayerNode, ...]:
    """The chain for ``config``: constant, conv1, to_rgb1, then (conv_up, conv, to_rgb) per block."""
    c4 = config.channels(4)
    nodes = [
        LayerNode("input", CONST, ("style",), ("x",), 0, 0, None, c4, c4, 4),
        LayerNode("conv1", CONV, ("x", "style", "noise"), ("x",), 0, 0, 0, c4, c4, 4),
        LayerNode("to_rgb1", TO_RGB, ("x", "style"), ("rgb",), 1, 1, None, c4, 3, 4),
    ]
    in_ch = c4
    for b in range(config.num_blocks):
        res = 2 ** (b + 3)
        out_ch = config.channels(res)
        s = 2 + 3 * b
        nodes += [
            LayerNode(f"convs.{2 * b}", CONV_UP, ("x", "style", "noise"), ("x",), s, 1 + 2 * b, 1 + 2 * b,
                      in_ch, out_ch, res, up=2),
            LayerNode(f"convs.{2 * b + 1}", CONV, ("x", "style", "noise"), ("x",), s + 1, 2 + 2 * b, 2 + 2 * b,
                      out_ch, out_ch, res),
            LayerNode(f"to_rgbs.{b}", TO_RGB, ("x", "skip", "style"), ("rgb",), s + 2, 3 + 2 * b, None,
                      out_ch, 3, res),
        ]
        in_ch = out_ch
    return tuple(nodes)


def style_channels(config: GeneratorConfig) -> list[int]:
    """Length of each sigma entry, in sigma-list order (= each styled node's input channels)."""
    return [n.in_channels for n in build_chain(config)[1:]]


# (node, style, noise or None): one step of a run of consecutive nodes
Step = tuple["LayerNode", torch.Tensor, "torch.Tensor | None"]
# (node, x, style, noise, skip) -> the node's output
RunNode = Callable[..., torch.Tensor]


def node_inputs(x: torch.Tensor, style: torch.Tensor, noise: torch.Tensor | None = None,
                skip: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
    """A node's named inputs (``noise`` and ``skip`` only where the node takes them)."""
    inputs = {"x": x, "style": style}
    if noise is not None:
        inputs["noise"] = noise
    if skip is not None:
        inputs["skip"] = skip
    return inputs


def advance(node: LayerNode, out: torch.Tensor, x: torch.Tensor,
            rgb: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The chain's ``(features, RGB)`` after ``node`` gave ``out``: a ToRGB's output is the new RGB,
    any other node's the new features."""
    return (x, out) if node.kind == TO_RGB else (out, rgb)


def run_steps(run_node: RunNode, steps: Sequence[Step], x: torch.Tensor,
              rgb: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Run consecutive nodes one at a time; returns the last features and RGB."""
    for node, style, noise in steps:
        x, rgb = advance(node, run_node(node, x, style, noise, rgb), x, rgb)
    return x, rgb
