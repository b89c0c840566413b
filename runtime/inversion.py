"""GAN inversion into sigma space with a Gaussian prior (docs/contract.md#inversion).

A flat sigma ``[B, total]`` is fitted to B targets at once with Adam (lr 0.05 under
``lr_schedule``), fixed noise, and per image the loss
``20 * LPIPS_vgg + MSE + prior_weight * sum_d (sigma_d - mu_d)^2 / var_d``, where mu and
var are the mean and variance of sigma over 10,000 random z (``sigma_prior``, cached on
the generator). It starts from the mean style: mu, which is affine(mean w) over those z
(the affine maps are linear), i.e. sigma_bar estimated on the prior's samples, so the
start is the prior's centre and no second pass over 50,000 z is needed. Differences from
the reference, documented in docs/contract.md#differences: the schedule is applied (the
reference computes it but runs at a constant 0.05), the prior is taken per image (the
reference averages B x B cross terms), and without LPIPS weights on disk the loss is MSE + prior.
"""

from __future__ import annotations

import functools
import math
import os
import warnings
from dataclasses import dataclass
from typing import Any, Callable, Sequence, Union

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from tqdm.auto import tqdm

from ..errors import SoatError, install_hint
from .styles import flatten_styles

PRIOR_SAMPLES = 10_000
PRIOR_SEED = 0x51C4A
LOSS_SIZE = 256  # targets and generated images larger than this are compared at 256
LPIPS_WEIGHT = 20.0
MIN_SIDE = 8
LPIPS_MIN_SIDE = 16  # VGG16's fourth max-pool, before relu5_3, needs 16 px
VGG16_FILE = "vgg16-397923af.pth"  # torchvision's ImageNet VGG16, the backbone LPIPS_vgg expects
VGG16_URL = "https://download.pytorch.org/models/" + VGG16_FILE
VGG16_BYTES = 553_433_881
VGG16_SHA256 = "397923af8e79cdbb6a7127f12361acd7a2f83e06b05044ddf496e83de57a5bf0"  # its name carries the first 8
VAR_FLOOR = 1e-12  # a sigma entry that never varies (a zero affine row) must not divide by zero

ImageArg = Union[str, os.PathLike, Image.Image, torch.Tensor, Sequence[Union[str, os.PathLike, Image.Image]]]
Perceptual = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def lr_schedule(step: int, steps: int, base_lr: float = 0.05, rampup: float = 0.05, rampdown: float = 0.25) -> float:
    """Learning rate at ``step`` (0-based) of ``steps``: a linear ramp-up over the first ``rampup``
    fraction of the steps and a cosine ramp-down to 0 over the last ``rampdown`` fraction."""
    t = step / steps
    down = 0.5 - 0.5 * math.cos(math.pi * min(1.0, (1.0 - t) / rampdown))
    return base_lr * down * min(1.0, t / rampup)


@dataclass(frozen=True)
class SigmaPrior:
    """A diagonal Gaussian over flat sigma: ``mean`` and ``var``, each ``[1, total]``."""

    mean: torch.Tensor
    var: torch.Tensor

    def mahalanobis(self, flat: torch.Tensor) -> torch.Tensor:
        """``(sigma - mu)^T Sigma^-1 (sigma - mu)`` per row: ``[B, total] -> [B]``."""
        return ((flat - self.mean).square() / self.var).sum(1)


def sigma_prior(G: Any) -> SigmaPrior:
    """mu and diag Sigma of flat sigma over 10,000 z from a private RNG; computed once per generator."""
    prior = getattr(G, "_sigma_prior", None)
    if prior is None:
        z = torch.randn(PRIOR_SAMPLES, G.config.style_dim, generator=torch.Generator().manual_seed(PRIOR_SEED))
        total = torch.zeros(2, sum(G.style_channels), dtype=torch.float64, device=G.device)
        with torch.no_grad():
            for chunk in z.split(1000):
                s = flatten_styles(G.styles(chunk)).double()
                total += torch.stack([s.sum(0), s.square().sum(0)])
        mean = total[0] / PRIOR_SAMPLES
        var = (total[1] - PRIOR_SAMPLES * mean.square()) / (PRIOR_SAMPLES - 1)
        prior = SigmaPrior(mean[None].float(), var.clamp_min(VAR_FLOOR)[None].float())
        G._sigma_prior = prior
    return prior


# ---- targets -----------------------------------------------------------------------------------

def _open_image(item: Any) -> tuple[Image.Image, str]:
    if isinstance(item, Image.Image):
        return item.convert("RGB"), "the PIL image"
    if not isinstance(item, (str, os.PathLike)):
        raise SoatError(f"images: {type(item).__name__} is not an image; give file paths, PIL images or a "
                        "[B, 3, H, W] tensor in [-1, 1]")
    path = os.fspath(item)
    try:
        with Image.open(path) as im:
            return im.convert("RGB"), repr(path)
    except (OSError, ValueError, Image.DecompressionBombError) as e:
        raise SoatError(f"images: cannot read {path!r} as an image ({e}); give PNG, JPEG or another format "
                        "Pillow reads") from None


def _check_side(height: int, width: int, name: str) -> None:
    if min(height, width) < MIN_SIDE:
        raise SoatError(f"images: {name} is {width}x{height} pixels; inversion needs at least {MIN_SIDE} px a side")


def _pil_target(img: Image.Image, side: int) -> torch.Tensor:
    """Shorter side resized to ``side`` (bilinear), centre crop, ``[3, side, side]`` in [-1, 1]."""
    w, h = img.size
    if (w, h) != (side, side):
        new = (side, int(side * h / w)) if w <= h else (int(side * w / h), side)
        img = img.resize(new, Image.BILINEAR)
        left, top = int(round((new[0] - side) / 2.0)), int(round((new[1] - side) / 2.0))
        img = img.crop((left, top, left + side, top + side))
    return torch.from_numpy(np.asarray(img, dtype=np.float32)).permute(2, 0, 1) / 127.5 - 1.0


def _tensor_targets(images: torch.Tensor, side: int) -> torch.Tensor:
    """``[B, 3, H, W]`` (or ``[3, H, W]``) in [-1, 1]: the same geometry as files, on the tensor."""
    x = images[None] if images.ndim == 3 else images
    if x.ndim != 4 or x.shape[1] != 3 or x.shape[0] == 0:
        raise SoatError(f"images must be a tensor [B, 3, H, W] in [-1, 1]; got {list(images.shape)}")
    _check_side(x.shape[2], x.shape[3], "the tensor")
    if not torch.isfinite(x).all():
        raise SoatError("images contains NaN or inf")
    x = x.detach().float().cpu()
    h, w = x.shape[-2:]
    if (h, w) == (side, side):
        return x
    new = (int(side * h / w), side) if w <= h else (side, int(side * w / h))
    x = F.interpolate(x, size=new, mode="bilinear", align_corners=False, antialias=True)
    top, left = int(round((new[0] - side) / 2.0)), int(round((new[1] - side) / 2.0))
    return x[..., top:top + side, left:left + side]


def load_targets(images: ImageArg, size: int) -> torch.Tensor:
    """Targets for a ``size`` px model: ``[B, 3, r, r]`` fp32 in [-1, 1] on the CPU, r = min(size, 256).

    Args:
        images: a path or PIL image (any mode: RGBA, L, P... become RGB), a list of them, or a
            tensor ``[B, 3, H, W]`` in [-1, 1]. Each is resized (shorter side to r) and centre-cropped.
    """
    side = min(size, LOSS_SIZE)
    if isinstance(images, torch.Tensor):
        return _tensor_targets(images, side)
    if isinstance(images, (str, os.PathLike, Image.Image)):
        items = [images]
    elif isinstance(images, (list, tuple)):
        items = list(images)
    else:
        raise SoatError(f"images must be paths, PIL images (or a list of them) or a [B, 3, H, W] tensor; "
                        f"got {type(images).__name__}")
    if not items:
        raise SoatError("images is empty; give at least one image")
    targets = []
    for item in items:
        img, name = _open_image(item)
        _check_side(img.size[1], img.size[0], name)
        targets.append(_pil_target(img, side))
    return torch.stack(targets)


# ---- perceptual loss ---------------------------------------------------------------------------

def _lpips_problem(weights: str, side: int) -> str | None:
    """Why LPIPS cannot run (without a download, on ``side`` px images) and what to do, or None."""
    if side < LPIPS_MIN_SIDE:
        return f"LPIPS_vgg needs images of at least {LPIPS_MIN_SIDE} px, the loss here is at {side} px"
    problems = []
    try:
        import lpips  # noqa: F401  (optional dependency)
    except ImportError as e:
        problems.append(f"the lpips package cannot be imported ({e}): {install_hint('lpips')}")
    if not os.path.isfile(weights):
        problems.append(f"no VGG16 weights at {weights}: put {VGG16_FILE} there ({VGG16_BYTES:,} bytes, SHA-256 "
                        f"{VGG16_SHA256}, from {VGG16_URL})")
    return "; ".join(problems) or None


@functools.lru_cache(maxsize=4)
def _load_lpips(weights: str, device: str) -> torch.nn.Module:
    """LPIPS_vgg with its VGG16 backbone read from ``weights``: nothing is downloaded."""
    import lpips

    # pnet_rand builds the backbone without fetching it; the linear heads ship inside the package.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torchvision's deprecation notices for lpips' `pretrained=` calls
        model = lpips.LPIPS(net="vgg", pretrained=True, pnet_rand=True, verbose=False)
    state = torch.load(weights, map_location="cpu", weights_only=True)
    try:
        with torch.no_grad():
            for name, p in model.net.named_parameters():  # slice{n}.{i}.* holds torchvision's features.{i}.*
                _, index, leaf = name.split(".")
                p.copy_(state[f"features.{index}.{leaf}"])
    except (KeyError, RuntimeError, TypeError) as e:
        raise SoatError(f"lpips={weights!r} is not torchvision's VGG16 state dict ({e!r})") from None
    return model.eval().requires_grad_(False).to(device)


def perceptual_loss(lpips: Any, device: torch.device, side: int = LOSS_SIZE) -> Perceptual | None:
    """Resolve the ``lpips`` option into ``f(generated, target) -> [B]`` distances on ``side`` px images, or None.

    ``"auto"``: LPIPS_vgg when the lpips package and ``<torch hub>/checkpoints/vgg16-397923af.pth``
    are present, else one warning (saying what is missing and where it goes) and None; ``False``/``"off"``:
    None; a path: the VGG16 weights file (required); a callable: used as the perceptual distance.
    """
    if callable(lpips):
        return lpips
    if lpips is False or lpips is None or lpips == "off":
        return None
    if lpips == "auto":
        weights = os.path.join(torch.hub.get_dir(), "checkpoints", VGG16_FILE)
        problem = _lpips_problem(weights, side)
        if problem:
            warnings.warn(f"LPIPS is off, so inverting with MSE + prior only, which fits colours but blurs detail: "
                          f"{problem}", stacklevel=4)
            return None
        return _load_lpips(weights, str(device))
    if isinstance(lpips, (str, os.PathLike)):
        problem = _lpips_problem(os.fspath(lpips), side)
        if problem:
            raise SoatError(f"lpips={os.fspath(lpips)!r}: {problem}")
        return _load_lpips(os.fspath(lpips), str(device))
    raise SoatError(f"lpips={lpips!r} is not an option; use 'auto', False, a VGG16 weights path or a callable")


# ---- optimisation ------------------------------------------------------------------------------

def inversion_loss(G: Any, flat: torch.Tensor, target: torch.Tensor, noise_at: Any, perceptual: Perceptual | None,
                   prior: SigmaPrior, prior_weight: float) -> torch.Tensor:
    """Per-image loss ``[B]`` of flat sigma ``[B, total]`` against ``target [B, 3, r, r]``."""
    styles = G.unflatten_styles(flat.to(G.dtype))
    _, rgb = G.run_chain(styles, noise_at, G.chain[1:], G.constant(styles))
    rgb = rgb.float()  # unclamped, as in the reference: a clamp would stop gradients at saturated pixels
    if rgb.shape[-1] > target.shape[-1]:
        rgb = F.avg_pool2d(rgb, rgb.shape[-1] // target.shape[-1])  # area downsampling to 256
    loss = (rgb - target).square().mean((1, 2, 3))
    if perceptual is not None:
        loss = loss + LPIPS_WEIGHT * perceptual(rgb, target).reshape(-1)
    if prior_weight:
        loss = loss + prior_weight * prior.mahalanobis(flat)
    return loss


def _check_options(steps: Any, prior_weight: Any, lr: Any) -> None:
    if not isinstance(steps, int) or isinstance(steps, bool) or steps < 1:
        raise SoatError(f"steps={steps!r} must be an integer >= 1")
    for name, value in (("prior_weight", prior_weight), ("lr", lr)):
        if not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
            raise SoatError(f"{name}={value!r} must be a finite number >= 0")


def invert(G: Any, images: ImageArg, steps: int = 1000, lpips: Any = "auto", prior_weight: float = 1e-3,
           lr: float = 0.05, progress: bool = False) -> torch.Tensor:
    """Fit flat sigma codes to images; returns ``[B, total]`` on G's device (``G.unflatten_styles`` for a list).

    Args:
        G: a ``Generator`` on a differentiable backend (torch or fast).
        images: see ``load_targets``.
        steps: Adam steps.
        lpips: see ``perceptual_loss``.
        prior_weight: weight of the Mahalanobis prior (0 turns it off).
        lr: peak learning rate of ``lr_schedule``.
        progress: show a progress bar with the mean loss.
    """
    if not G.backend.differentiable:
        raise SoatError(f"inversion needs gradients, which the {G.backend.name} backend does not give; "
                        "load the model with backend='torch' or 'fast'")
    _check_options(steps, prior_weight, lr)
    target = load_targets(images, G.size).to(G.device)
    perceptual = perceptual_loss(lpips, G.device, target.shape[-1])
    prior = sigma_prior(G)
    flat = prior.mean.repeat(target.shape[0], 1).requires_grad_(True)  # the mean style
    opt = torch.optim.Adam([flat], lr=lr)
    noise_at = G.noise_fn("fixed")
    bar = tqdm(range(steps), desc="invert", disable=not progress, dynamic_ncols=True)
    with torch.enable_grad():
        for step in bar:
            opt.param_groups[0]["lr"] = lr_schedule(step, steps, lr)
            loss = inversion_loss(G, flat, target, noise_at, perceptual, prior, prior_weight)
            opt.zero_grad(set_to_none=True)
            loss.sum().backward()  # a sum keeps the B fits independent: each code sees its own gradient
            opt.step()
            if progress:
                bar.set_postfix(loss=f"{loss.mean().item():.4f}")  # the one host sync, for the bar only
    return flat.detach().to(G.dtype)
