"""Checkpoint reading: rosinality/SOAT ``{"g_ema": state_dict}`` torch files.

Files are read with ``torch.load(weights_only=True)``: nothing in a file can run code.
Every failure is a ``SoatError`` naming the file, the problem and the fix.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import pickle
import re
import zipfile

import torch

from .config import GeneratorConfig
from ..errors import SoatError
from .weights import StyleGAN2Weights

_BLUR_KEY = re.compile(r"^(convs\.\d+\.conv\.blur\.kernel|to_rgbs\.\d+\.upsample\.kernel)$")
# torch's weights-only unpickler refusing a global: the file asks to import and call code
_NEEDS_CODE = re.compile(r"Unsupported global|whose module \S+ is blocked")


def file_sha256(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def read_torch_file(path: str) -> object:
    """``torch.load`` restricted to tensors and plain containers, with clear errors."""
    if not os.path.exists(path):
        raise SoatError(f"checkpoint not found: {path!r}; give the path of a .pt file (or 'random' for the built-in model)")
    if os.path.isdir(path):
        raise SoatError(f"{path!r} is a folder; give a checkpoint file, or an export folder with backend='onnxruntime'")
    try:
        # rosinality's train.py stores its argparse.Namespace beside the weights: a plain container, allowed
        with torch.serialization.safe_globals([argparse.Namespace]):
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        if _NEEDS_CODE.search(str(e)):
            raise SoatError(f"{path!r} holds Python objects that need code execution to unpickle; refusing to run them. "
                            "Re-save it as a plain state dict: torch.save({'g_ema': g_ema.state_dict()}, path)") from None
        raise SoatError(f"{path!r} is not a PyTorch checkpoint (its pickle data is malformed); "
                        "expected a torch.save file with a 'g_ema' state dict") from None
    except Exception as e:  # untrusted bytes can fail anywhere in torch.load (KeyError, IndexError, ...): a bad file
        msg = f"{type(e).__name__}: {str(e).splitlines()[0]}" if str(e) else type(e).__name__
        hint = "the file looks truncated or corrupt; download or save it again" \
            if _looks_truncated(path) else "expected a torch.save file with a 'g_ema' state dict"
        raise SoatError(f"cannot read {path!r} as a PyTorch checkpoint ({msg}); {hint}") from None


def _looks_truncated(path: str) -> bool:
    with open(path, "rb") as f:
        head = f.read(4)
    return head.startswith(b"PK") and not zipfile.is_zipfile(path)


def extract_g_ema(obj: object, path: str) -> dict[str, torch.Tensor]:
    if not isinstance(obj, dict) or "g_ema" not in obj:
        keys = sorted(map(str, obj.keys()))[:8] if isinstance(obj, dict) else type(obj).__name__
        raise SoatError(f"{path!r} has no 'g_ema' entry (found {keys}); expected a rosinality/SOAT checkpoint "
                        "{'g_ema': state_dict, ...}")
    sd = obj["g_ema"]
    if not isinstance(sd, dict) or not all(isinstance(v, torch.Tensor) for v in sd.values()):
        raise SoatError(f"{path!r}: 'g_ema' is not a state dict of tensors")
    return {k: v for k, v in sd.items() if not _BLUR_KEY.match(k)}


def infer_config(sd: dict[str, torch.Tensor], path: str, size: int | None = None,
                 channel_multiplier: int | None = None) -> GeneratorConfig:
    """Size from the number of ToRGB blocks, channel multiplier from the 64x64 width, MLP from ``style.*``."""
    def shape(key: str) -> tuple[int, ...]:
        if key not in sd:
            raise SoatError(f"{path!r}: key {key!r} is missing; this is not a StyleGAN2 generator in rosinality's layout")
        return tuple(sd[key].shape)

    blocks = len({k.split(".")[1] for k in sd if k.startswith("to_rgbs.")})
    inferred_size = 4 * 2 ** blocks
    mlp = sorted({int(k.split(".")[1]) for k in sd if re.match(r"^style\.\d+\.weight$", k)})
    style_dim = shape("style.1.weight")[0] if mlp else shape("conv1.conv.modulation.weight")[1]
    cm = None
    if inferred_size >= 64:
        c64 = shape(f"convs.{2 * 3}.conv.weight")[1]  # the first conv of the 64x64 block
        if c64 % 256 or c64 // 256 not in (1, 2):
            raise SoatError(f"{path!r}: 64x64 layers have {c64} channels, which fits no channel multiplier (1 or 2)")
        cm = c64 // 256
    if size is not None and size != inferred_size:
        raise SoatError(f"{path!r} holds a {inferred_size}px generator ({blocks} ToRGB blocks) but size={size} was given; "
                        "leave size out to infer it")
    if channel_multiplier is not None and cm is not None and channel_multiplier != cm:
        raise SoatError(f"{path!r} has channel_multiplier {cm} but {channel_multiplier} was given; leave it out to infer it")
    return GeneratorConfig(size=inferred_size, channel_multiplier=cm or channel_multiplier or 2,
                           style_dim=style_dim, n_mlp=len(mlp) or 8)


def weights_from_state_dict(sd: dict[str, torch.Tensor], config: GeneratorConfig, path: str) -> StyleGAN2Weights:
    """Build the weights module on ``meta`` and assign the checkpoint tensors after strict key/shape checks."""
    with torch.device("meta"):
        weights = StyleGAN2Weights(config)
    expected = weights.state_dict()
    missing = sorted(set(expected) - set(sd))
    unexpected = sorted(set(sd) - set(expected))
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"missing {len(missing)} keys (e.g. {missing[:3]})")
        if unexpected:
            parts.append(f"unexpected {len(unexpected)} keys (e.g. {unexpected[:3]})")
        raise SoatError(f"{path!r} does not match a StyleGAN2 {config.size}px generator: {'; '.join(parts)}. "
                        "Check size/channel_multiplier, or that this is a rosinality-format g_ema")
    for k, v in expected.items():
        if tuple(sd[k].shape) != tuple(v.shape):
            raise SoatError(f"{path!r}: {k} has shape {list(sd[k].shape)}, expected {list(v.shape)} for "
                            f"size={config.size}, channel_multiplier={config.channel_multiplier}")
    weights.load_state_dict({k: sd[k].float() for k in expected}, assign=True)
    return weights


def load_checkpoint(path: str, size: int | None = None,
                    channel_multiplier: int | None = None) -> tuple[StyleGAN2Weights, str]:
    """Read a rosinality/SOAT checkpoint; returns the weights and the file's sha256."""
    sd = extract_g_ema(read_torch_file(path), path)
    config = infer_config(sd, path, size, channel_multiplier)
    return weights_from_state_dict(sd, config, path), file_sha256(path)
