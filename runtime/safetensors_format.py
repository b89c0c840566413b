"""This project's own weight format: safetensors with the layout in the header metadata.

The tensors are the rosinality ``g_ema`` keys (blur kernels left out: they are constants);
``__metadata__`` holds ``format``, ``version``, the ``GeneratorConfig`` fields, the sigma
layout (``style_channels``, a JSON list) and the ``fingerprint`` of the model it was
converted from, so inversion codes made with the original file still load. Reading a
safetensors file runs no code.
"""

from __future__ import annotations

import dataclasses
import json
import os
import struct

import torch

from .chain import style_channels
from .checkpoint import weights_from_state_dict
from .config import GeneratorConfig
from ..errors import SoatError
from .weights import StyleGAN2Weights

FORMAT = "soat-stylegan2"
VERSION = "1"
SUFFIX = ".safetensors"


def is_safetensors(path: str) -> bool:
    """A ``.safetensors`` name, or a file that starts like one (8-byte header length, then ``{``)."""
    if path.lower().endswith(SUFFIX):
        return True
    if not os.path.isfile(path):
        return False
    with open(path, "rb") as f:
        head = f.read(9)
    return len(head) == 9 and head[8:9] == b"{" and struct.unpack("<Q", head[:8])[0] < os.path.getsize(path)


def save_safetensors(weights: StyleGAN2Weights, path: str, fingerprint: str) -> None:
    """Write ``weights`` to ``path`` with the layout and ``fingerprint`` in the header."""
    from safetensors.torch import save_file

    config = weights.config
    meta = {"format": FORMAT, "version": VERSION, "fingerprint": fingerprint,
            "style_channels": json.dumps(style_channels(config)),
            **{f.name: str(getattr(config, f.name)) for f in dataclasses.fields(config)}}
    tensors = {k: v.detach().to("cpu", torch.float32).contiguous() for k, v in weights.state_dict().items()}
    save_file(tensors, path, metadata=meta)


def _config_from_metadata(meta: dict[str, str], path: str) -> GeneratorConfig:
    if meta.get("format") != FORMAT or "fingerprint" not in meta:
        raise SoatError(f"{path!r} is a safetensors file but not a soat model (header format "
                        f"{meta.get('format')!r}, expected {FORMAT!r}); convert the checkpoint with `soat convert`")
    if meta.get("version") != VERSION:
        raise SoatError(f"{path!r} is soat format version {meta.get('version')!r}; this soat reads version {VERSION}")
    try:
        kwargs = {f.name: (float if f.name == "lr_mlp" else int)(meta[f.name])
                  for f in dataclasses.fields(GeneratorConfig)}
        layout = json.loads(meta["style_channels"])
    except (KeyError, ValueError) as e:
        raise SoatError(f"{path!r}: the soat header is incomplete or malformed ({e!r})") from None
    config = GeneratorConfig(**kwargs)
    if layout != style_channels(config):
        raise SoatError(f"{path!r}: the header's sigma layout {layout} does not match a {config.size}px "
                        f"channel_multiplier {config.channel_multiplier} generator")
    return config


def load_safetensors(path: str, size: int | None = None,
                     channel_multiplier: int | None = None) -> tuple[StyleGAN2Weights, str]:
    """Read a soat safetensors file; returns the weights and the fingerprint stored in its header."""
    from safetensors import SafetensorError, safe_open

    if not os.path.isfile(path):
        raise SoatError(f"checkpoint not found: {path!r}; give a .safetensors file written by `soat convert`")
    try:
        with safe_open(path, framework="pt") as f:
            meta = f.metadata() or {}
            sd = {k: f.get_tensor(k) for k in f.keys()}
    except (SafetensorError, OSError, ValueError) as e:
        raise SoatError(f"cannot read {path!r} as a safetensors file ({e}); the file may be truncated") from None
    config = _config_from_metadata(meta, path)
    for name, given, stored in (("size", size, config.size),
                                ("channel_multiplier", channel_multiplier, config.channel_multiplier)):
        if given is not None and given != stored:
            raise SoatError(f"{path!r} holds a model with {name}={stored} but {name}={given} was given; "
                            "leave it out to use the file's")
    return weights_from_state_dict(sd, config, path), meta["fingerprint"]
