"""The user-facing Generator: sigma space, generation and every task, on any backend."""

from __future__ import annotations

import warnings
from typing import Any, Iterator, Sequence

import torch

from ..errors import SoatError
from .backend import Backend
from .checks import check_int, check_truncation
from .chain import LayerNode, build_chain, node_inputs, style_channels
from .config import GeneratorConfig
from .cudagraph import is_capturing
from .graphs import MAPPING, STYLES
from .noise import NoiseArg, NoiseFn, make_noise_fn, noise_for_input
from .styles import (StyleArg, cached_mean_w, check_styles, mean_style_z, mean_w, mean_w_key, truncate,
                     unflatten_styles)
from .cuda_graph_tasks import CudaGraphTasks

# the tasks Generator.warmup can run, with how many style lists each takes
WARMUP_STYLE_LISTS = {"generate": 1, "expand": 1, "shift": 1, "blend": 2, "merge": 2, "merge_extension": 2,
                      "blend_bbox": 2, "patch_swap": 2}
MEAN_FROM_CHECKPOINT = "checkpoint w_avg"  # Generator.mean_source values
MEAN_SAMPLED = "sampled"
MEAN_FROM_EXPORT = "stored in the export"


class Generator:
    """A StyleGAN2 generator as a layer chain run by a backend.

    Args:
        backend: the executor of the graphs (``soat.runtime.backend.Backend``).
        config: the model layout.
        fixed_noise: ``noises.noise_{i}`` buffers, each ``[1, 1, r, r]``.
        source: where the weights came from (path or ``random:SEED``), for ``info``.
        fingerprint: a string identifying the weights (checkpoint sha256 or the seed).
        cuda_graphs: on CUDA, replay every task call from a CUDA graph captured per input signature
            (``cuda_graph_tasks.py``, held in ``G.cuda_graphs``); ``False`` runs every call eagerly.
        w_avg: the checkpoint's mean latent ``[style_dim]`` (NVIDIA's ``mapping.w_avg``,
            rosinality's ``latent_avg``), if it has one: the mean style is then affine(w_avg).
        mean_styles: sigma_bar stored with an export, flat ``[1, total]``.
        missing_mean: where neither is given and sampling would not be the checkpoint's centre (an export
            that predates stored mean styles), why: ``mean_styles()`` raises it instead of sampling.
    """

    def __init__(self, backend: Backend, config: GeneratorConfig, fixed_noise: Sequence[torch.Tensor],
                 source: str = "", fingerprint: str = "", cuda_graphs: bool = True,
                 w_avg: torch.Tensor | None = None, mean_styles: torch.Tensor | None = None,
                 missing_mean: str | None = None):
        self.backend = backend
        self.config = config
        self.chain: tuple[LayerNode, ...] = build_chain(config)
        self.device = torch.device(backend.device)
        self.dtype = backend.dtype
        self.fixed_noise = [n.to(self.device, self.dtype) for n in fixed_noise]
        self.source = source
        self.fingerprint = fingerprint
        self.style_channels = style_channels(config)
        self._w_avg = w_avg
        self._missing_mean = missing_mean
        # sigma_bar (the centre of truncation) and where it comes from, for `soat info`: an export's stored
        # flat [1, total] copy, else the checkpoint's w_avg or sampling (both on first use)
        self._mean_styles: list[torch.Tensor] | None = None
        self.mean_source = MEAN_FROM_CHECKPOINT if w_avg is not None else MEAN_SAMPLED
        if mean_styles is not None:
            total, finite = sum(self.style_channels), bool(torch.isfinite(mean_styles).all())
            if tuple(mean_styles.shape) != (1, total) or not finite:
                raise SoatError(f"mean_styles must be a finite [1, {total}] tensor for this layout; got shape "
                                f"{list(mean_styles.shape)}" + ("" if finite else " with NaN or inf"))
            self._mean_styles = self.unflatten_styles(mean_styles.to(self.device, self.dtype))
            self.mean_source = MEAN_FROM_EXPORT
        self._noise_cache: dict = {}
        self.cuda_graphs = CudaGraphTasks(self, cuda_graphs)

    def __repr__(self) -> str:
        c = self.config
        return (f"Generator(size={c.size}, channel_multiplier={c.channel_multiplier}, backend={self.backend.name}, "
                f"device={self.device}, dtype={str(self.dtype).replace('torch.', '')}, source={self.source!r})")

    @property
    def size(self) -> int:
        return self.config.size

    @property
    def graphs(self) -> CudaGraphTasks:
        """Deprecated name of ``cuda_graphs`` ("graph" names the exported layer graphs)."""
        warnings.warn("Generator.graphs is deprecated; use Generator.cuda_graphs", DeprecationWarning, stacklevel=2)
        return self.cuda_graphs

    # ---- sigma space -------------------------------------------------------------------------
    def w(self, z: torch.Tensor) -> torch.Tensor:
        """Mapping network: ``z [B, 512] -> w [B, 512]``."""
        z = self._check_latent(z, "z", 2)
        return self.backend.run(MAPPING, {"z": z})["w"]

    def styles_from_w(self, w: torch.Tensor, truncation: float = 1.0) -> list[torch.Tensor]:
        """``w [B, 512]`` (repeated to every layer) or ``W+ [B, n_latent, 512]`` -> sigma list."""
        n = self.config.n_latent
        truncation = check_truncation(truncation)
        w = self._check_latent(w, "w", None)
        if w.ndim == 2:
            w = w.unsqueeze(1).repeat(1, n, 1)
        if w.ndim != 3 or w.shape[1] != n:
            raise SoatError(f"w must be [B, {self.config.style_dim}] or W+ [B, {n}, {self.config.style_dim}]; "
                            f"got {list(w.shape)}")
        flat = self.backend.run(STYLES, {"wplus": w})["styles"]
        styles = unflatten_styles(flat, self.style_channels)
        return styles if truncation == 1 else truncate(styles, self.mean_styles(), truncation)

    def styles(self, z: torch.Tensor, truncation: float = 1.0) -> list[torch.Tensor]:
        """``z [B, 512]`` -> sigma list (``3L - 4`` entries ``[B, C_k]``) with truncation in sigma space."""
        return self.styles_from_w(self.w(z), truncation)

    def mean_styles(self, progress: bool = False) -> list[torch.Tensor]:
        """The mean style sigma_bar, ``[1, C_k]`` each, cached: affine(w_avg) when the checkpoint
        carries a mean latent (so psi-truncated images equal NVIDIA's), else affine(mean of w over
        50,000 z); ``mean_source`` says which.

        The z are drawn from a private generator, so the global RNG is untouched; to
        reproduce a notebook's sigma_bar exactly, call ``estimate_mean_styles(z)``. Their mean w is
        kept in soat's cache folder per model, backend, precision and device type (``cached_mean_w``),
        so only the first use of a model pays for it (``progress``: with a progress bar of its own).
        """
        if self._mean_styles is None and self._w_avg is not None:
            self._mean_styles = self.styles_from_w(self._w_avg.reshape(1, -1))
        if self._mean_styles is None and self._missing_mean:
            raise SoatError(self._missing_mean)
        if self._mean_styles is None:
            key = mean_w_key(self.fingerprint, self.backend.name, self.dtype, self.device.type)
            w = cached_mean_w(key, self.config.style_dim,
                              lambda: mean_w(self.w, mean_style_z(self.config.style_dim), progress))
            self._mean_styles = self.styles_from_w(w.to(self.dtype))
        return self._mean_styles

    def estimate_mean_styles(self, z: torch.Tensor) -> list[torch.Tensor]:
        """Set sigma_bar to the per-entry mean of sigma over the given ``z [N, 512]`` (the reference's rule)."""
        z = self._check_latent(z, "z", 2)
        self._mean_styles = self.styles_from_w(mean_w(self.w, z).to(self.dtype))
        self.mean_source = MEAN_SAMPLED
        return self._mean_styles

    def unflatten_styles(self, flat: torch.Tensor) -> list[torch.Tensor]:
        """``[B, total] -> [[B, C_k]]`` for this model's layout."""
        return unflatten_styles(flat, self.style_channels)

    # ---- running the chain -------------------------------------------------------------------
    def check_styles(self, styles: StyleArg, name: str = "styles") -> list[torch.Tensor]:
        return check_styles(styles, self.style_channels, name, self.device, self.dtype)

    def noise_fn(self, noise: NoiseArg) -> NoiseFn:
        return make_noise_fn(noise, self.fixed_noise, self._noise_cache, self.device, self.dtype)

    def constant(self, styles: Sequence[torch.Tensor]) -> torch.Tensor:
        """The learned constant repeated to the batch of ``styles[0]``: ``[B, 512, 4, 4]``."""
        return self.backend.run(self.chain[0].id, {"style": styles[0]})["x"]

    def run_node(self, node: LayerNode, x: torch.Tensor, style: torch.Tensor, noise: torch.Tensor | None = None,
                 skip: torch.Tensor | None = None) -> torch.Tensor:
        """One chain node on given tensors; returns its ``x`` or ``rgb`` output."""
        with torch.autograd.profiler.record_function(node.id):
            return self.backend.run(node.id, node_inputs(x, style, noise, skip))[node.output]

    def run_chain(self, styles: Sequence[torch.Tensor], noise_at: NoiseFn, nodes: Sequence[LayerNode],
                  x: torch.Tensor, rgb: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Run ``nodes`` in order with one style list; returns the last features and RGB.

        The backend runs the whole list (the fast backend fuses across layer boundaries).
        """
        steps, (height, width) = [], x.shape[-2:]
        for node in nodes:
            noise = noise_for_input(node, x.shape[0], height, width, noise_at)
            steps.append((node, styles[node.style_index], noise))
            height, width = node.output_size(height, width)
        return self.backend.run_chain(steps, x, rgb)

    def generate(self, styles: StyleArg, noise: NoiseArg = "fixed") -> torch.Tensor:
        """Plain synthesis: sigma list -> image ``[B, 3, R, R]`` in [-1, 1]."""
        return self.cuda_graphs.call(self, _generate, (styles, noise))

    def warmup(self, task: str, batch: int = 1, **arguments: Any) -> None:
        """Run ``task`` once at ``batch`` on the mean style, so that its CUDA graph is captured now
        (a service's start-up) rather than on the first request. ``arguments``: the task's other
        arguments (``box=...`` for ``blend_bbox``; the graph is per argument value). Off CUDA nothing is
        ever captured, so there it only checks ``task`` and ``batch`` (it used to run the task, and
        sample sigma_bar first, for nothing)."""
        if task not in WARMUP_STYLE_LISTS:
            raise SoatError(f"task={task!r} cannot be warmed up; use one of {', '.join(WARMUP_STYLE_LISTS)}")
        batch = check_int(batch, "batch", 1)
        if self.device.type != "cuda":
            return
        styles = [s.expand(batch, -1).contiguous() for s in self.mean_styles()]
        getattr(self, task)(*[styles] * WARMUP_STYLE_LISTS[task], **arguments)

    def _check_latent(self, t: torch.Tensor, name: str, ndim: int | None) -> torch.Tensor:
        if not isinstance(t, torch.Tensor) or (ndim is not None and t.ndim != ndim) \
                or t.shape[-1] != self.config.style_dim:
            shape = list(t.shape) if isinstance(t, torch.Tensor) else type(t).__name__
            want = f"[B, {self.config.style_dim}]" if ndim == 2 else f"[..., {self.config.style_dim}]"
            raise SoatError(f"{name} must be a tensor {want}; got {shape}")
        if not is_capturing() and not torch.isfinite(t).all():
            raise SoatError(f"{name} contains NaN or inf")
        return t.to(self.device, self.dtype)

    # ---- tasks (each a short schedule in soat.runtime.tasks) ----------------------------------
    def blend(self, styles1: StyleArg, styles2: StyleArg, mode: str = "horizontal",
              noise: NoiseArg = "fixed") -> torch.Tensor:
        """Feature-interpolation blend of two images (docs/contract.md#blend); ``[B, 3, R, R]``."""
        from .tasks.blend import blend
        return self.cuda_graphs.call(self, blend, (styles1, styles2, mode, noise))

    def merge_extension(self, styles1: StyleArg, styles2: StyleArg, noise: NoiseArg = "fixed") -> torch.Tensor:
        """Two-image panorama span (docs/contract.md#merge-extension); ``[B, 3, R, 2R]``."""
        from .tasks.blend import merge_extension
        return self.cuda_graphs.call(self, merge_extension, (styles1, styles2, noise))

    def merge(self, styles1: StyleArg, styles2: StyleArg, noise: NoiseArg = "fixed") -> torch.Tensor:
        """Merge extension with a plain linspace alpha (docs/contract.md#merge); ``[B, 3, R, 2R]``."""
        from .tasks.blend import merge
        return self.cuda_graphs.call(self, merge, (styles1, styles2, noise))

    def panorama(self, style_lists: Sequence[StyleArg], noise: NoiseArg = "fixed",
                 progress: bool = False) -> torch.Tensor:
        """Panorama of N >= 2 images (docs/contract.md#panorama); ``[B, 3, R, 2R + (N - 2) R]``."""
        from .tasks.panorama import panorama
        return panorama(self, style_lists, noise, progress)  # spans of N-long work: launches are not its cost

    def panorama_styles(self, n: int, seed: int = 0, truncation: float = 0.7) -> list[list[torch.Tensor]]:
        """The reference panorama sampler: N style lists (each ``[1, C_k]``) of smoothed latents."""
        from .tasks.panorama import panorama_styles
        return panorama_styles(self, n, seed, truncation)

    def panorama_stream(self, style_lists: Sequence[StyleArg], noise: NoiseArg = "fixed",
                        progress: bool = False) -> Iterator[torch.Tensor]:
        """The panorama as column blocks, one span at a time; memory independent of N."""
        from .tasks.panorama import panorama_stream
        return panorama_stream(self, style_lists, noise, progress)

    def panorama_columns(self, seed: int, start: int, width: int, truncation: float = 0.7,
                         noise: NoiseArg = "fixed") -> torch.Tensor:
        """Columns ``[start, start + width)`` of the endless panorama of ``seed``; ``[1, 3, R, width]``."""
        from .tasks.endless import panorama_columns
        return panorama_columns(self, seed, start, width, truncation, noise)

    def expand(self, styles: StyleArg, mode: str = "reflect", noise: NoiseArg = "random") -> torch.Tensor:
        """Generation from one image, widened after the 8x8 block (the reference's ``singan``;
        docs/contract.md#expand).

        ``noise`` defaults to ``"random"`` as in the reference (seed with ``torch.manual_seed``).
        """
        from .tasks.expand import expand
        return self.cuda_graphs.call(self, expand, (styles, mode, noise))

    def blend_mask(self, styles1: StyleArg, styles2: StyleArg, mask: torch.Tensor, pose_align: bool = False,
                   num_blend: int = 99, noise: NoiseArg = "fixed") -> torch.Tensor:
        """Local blend with any mask ``[1 or B, 1, H, W]`` in [0, 1]: styles2 shows where mask = 1."""
        from .tasks.local import blend_mask
        return blend_mask(self, styles1, styles2, mask, pose_align, num_blend, noise)

    def blend_bbox(self, styles1: StyleArg, styles2: StyleArg, box: Any, pose_align: bool = False,
                   num_blend: int = 99, noise: NoiseArg = "fixed") -> torch.Tensor:
        """Local attribute transfer inside a box ``(x, y, w, h)`` (or a list of boxes), in output pixels."""
        from .tasks.local import blend_bbox
        return self.cuda_graphs.call(self, blend_bbox, (styles1, styles2, box, pose_align, num_blend, noise))

    def patch_swap(self, styles1: StyleArg, styles2: StyleArg, boxes: Any, swap: bool = True,
                   noise: NoiseArg = "fixed") -> torch.Tensor:
        """Copy (and swap) 16x16 feature regions of image 2 into image 1 (docs/contract.md#patch-swap)."""
        from .tasks.local import patch_swap
        return self.cuda_graphs.call(self, patch_swap, (styles1, styles2, boxes, swap, noise))

    def shift(self, styles: StyleArg, source_box: Any, targets: Any, layers: Sequence[int] | None = None,
              strength: float = 1.0, noise: NoiseArg = "fixed") -> torch.Tensor:
        """Replicate a patch: at the given resolutions, blend features with a copy shifted from
        ``source_box`` onto each target (docs/contract.md#shift)."""
        from .tasks.shift import shift
        return self.cuda_graphs.call(self, shift, (styles, source_box, targets, layers, strength, noise))

    # ---- GAN inversion (soat.runtime.inversion) ------------------------------------------------
    def invert(self, images: Any, steps: int = 1000, lpips: Any = "auto", prior_weight: float = 1e-3,
               lr: float = 0.05, progress: bool = False) -> torch.Tensor:
        """Fit sigma codes to images (docs/contract.md#inversion); returns flat sigma ``[B, total]``.

        ``images``: paths, PIL images or a ``[B, 3, H, W]`` tensor in [-1, 1]; ``lpips``: ``"auto"``,
        ``False``, a VGG16 weights path or a callable; ``prior_weight=0`` drops the Gaussian prior.
        """
        from .inversion import invert
        return invert(self, images, steps, lpips, prior_weight, lr, progress)


def _generate(G: Generator, styles: StyleArg, noise: NoiseArg) -> torch.Tensor:
    s = G.check_styles(styles)
    _, rgb = G.run_chain(s, G.noise_fn(noise), G.chain[1:], G.constant(s))
    return rgb.clamp(-1, 1)
