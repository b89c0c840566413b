"""Images out: tensors in [-1, 1] to uint8, PIL and PNG."""

from __future__ import annotations

import os
from typing import Sequence

import numpy as np
import torch
from PIL import Image


def to_uint8(images: torch.Tensor) -> np.ndarray:
    """``[B, 3, H, W]`` in [-1, 1] -> ``[B, H, W, 3]`` uint8, rounding half up (as torchvision's save_image)."""
    x = (images.detach().float().cpu().clamp(-1, 1) + 1) / 2
    return torch.floor(x * 255 + 0.5).clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).numpy()


def to_pil(images: torch.Tensor) -> list[Image.Image]:
    """One PIL RGB image per batch entry."""
    return [Image.fromarray(a) for a in to_uint8(images)]


def save_png(images: torch.Tensor, path: str | os.PathLike) -> list[str]:
    """Write ``[B, 3, H, W]`` as PNG: ``path`` for B = 1, else ``stem_{i}.png`` per image."""
    pils = to_pil(images)
    path = os.fspath(path)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    if len(pils) == 1:
        pils[0].save(path)
        return [path]
    stem, ext = os.path.splitext(path)
    paths = [f"{stem}_{i}{ext or '.png'}" for i in range(len(pils))]
    for p, im in zip(paths, pils):
        im.save(p)
    return paths


def hstack(images: Sequence[torch.Tensor], gap: int = 4) -> torch.Tensor:
    """Images of one height side by side with a white gap, for galleries: ``[B, 3, H, sum W + gaps]``."""
    parts = []
    for i, im in enumerate(images):
        if i:
            parts.append(torch.ones(im.shape[0], 3, im.shape[2], gap, dtype=im.dtype, device=im.device))
        parts.append(im)
    return torch.cat(parts, 3)
