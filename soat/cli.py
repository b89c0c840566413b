"""The ``soat`` command line: generation, every task, the demo gallery, and the tools.

One convention everywhere: ``--checkpoint MODEL``; seeds as ``--seeds 0-7,9`` (a task on two images
takes exactly two seeds, a task on one image or the panorama sampler one); ``-o`` is a ``.png`` file
for one image and a folder for several; an existing output is replaced only with ``--force``.
Arguments and output paths are checked before a model is loaded; every user mistake is one line
``soat: error: ...`` and exit status 2.
"""

from __future__ import annotations

import argparse
import itertools
import os
import sys
from typing import Callable, Iterable, Iterator

import torch
from tqdm import tqdm

from soat.errors import SoatError
from soat.options import (Seeds, add_backend, add_checkpoint, add_device, add_dtype, add_force, add_layout,
                             check_checkpoint, check_output_file, check_output_folder, finite_float, int_range,
                             known_size, parse_seeds, seeds_arg)
from soat.version import __version__

DEFAULT_MODEL = "random"
PANORAMA_MAX_N = 64  # images in one panorama (R x 64R); soat serve streams wider ones
GENERATE_BATCH = 8  # seeds per generator call in ``soat generate`` (memory stays flat for any seed count)

__all__ = ["PANORAMA_MAX_N", "Seeds", "build_parser", "main", "parse_seeds", "seed_z"]


class _UsageError(Exception):
    """An argparse error, reported as one line by ``main``."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # one line, no usage block; main() prints it and returns 2
        raise _UsageError(message)


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
    check_checkpoint(args.checkpoint)
    if getattr(args, "checkpoint2", None):
        check_checkpoint(args.checkpoint2, "--checkpoint2")
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
    names = (f"seed{s:04d}.png" for s in (seeds if seeds is not None else []))
    check_output_folder(args.output, args.force, names)
    check_checkpoint(args.checkpoint)
    if args.codes and not os.path.isfile(args.codes):
        raise SoatError(f"--codes {args.codes}: file not found")
    G = load_model(args)
    codes = read_codes(G, args)
    if seeds is None:  # --codes without --seeds: every code
        seeds = parse_seeds(f"0-{codes.shape[0] - 1}")
        check_output_folder(args.output, args.force, (f"seed{s:04d}.png" for s in seeds))
    os.makedirs(args.output, exist_ok=True)
    from soat.runtime.images import save_png
    with torch.no_grad(), tqdm(total=len(seeds), desc="generate", unit="img") as bar:
        for batch in batched(seeds, GENERATE_BATCH):  # z, styles and images per small batch, never all at once
            images = G.generate(styles_for(G, args, batch, codes), noise=args.noise)
            for seed, img in zip(batch, images):
                save_png(img[None], os.path.join(args.output, f"seed{seed:04d}.png"))
            bar.update(len(batch))
    print(f"wrote {len(seeds)} images to {args.output}")
    return 0


def cmd_info(args: argparse.Namespace) -> int:
    from soat.runtime.chain import build_chain
    check_checkpoint(args.checkpoint)
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
    from soat.runtime.registry import REGISTRY
    from soat.runtime.sources import cache_dir
    folder = os.path.join(cache_dir(), "models")
    print(f"pretrained models (downloaded on first use into {folder}):")
    for e in REGISTRY.values():
        mark = "cached" if os.path.isfile(os.path.join(folder, e.filename)) else ""
        print(f"  {e.name:<15} {e.size:>5}px  {e.description}  {mark}".rstrip())
    return 0


def cmd_blend(args: argparse.Namespace) -> int:
    seeds = task_seeds(args, 2)
    check_task(args)
    G = load_model(args)
    a, b = styles_per_seed(G, args, seeds)
    save(G.blend(a, b, mode=args.mode, noise=args.noise), args.output)
    return 0


def cmd_merge(args: argparse.Namespace) -> int:
    seeds = task_seeds(args, 2)
    check_task(args)
    G = load_model(args)
    a, b = styles_per_seed(G, args, seeds)
    task = G.merge if args.linear else G.merge_extension
    save(task(a, b, noise=args.noise), args.output)
    return 0


def cmd_panorama(args: argparse.Namespace) -> int:
    (seed,) = task_seeds(args, 1)
    check_task(args)
    G = load_model(args)
    styles = G.panorama_styles(args.n, seed=seed, truncation=args.truncation)
    save(G.panorama(styles, noise=args.noise, progress=True), args.output)
    return 0


def cmd_expand(args: argparse.Namespace) -> int:
    (seed,) = task_seeds(args, 1)
    check_task(args)
    G = load_model(args)
    (s,) = styles_per_seed(G, args, [seed])
    torch.manual_seed(seed)
    save(G.expand(s, mode=args.mode, noise=args.noise or "random"), args.output)
    return 0


def cmd_bbox(args: argparse.Namespace) -> int:
    seeds = task_seeds(args, 2)
    check_task(args)
    boxes = {"--box": (args.box, True)}
    check_boxes(boxes, known_size(args.checkpoint, args.size))
    G = load_model(args)
    check_boxes(boxes, G.size)
    a, b = styles_per_seed(G, args, seeds)
    save(G.blend_bbox(a, b, tuple(args.box), pose_align=args.pose_align, num_blend=args.num_blend,
                      noise=args.noise), args.output)
    return 0


def cmd_swap(args: argparse.Namespace) -> int:
    seeds = task_seeds(args, 2)
    check_task(args)
    boxes = {"--boxes (first)": (args.boxes[:4], False), "--boxes (second)": (args.boxes[4:], False)}
    check_boxes(boxes, known_size(args.checkpoint, args.size))
    G = load_model(args)
    check_boxes(boxes, G.size)
    a, b = styles_per_seed(G, args, seeds)
    save(G.patch_swap(a, b, (tuple(args.boxes[:4]), tuple(args.boxes[4:])), swap=not args.no_swap,
                      noise=args.noise), args.output)
    return 0


def cmd_translate(args: argparse.Namespace) -> int:
    import soat
    seeds = task_seeds(args, 2)
    check_task(args)
    G1, G2 = load_model(args), load_model(args, args.checkpoint2)
    # as in the reference, both style lists come from generator 2's mapping network
    a, b = styles_per_seed(G2, args, seeds)
    save(soat.translate(G1, G2, a, b, num_swap=args.num_swap, alpha=args.alpha, early_alpha=args.early_alpha,
                        noise=args.noise), args.output)
    return 0


def cmd_shift(args: argparse.Namespace) -> int:
    (seed,) = task_seeds(args, 1)
    check_task(args)
    boxes = {"--source": (args.source, False)}
    check_boxes(boxes, known_size(args.checkpoint, args.size))
    G = load_model(args)
    check_boxes(boxes, G.size)
    (s,) = styles_per_seed(G, args, [seed])
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
def _model_options(p: argparse.ArgumentParser, noise_default: str | None = "fixed") -> None:
    add_checkpoint(p, DEFAULT_MODEL)
    add_backend(p)
    add_device(p)
    add_dtype(p)
    add_layout(p)
    p.add_argument("--truncation", type=finite_float, default=0.7, metavar="PSI",
                   help="truncation psi in sigma space, 1 = none (default 0.7)")
    p.add_argument("--noise", choices=["fixed", "random"], default=noise_default,
                   help=f"per-pixel noise: the model's fixed noise or fresh random noise (default {noise_default or 'random'})")
    p.add_argument("--codes", metavar="CODES.pt",
                   help="inverted codes (soat invert) instead of random styles: --seeds then index the codes")


def _task(sub, name: str, fn: Callable, help: str, output: str, seeds: int, default_seeds: str,
          noise_default: str | None = "fixed") -> argparse.ArgumentParser:
    p = sub.add_parser(name, help=help, description=help[0].upper() + help[1:] + ".")
    _model_options(p, noise_default)
    what = {1: "one seed", 2: "exactly two seeds, one per image"}[seeds]
    p.add_argument("--seeds", type=seeds_arg, default=parse_seeds(default_seeds), metavar="SEEDS",
                   help=f"{what}, in the seed syntax (e.g. 3 or 0,5 or 4-5; default {default_seeds})")
    p.add_argument("-o", "--output", default=output, metavar="PNG", help=f"output .png file (default {output})")
    add_force(p)
    p.set_defaults(func=fn)
    return p


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="soat", description="StyleGAN of All Trades: image blending, panoramas, expansion, "
                                              "local transfer and translation with a pretrained StyleGAN2, "
                                              "from the command line. Run `soat models` for real models.")
    parser.add_argument("--version", action="version", version=f"soat {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("generate", help="one PNG per seed into a folder",
                       description="Generate one image per seed (streamed: memory stays flat for any count) "
                                   "into a folder, as seedNNNN.png.")
    _model_options(p)
    p.add_argument("--seeds", type=seeds_arg, default=None, metavar="SEEDS",
                   help="seeds, e.g. 0-7,9 (default 0-7; with --codes, every code)")
    p.add_argument("-o", "--output", default="out", metavar="FOLDER", help="output folder (default out)")
    add_force(p)
    p.set_defaults(func=cmd_generate)

    p = sub.add_parser("info", help="size, channel multiplier, parameters and sigma layout of a model",
                       description="Print a model's layout: size, channel multiplier, parameter count and the "
                                   "sigma entries of every layer.")
    add_checkpoint(p, DEFAULT_MODEL)
    add_backend(p)
    add_layout(p)
    p.set_defaults(func=cmd_info)

    p = sub.add_parser("models", help="list the pretrained models --checkpoint accepts by name",
                       description="List the pretrained StyleGAN2 checkpoints that --checkpoint NAME downloads "
                                   "on first use, and which are already cached.")
    p.set_defaults(func=cmd_models)

    p = _task(sub, "blend", cmd_blend, "blend two images at every layer", "blend.png", 2, "0,1")
    p.add_argument("--mode", default="horizontal", choices=["horizontal", "vertical"],
                   help="direction of the blend ramp (default horizontal)")
    p = _task(sub, "merge", cmd_merge, "two-image panorama span (R x 2R)", "merge.png", 2, "0,1")
    p.add_argument("--linear", action="store_true", help="plain linspace alpha (merge) instead of merge extension")
    p = _task(sub, "panorama", cmd_panorama, "panorama of N images from the smoothed-latent sampler",
              "panorama.png", 1, "90")
    p.add_argument("--n", type=int_range(2, PANORAMA_MAX_N), default=5,
                   help=f"number of images, 2 to {PANORAMA_MAX_N} (default 5; soat serve streams wider)")
    p = _task(sub, "expand", cmd_expand, "generation from one image: widen after 8x8", "expand.png", 1, "0",
              noise_default=None)
    p.add_argument("--mode", default="reflect",
                   choices=["horizontal", "vertical", "reflect", "replicate", "circular", "constant"],
                   help="how features are widened (default reflect)")
    p = _task(sub, "bbox", cmd_bbox, "local attribute transfer inside a box", "bbox.png", 2, "0,1")
    p.add_argument("--box", type=int, nargs=4, required=True, metavar=("X", "Y", "W", "H"),
                   help="the box of image 2 pasted into image 1, in output pixels")
    p.add_argument("--pose-align", action="store_true", help="keep the first four sigma entries from image 1")
    p.add_argument("--num-blend", type=int_range(0), default=99,
                   help="sigma entries blended inside the box, from the first (default 99: all)")
    p = _task(sub, "swap", cmd_swap, "patch swap at 16x16", "swap.png", 2, "0,1")
    p.add_argument("--boxes", type=int, nargs=8, required=True, metavar="N",
                   help="x1 y1 w1 h1 x2 y2 w2 h2: box 1 in image 1, box 2 in image 2, in output pixels")
    p.add_argument("--no-swap", action="store_true", help="copy box 2 into box 1 only")
    p = _task(sub, "translate", cmd_translate, "image-to-image translation between two generators",
              "translate.png", 2, "0,1")
    p.add_argument("--checkpoint2", required=True, metavar="MODEL",
                   help="generator 2, fine-tuned from generator 1 (same forms as --checkpoint)")
    p.add_argument("--num-swap", type=int_range(0), default=6,
                   help="sigma entries taken from generator 1 before the mix (default 6)")
    p.add_argument("--alpha", type=finite_float, default=0.7, help="weight of generator 2 after --num-swap (default 0.7)")
    p.add_argument("--early-alpha", type=finite_float, default=0.0,
                   help="weight of generator 2 in the first --num-swap entries (default 0)")
    p = _task(sub, "shift", cmd_shift, "replicate a patch with the Shift operator", "shift.png", 1, "0")
    p.add_argument("--source", type=int, nargs=4, required=True, metavar=("X", "Y", "W", "H"),
                   help="the patch to replicate, in output pixels")
    p.add_argument("--target", type=int, nargs=2, action="append", required=True, metavar=("X", "Y"),
                   help="where a copy goes (top-left corner); repeat for several")
    p.add_argument("--layers", type=int, nargs="+", default=None, metavar="RES",
                   help="resolutions to shift at (default 8 16 32)")
    p.add_argument("--strength", type=finite_float, default=1.0, help="blend weight of the copies (default 1)")

    p = sub.add_parser("demo", help="run every task once; PNGs + index.html",
                       description="Run every task once and write one PNG per task and an index.html gallery. "
                                   "With the default random-weights model the images are colored noise: "
                                   "pass --checkpoint NAME (see soat models) for real pictures.")
    p.add_argument("-o", "--output", default="soat-demo", metavar="FOLDER", help="output folder (default soat-demo)")
    add_checkpoint(p, "random:0")
    p.add_argument("--checkpoint2", default=None, metavar="MODEL",
                   help="second generator for the translation example (default random:1 with a random model; "
                        "else the example is left out)")
    add_layout(p)
    add_device(p)
    add_dtype(p)
    add_force(p)
    p.set_defaults(func=cmd_demo)

    _add_optional_tools(sub)
    return parser


def _add_optional_tools(sub) -> None:
    """Subcommands whose parsers live with their feature: (parser adder, command function)."""
    from soat import invert_cli
    from soat.bench import cli as bench_cli
    from soat.export import cli as export_cli
    from soat.export import engines
    from soat.serve import cli as serve_cli
    for adder, command in ((export_cli.add_parser, export_cli.run), (engines.add_parser, engines.run),
                           (serve_cli.add_parser, serve_cli.run),
                           (invert_cli.add_invert_parser, invert_cli.cmd_invert),
                           (invert_cli.add_convert_parser, invert_cli.cmd_convert),
                           (bench_cli.add_parser, bench_cli.run)):
        adder(sub).set_defaults(func=command)


def main(argv: list[str] | None = None) -> int:
    try:
        try:
            args = build_parser().parse_args(argv)
        except SystemExit as e:  # --help, --version
            return e.code if isinstance(e.code, int) else 0
        code = args.func(args)
        sys.stdout.flush()  # inside the try: a closed pipe (soat info | head) is reported here
        return code
    except (SoatError, _UsageError) as e:
        print(f"soat: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        # the reader went away (| head): no traceback, and none at exit when Python flushes stdout
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 141


if __name__ == "__main__":
    sys.exit(main())
