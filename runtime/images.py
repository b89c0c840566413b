"""Images out: tensors in [-1, 1] to uint8, PIL and PNG."""

from __future__ import annotations

import os
from typing import Sequence

import numpy as np
import torch
from PIL import Image

from ..errors import SoatError
from .checks import check_images
from .files import atomic_output


def uint8_levels(images: torch.Tensor) -> torch.Tensor:
    """Values in [-1, 1] -> uint8 levels of the same shape, on the same device: clamped, then rounded half
    up (as torchvision's save_image). The one rounding of the Python side (libsoat mirrors it)."""
    x = (images.detach().float().clamp(-1, 1) + 1) / 2
    return torch.floor(x * 255 + 0.5).clamp(0, 255).to(torch.uint8)


def to_uint8(images: torch.Tensor) -> np.ndarray:
    """``[B, 3, H, W]`` (or one ``[3, H, W]``) in [-1, 1] -> ``[B, H, W, 3]`` uint8 on the host (``uint8_levels``)."""
    images = check_images(images)
    return uint8_levels(images.detach().float().cpu()).permute(0, 2, 3, 1).numpy()


def device_uint8(parts: Sequence[torch.Tensor], whole: bool | None = None) -> torch.Tensor:
    """``[1, 3, R, w_i]`` images in [-1, 1] -> one ``[R, sum w_i, 3]`` uint8 on their device, side by side.

    Rounds as ``to_uint8`` (``uint8_levels``), so the host gets the same bytes after one copy.
    ``whole`` (default: off the CPU) converts them in one pass of a few kernels; on the CPU part by
    part is faster (each part stays in cache)."""
    if whole is None:
        whole = parts[0].device.type != "cpu"
    if whole:
        return uint8_levels(torch.cat([p[0] for p in parts], dim=2)).permute(1, 2, 0).contiguous()
    out = torch.empty(parts[0].shape[2], sum(p.shape[3] for p in parts), 3, dtype=torch.uint8, device=parts[0].device)
    col = 0
    for p in parts:
        out[:, col:col + p.shape[3]] = uint8_levels(p[0]).permute(1, 2, 0)
        col += p.shape[3]
    return out


def to_pil(images: torch.Tensor) -> list[Image.Image]:
    """One PIL RGB image per batch entry."""
    return [Image.fromarray(a) for a in to_uint8(images)]


def save_png(images: torch.Tensor, path: str | os.PathLike) -> list[str]:
    """Write ``[B, 3, H, W]`` (or one image ``[3, H, W]``) in [-1, 1] as PNG: ``path`` for B = 1, else
    ``stem_{i}.png`` per image.

    ``path`` must end in ``.png``. Each file is written under a temporary name in the same folder
    and renamed, so an interrupted run leaves no partial PNG. Images with NaN or infinite values
    are refused (they would be saved as black), and so are other channel counts and integer
    tensors (uint8 pixels would be read as [-1, 1] values: a grey image), each with one line."""
    path = os.fspath(path)
    if os.path.splitext(path)[1].lower() != ".png":
        raise SoatError(f"{path!r} must end in .png (save_png writes PNG only)")
    images = check_images(images)
    if not torch.isfinite(images.detach()).all():
        raise SoatError(f"the image for {path!r} has NaN or infinite values; nothing was written")
    pils = to_pil(images)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    stem, ext = os.path.splitext(path)
    paths = [path] if len(pils) == 1 else [f"{stem}_{i}{ext}" for i in range(len(pils))]
    for p, im in zip(paths, pils):
        with atomic_output(p) as tmp:
            im.save(tmp, format="PNG")
    return paths


def hstack(images: Sequence[torch.Tensor], gap: int = 4) -> torch.Tensor:
    """Images of one height side by side with a white gap, for galleries: ``[B, 3, H, sum W + gaps]``."""
    parts = []
    for i, im in enumerate(images):
        if i:
            parts.append(torch.ones(im.shape[0], 3, im.shape[2], gap, dtype=im.dtype, device=im.device))
        parts.append(im)
    return torch.cat(parts, 3)
