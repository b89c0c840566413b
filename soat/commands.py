"""What each ``soat`` task command does once its arguments are parsed (``soat.cli`` builds the parser).

Every ``cmd_*`` takes the parsed ``argparse.Namespace`` and returns the exit status; a user mistake
raises ``SoatError`` (reported by ``soat.cli.main`` as one line, exit status 2). Arguments and
output paths are checked before a model is loaded.
"""

from __future__ import annotations

import argparse
import itertools
import os
from typing import Iterable, Iterator

import torch
from tqdm import tqdm

from soat.errors import SoatError
from soat.options import (SeedFiles, check_checkpoint, check_output_file, check_output_folder, known_size,
                          parse_seeds)

GENERATE_BATCH = 8  # seeds per generator call in ``soat generate`` (memory stays flat for any seed count)


def seed_z(seeds: Iterable[int], style_dim: int = 512) -> torch.Tensor:
    """One ``z`` row per seed, each from its own ``torch.Generator`` (independent of batching)."""
    return torch.cat([torch.randn(1, style_dim, generator=torch.Generator().manual_seed(s)) for s in seeds])


def batched(items: Iterable[int], n: int) -> Iterator[list[int]]:
    it = iter(items)
    while chunk := list(itertools.islice(it, n)):
        yield chunk


def load_model(args: argparse.Namespace, checkpoint: str | None = None):
    import soat
    return soat.load(checkpoint or args.checkpoint, backend=args.backend, device=args.device, dtype=args.dtype,
                     size=args.size, channel_multiplier=args.channel_multiplier)


def centre_truncation(G, args: argparse.Namespace) -> None:
    """Where the command truncates random styles, sample sigma_bar now under a progress bar of its own (once per
    model: it is cached), so that the first image's progress is not charged with it."""
    if args.truncation != 1 and not getattr(args, "codes", None):
        G.mean_styles(progress=True)


def read_codes(G, args: argparse.Namespace) -> torch.Tensor | None:
    """The flat codes of ``--codes`` for ``G`` (``[N, total]``), or None."""
    if not getattr(args, "codes", None):
        return None
    from soat.runtime.codes import load_codes
    return load_codes(args.codes, G)


def styles_for(G, args: argparse.Namespace, seeds: list[int], codes: torch.Tensor | None = None) -> list:
    """A sigma list with one row per seed: from ``z`` of each seed, or the ``--codes`` rows the seeds index."""
    if codes is not None:
        bad = [s for s in seeds if s >= codes.shape[0]]
        if bad:
            raise SoatError(f"--seeds {bad[0]}: {args.codes} holds {codes.shape[0]} codes (indices 0 to "
                            f"{codes.shape[0] - 1})")
        return G.unflatten_styles(codes[list(seeds)])
    return G.styles(seed_z(seeds, G.config.style_dim), truncation=args.truncation)


def styles_per_seed(G, args: argparse.Namespace, seeds: list[int]) -> list[list[torch.Tensor]]:
    s = styles_for(G, args, seeds, read_codes(G, args))
    return [[t[i:i + 1] for t in s] for i in range(len(seeds))]


def save(img: torch.Tensor, path: str) -> None:
    from soat.runtime.images import save_png
    for p in save_png(img, path):
        print(p)


def task_seeds(args: argparse.Namespace, count: int) -> list[int]:
    seeds = list(itertools.islice(args.seeds, count + 1))
    if len(seeds) != count:
        raise SoatError(f"--seeds {args.seeds.text}: {args.command} takes exactly {count} seed"
                        f"{'s' if count > 1 else ''} ({len(args.seeds)} given)")
    return seeds


def check_task(args: argparse.Namespace) -> None:
    """Checks shared by the task commands, before loading: the output, the models, the codes file."""
    check_output_file(args.output, args.force)
    check_checkpoint(args.checkpoint, backend=args.backend)
    if getattr(args, "checkpoint2", None):
        check_checkpoint(args.checkpoint2, "--checkpoint2", args.backend)
    if getattr(args, "codes", None) and not os.path.isfile(args.codes):
        raise SoatError(f"--codes {args.codes}: file not found")


def check_boxes(boxes: dict[str, tuple], size: int | None) -> None:
    """``{flag: (box, clip)}`` against the output size, when the size is known (before loading) or once loaded.
    A clipped box may run past the right or bottom edge but not be larger than the image."""
    from soat.runtime.tasks.boxes import check_box
    if size is None:
        return
    for name, (box, clip) in boxes.items():
        x, y, w, h = check_box(box, name, size, size, clip=clip)
        if w > size or h > size:
            raise SoatError(f"{name}={(x, y, w, h)} is larger than the {size}x{size} image")


# ---- subcommands -------------------------------------------------------------------------------
def cmd_generate(args: argparse.Namespace) -> int:
    seeds = args.seeds
    if seeds is None:
        seeds = parse_seeds("0-7") if not args.codes else None
    check_output_folder(args.output, args.force, SeedFiles(seeds) if seeds is not None else [])
    check_checkpoint(args.checkpoint, backend=args.backend)
    if args.codes and not os.path.isfile(args.codes):
        raise SoatError(f"--codes {args.codes}: file not found")
    G = load_model(args)
    codes = read_codes(G, args)
    if seeds is None:  # --codes without --seeds: every code
        seeds = parse_seeds(f"0-{codes.shape[0] - 1}")
        check_output_folder(args.output, args.force, SeedFiles(seeds))
    os.makedirs(args.output, exist_ok=True)
    from soat.runtime.images import save_png
    centre_truncation(G, args)
    with torch.no_grad(), tqdm(total=len(seeds), desc="generate", unit="img") as bar:
        for batch in batched(seeds, GENERATE_BATCH):  # z, styles and images per small batch, never all at once
            images = G.generate(styles_for(G, args, batch, codes), noise=args.noise)
            for seed, img in zip(batch, images):
                save_png(img[None], os.path.join(args.output, SeedFiles.name(seed)))
            bar.update(len(batch))
    print(f"wrote {len(seeds)} images to {args.output}")
    return 0


def cmd_info(args: argparse.Namespace) -> int:
    from soat.runtime.chain import build_chain
    check_checkpoint(args.checkpoint, backend=args.backend)
    import soat
    G = soat.load(args.checkpoint, backend=args.backend, size=args.size, channel_multiplier=args.channel_multiplier)
    c = G.config
    print(f"source: {G.source}\nfingerprint: {G.fingerprint}")
    print(f"size: {c.size}\nchannel_multiplier: {c.channel_multiplier}\nstyle_dim: {c.style_dim}\nn_mlp: {c.n_mlp}")
    weights = getattr(G.backend, "weights", None)
    if weights is not None:
        print(f"parameters: {sum(p.numel() for p in weights.parameters()):,}")
    print(f"sigma entries: {len(G.style_channels)} ({sum(G.style_channels)} dims)")
    print(f"truncation centre: {G.mean_source}")
    for node in build_chain(c)[1:]:
        print(f"  sigma[{node.style_index:2d}] {node.id:<11} {node.kind:<8} {node.in_channels:4d} ch  {node.resolution}px")
    return 0


def cmd_models(args: argparse.Namespace) -> int:
    from soat.runtime.registry import OFFLINE_ENV, REGISTRY, cached_path
    from soat.runtime.sources import MODELS, cache_dir, model_path
    if args.path:
        print(model_path(args.path))
        return 0
    folder = os.path.join(cache_dir(), MODELS)
    print(f"pretrained models (downloaded on first use into {folder}):")
    for e in REGISTRY.values():
        mark = "cached" if os.path.isfile(cached_path(e.name, folder)) else ""
        print(f"  {e.name:<15} {e.size:>5}px  {e.description}  {mark}".rstrip())
    print(f"A file downloaded elsewhere goes where `soat models --path NAME` says; with --offline ({OFFLINE_ENV}=1) "
          "nothing is downloaded.")
    return 0


def prepared(args: argparse.Namespace, count: int, boxes: dict[str, tuple] | None = None) -> tuple:
    """``(G, styles of each seed)`` for a task on ``count`` seeds: the seeds, the task's arguments and its
    ``boxes`` are checked before the model loads (boxes against the size again once it is known)."""
    seeds = task_seeds(args, count)
    check_task(args)
    if boxes:
        check_boxes(boxes, known_size(args.checkpoint, args.size))
    G = load_model(args)
    if boxes:
        check_boxes(boxes, G.size)
    centre_truncation(G, args)
    return G, styles_per_seed(G, args, seeds)


def cmd_blend(args: argparse.Namespace) -> int:
    G, (a, b) = prepared(args, 2)
    save(G.blend(a, b, mode=args.mode, noise=args.noise), args.output)
    return 0


def cmd_merge(args: argparse.Namespace) -> int:
    G, (a, b) = prepared(args, 2)
    task = G.merge if args.linear else G.merge_extension
    save(task(a, b, noise=args.noise), args.output)
    return 0


def cmd_panorama(args: argparse.Namespace) -> int:
    (seed,) = task_seeds(args, 1)
    check_task(args)
    G = load_model(args)
    centre_truncation(G, args)
    styles = G.panorama_styles(args.n, seed=seed, truncation=args.truncation)
    save(G.panorama(styles, noise=args.noise, progress=True), args.output)
    return 0


def cmd_expand(args: argparse.Namespace) -> int:
    G, (s,) = prepared(args, 1)
    torch.manual_seed(task_seeds(args, 1)[0])  # random noise drawn from the seed: one seed, one PNG
    save(G.expand(s, mode=args.mode, noise=args.noise or "random"), args.output)
    return 0


def cmd_bbox(args: argparse.Namespace) -> int:
    G, (a, b) = prepared(args, 2, {"--box": (args.box, True)})
    save(G.blend_bbox(a, b, tuple(args.box), pose_align=args.pose_align, num_blend=args.num_blend,
                      noise=args.noise), args.output)
    return 0


def cmd_swap(args: argparse.Namespace) -> int:
    G, (a, b) = prepared(args, 2, {"--boxes (first)": (args.boxes[:4], False),
                                   "--boxes (second)": (args.boxes[4:], False)})
    save(G.patch_swap(a, b, (tuple(args.boxes[:4]), tuple(args.boxes[4:])), swap=not args.no_swap,
                      noise=args.noise), args.output)
    return 0


def cmd_translate(args: argparse.Namespace) -> int:
    import soat
    seeds = task_seeds(args, 2)
    check_task(args)
    G1, G2 = load_model(args), load_model(args, args.checkpoint2)
    # as in the reference, both style lists come from generator 2's mapping network
    centre_truncation(G2, args)
    a, b = styles_per_seed(G2, args, seeds)
    save(soat.translate(G1, G2, a, b, num_swap=args.num_swap, alpha=args.alpha, early_alpha=args.early_alpha,
                        noise=args.noise), args.output)
    return 0


def cmd_shift(args: argparse.Namespace) -> int:
    G, (s,) = prepared(args, 1, {"--source": (args.source, False)})
    targets = [tuple(t) for t in args.target]
    save(G.shift(s, tuple(args.source), targets, layers=args.layers, strength=args.strength, noise=args.noise),
         args.output)
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from soat.demo import DEMO_NAMES, run_demo
    check_output_folder(args.output, args.force, [*(f"{n}.png" for n in DEMO_NAMES), "index.html"])
    check_checkpoint(args.checkpoint)
    if args.checkpoint2:
        check_checkpoint(args.checkpoint2, "--checkpoint2")
    size = known_size(args.checkpoint, args.size)
    if size is not None and size < 32:
        raise SoatError(f"--size {size}: the demo's patch swap needs a model of at least 32px")
    run_demo(args.output, checkpoint=args.checkpoint, checkpoint2=args.checkpoint2, size=args.size,
             channel_multiplier=args.channel_multiplier, device=args.device, dtype=args.dtype)
    return 0


# ---- parser ------------------------------------------------------------------------------------
