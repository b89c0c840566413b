"""This project's own weight format: safetensors with the layout in the header metadata.

The tensors are the rosinality ``g_ema`` keys (blur kernels left out: they are constants);
``__metadata__`` holds ``format``, ``version``, the ``GeneratorConfig`` fields, the sigma
layout (``style_channels``, a JSON list) and the ``fingerprint`` of the model it was
converted from, so inversion codes made with the original file still load. A checkpoint's
mean latent, where it has one, is the tensor ``w_avg`` ``[style_dim]``. The header's layout
fields are checked against sane ranges before any tensor is read or module built. Reading a
safetensors file runs no code.
"""

from __future__ import annotations

import dataclasses
import json
import os
import struct

import torch

from .chain import style_channels
from .checkpoint import check_layout, mean_latent, weights_from_state_dict
from .config import GeneratorConfig
from ..errors import SoatError, os_error
from .weights import StyleGAN2Weights

FORMAT = "soat-stylegan2"
VERSION = "1"
SUFFIX = ".safetensors"
W_AVG = "w_avg"  # the optional mean-latent tensor


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
    """Write ``weights`` to ``path`` with the layout and ``fingerprint`` in the header (a failed write, such as a
    full disk, is one ``SoatError``)."""
    from safetensors import SafetensorError
    from safetensors.torch import save_file

    config = weights.config
    meta = {"format": FORMAT, "version": VERSION, "fingerprint": fingerprint,
            "style_channels": json.dumps(style_channels(config)),
            **{f.name: str(getattr(config, f.name)) for f in dataclasses.fields(config)}}
    tensors = {k: v.detach().to("cpu", torch.float32).contiguous() for k, v in weights.state_dict().items()}
    if weights.w_avg is not None:
        tensors[W_AVG] = weights.w_avg.detach().to("cpu", torch.float32).contiguous()
    try:
        save_file(tensors, path, metadata=meta)
    except OSError as e:
        raise os_error(e, f"writing {path!r}") from None
    except SafetensorError as e:  # the library's own wrapping of an I/O error
        raise SoatError(f"writing {path!r} failed: {(str(e).splitlines() or ['?'])[0][:200]}") from None


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
    except (KeyError, ValueError, RecursionError) as e:  # RecursionError: JSON nested absurdly deep
        raise SoatError(f"{path!r}: the soat header is incomplete or malformed ({type(e).__name__}: "
                        f"{str(e)[:100]})") from None
    check_layout(kwargs["style_dim"], kwargs["n_mlp"], f"{path!r} header")
    if not 0 < kwargs["lr_mlp"] <= 1:
        raise SoatError(f"{path!r} header: lr_mlp={kwargs['lr_mlp']!r} is outside (0, 1]; the file is corrupt")
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
            config = _config_from_metadata(f.metadata() or {}, path)  # before any tensor is read
            meta = f.metadata()
            sd = {k: f.get_tensor(k) for k in f.keys()}
    except (SafetensorError, OSError, ValueError) as e:
        if isinstance(e, SoatError):
            raise
        raise SoatError(f"cannot read {path!r} as a safetensors file ({e}); the file may be truncated") from None
    for name, given, stored in (("size", size, config.size),
                                ("channel_multiplier", channel_multiplier, config.channel_multiplier)):
        if given is not None and given != stored:
            raise SoatError(f"{path!r} holds a model with {name}={stored} but {name}={given} was given; "
                            "leave it out to use the file's")
    w_avg = mean_latent(sd.pop(W_AVG, None), config.style_dim, W_AVG, repr(path))
    return weights_from_state_dict(sd, config, path, w_avg), meta["fingerprint"]
