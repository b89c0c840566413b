"""The ``soat`` command line: generation, every task, the demo gallery, and the tools."""

from __future__ import annotations

import argparse
import os
import sys
from typing import Callable

import torch
from tqdm import tqdm

from soat.errors import SoatError
from soat.runtime.load import BACKENDS

DEFAULT_MODEL = "random"


def parse_seeds(text: str) -> list[int]:
    """``"0-3,7"`` -> ``[0, 1, 2, 3, 7]``."""
    seeds: list[int] = []
    try:
        for part in text.split(","):
            lo, _, hi = part.partition("-")
            seeds += list(range(int(lo), int(hi) + 1)) if hi else [int(lo)]
    except ValueError:
        raise SoatError(f"--seeds {text!r} must be integers and ranges like 0-7,9") from None
    if not seeds:
        raise SoatError(f"--seeds {text!r} names no seed")
    return seeds


def seed_z(seeds: list[int], style_dim: int = 512) -> torch.Tensor:
    """One ``z`` row per seed, each from its own ``torch.Generator`` (independent of batching)."""
    return torch.cat([torch.randn(1, style_dim, generator=torch.Generator().manual_seed(s)) for s in seeds])


def load_model(args: argparse.Namespace, checkpoint: str | None = None):
    import soat
    return soat.load(checkpoint or args.checkpoint, backend=args.backend, device=args.device, dtype=args.dtype,
                     size=args.size, channel_multiplier=args.channel_multiplier)


def styles_for(G, args: argparse.Namespace, seeds: list[int]) -> list[list[torch.Tensor]]:
    """One sigma list per seed (``[1, C_k]`` entries), or the codes of ``--codes`` in order."""
    codes = getattr(args, "codes", None)
    if codes:
        from soat.runtime.codes import load_codes
        flat = load_codes(codes, G)
        return [G.unflatten_styles(flat[i:i + 1]) for i in range(flat.shape[0])]
    s = G.styles(seed_z(seeds, G.config.style_dim), truncation=args.truncation)
    return [[t[i:i + 1] for t in s] for i in range(len(seeds))]


def save(img: torch.Tensor, path: str) -> None:
    from soat.runtime.images import save_png
    for p in save_png(img, path):
        print(p)


# ---- subcommands -------------------------------------------------------------------------------
def cmd_generate(args: argparse.Namespace) -> int:
    G = load_model(args)
    seeds = parse_seeds(args.seeds)
    os.makedirs(args.output, exist_ok=True)
    for seed, s in zip(tqdm(seeds, desc="generate", unit="img"), styles_for(G, args, seeds)):
        save(G.generate(s, noise=args.noise), os.path.join(args.output, f"seed{seed:04d}.png"))
    return 0


def cmd_info(args: argparse.Namespace) -> int:
    from soat.runtime.chain import build_chain
    G = load_model(args, args.model)
    c = G.config
    print(f"source: {G.source}\nfingerprint: {G.fingerprint}")
    print(f"size: {c.size}\nchannel_multiplier: {c.channel_multiplier}\nstyle_dim: {c.style_dim}\nn_mlp: {c.n_mlp}")
    weights = getattr(G.backend, "weights", None)
    if weights is not None:
        print(f"parameters: {sum(p.numel() for p in weights.parameters()):,}")
    print(f"sigma entries: {len(G.style_channels)} ({sum(G.style_channels)} dims)")
    for node in build_chain(c)[1:]:
        print(f"  sigma[{node.style_index:2d}] {node.id:<11} {node.kind:<8} {node.in_channels:4d} ch  {node.resolution}px")
    return 0


def cmd_blend(args: argparse.Namespace) -> int:
    G = load_model(args)
    a, b = styles_for(G, args, args.seeds)
    save(G.blend(a, b, mode=args.mode, noise=args.noise), args.output)
    return 0


def cmd_merge(args: argparse.Namespace) -> int:
    G = load_model(args)
    a, b = styles_for(G, args, args.seeds)
    task = G.merge if args.linear else G.merge_extension
    save(task(a, b, noise=args.noise), args.output)
    return 0


def cmd_panorama(args: argparse.Namespace) -> int:
    G = load_model(args)
    styles = G.panorama_styles(args.n, seed=args.seed, truncation=args.truncation)
    save(G.panorama(styles, noise=args.noise, progress=True), args.output)
    return 0


def cmd_expand(args: argparse.Namespace) -> int:
    G = load_model(args)
    (s,) = styles_for(G, args, [args.seed])
    torch.manual_seed(args.seed)
    save(G.expand(s, mode=args.mode, noise=args.noise or "random"), args.output)
    return 0


def cmd_bbox(args: argparse.Namespace) -> int:
    G = load_model(args)
    a, b = styles_for(G, args, args.seeds)
    save(G.blend_bbox(a, b, tuple(args.box), pose_align=args.pose_align, num_blend=args.num_blend,
                      noise=args.noise), args.output)
    return 0


def cmd_swap(args: argparse.Namespace) -> int:
    G = load_model(args)
    a, b = styles_for(G, args, args.seeds)
    boxes = (tuple(args.boxes[:4]), tuple(args.boxes[4:]))
    save(G.patch_swap(a, b, boxes, swap=not args.no_swap, noise=args.noise), args.output)
    return 0


def cmd_translate(args: argparse.Namespace) -> int:
    import soat
    G1, G2 = load_model(args), load_model(args, args.checkpoint2)
    # as in the reference, both style lists come from generator 2's mapping network
    a, b = styles_for(G2, args, args.seeds)
    save(soat.translate(G1, G2, a, b, num_swap=args.num_swap, alpha=args.alpha, early_alpha=args.early_alpha,
                        noise=args.noise), args.output)
    return 0


def cmd_shift(args: argparse.Namespace) -> int:
    G = load_model(args)
    (s,) = styles_for(G, args, [args.seed])
    targets = [tuple(t) for t in args.target]
    save(G.shift(s, tuple(args.source), targets, layers=args.layers, strength=args.strength, noise=args.noise),
         args.output)
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from soat.demo import run_demo
    run_demo(args.output, size=args.size or 256, channel_multiplier=args.channel_multiplier or 2,
             device=args.device, dtype=args.dtype)
    return 0


# ---- parser ------------------------------------------------------------------------------------
def _model_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--checkpoint", default=DEFAULT_MODEL,
                   help="rosinality/SOAT .pt, NVIDIA .pkl, soat .safetensors, export folder, or random[:SEED] (default)")
    p.add_argument("--backend", default="auto", choices=BACKENDS,
                   help="torch (reference), fast (fused kernels), auto (fast for fp16/bf16, else torch), "
                        "onnxruntime or tensorrt (export folders; a checkpoint is exported into the cache)")
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    p.add_argument("--dtype", default="fp32", choices=["fp32", "fp16", "bf16"])
    p.add_argument("--size", type=int, help="model size (checked against a checkpoint; default 256 for random)")
    p.add_argument("--channel-multiplier", type=int, choices=[1, 2])
    p.add_argument("--truncation", type=float, default=0.7, help="psi in sigma space (default 0.7)")
    p.add_argument("--noise", choices=["fixed", "random"], default=None if p.prog.endswith("expand") else "fixed")
    p.add_argument("--codes", help="inverted codes (soat invert) to use instead of seeds")


def _task(sub, name: str, fn: Callable, help: str, output: str, seeds: int = 0) -> argparse.ArgumentParser:
    p = sub.add_parser(name, help=help, description=help)
    _model_options(p)
    p.add_argument("-o", "--output", default=output, help=f"output PNG (default {output})")
    if seeds:
        p.add_argument("--seeds", type=int, nargs=seeds, default=list(range(seeds)), metavar="SEED",
                       help=f"{seeds} seeds for the styles")
    p.set_defaults(func=fn)
    return p


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="soat", description="StyleGAN of All Trades runtime")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("generate", help="one PNG per seed")
    _model_options(p)
    p.add_argument("--seeds", default="0-7", help="seeds, e.g. 0-7,9 (default 0-7)")
    p.add_argument("-o", "--output", default="out", help="output folder")
    p.set_defaults(func=cmd_generate)

    p = sub.add_parser("info", help="size, channel multiplier, parameters and sigma layout of a model")
    _model_options(p)
    p.add_argument("model", nargs="?", default=None, help="checkpoint (default: --checkpoint)")
    p.set_defaults(func=cmd_info)

    p = _task(sub, "blend", cmd_blend, "blend two images at every layer", "blend.png", seeds=2)
    p.add_argument("--mode", default="horizontal", choices=["horizontal", "vertical"])
    p = _task(sub, "merge", cmd_merge, "two-image panorama span (R x 2R)", "merge.png", seeds=2)
    p.add_argument("--linear", action="store_true", help="plain linspace alpha (merge) instead of merge extension")
    p = _task(sub, "panorama", cmd_panorama, "panorama of N images", "panorama.png")
    p.add_argument("--n", type=int, default=5, help="number of images (default 5)")
    p.add_argument("--seed", type=int, default=90, help="sampler seed (default 90)")
    p = _task(sub, "expand", cmd_expand, "generation from one image: widen after 8x8", "expand.png")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--mode", default="reflect",
                   choices=["horizontal", "vertical", "reflect", "replicate", "circular", "constant"])
    p = _task(sub, "bbox", cmd_bbox, "local attribute transfer inside a box", "bbox.png", seeds=2)
    p.add_argument("--box", type=int, nargs=4, required=True, metavar=("X", "Y", "W", "H"))
    p.add_argument("--pose-align", action="store_true", help="keep the first four sigma entries from image 1")
    p.add_argument("--num-blend", type=int, default=99)
    p = _task(sub, "swap", cmd_swap, "patch swap at 16x16", "swap.png", seeds=2)
    p.add_argument("--boxes", type=int, nargs=8, required=True, metavar="N", help="x1 y1 w1 h1 x2 y2 w2 h2")
    p.add_argument("--no-swap", action="store_true", help="copy box 2 into box 1 only")
    p = _task(sub, "translate", cmd_translate, "image-to-image translation between two generators",
              "translate.png", seeds=2)
    p.add_argument("--checkpoint2", required=True, help="generator 2 (fine-tuned from generator 1)")
    p.add_argument("--num-swap", type=int, default=6)
    p.add_argument("--alpha", type=float, default=0.7)
    p.add_argument("--early-alpha", type=float, default=0.0)
    p = _task(sub, "shift", cmd_shift, "replicate a patch with the Shift operator", "shift.png")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--source", type=int, nargs=4, required=True, metavar=("X", "Y", "W", "H"))
    p.add_argument("--target", type=int, nargs=2, action="append", required=True, metavar=("X", "Y"))
    p.add_argument("--layers", type=int, nargs="+", default=None, help="resolutions to shift at (default 8 16 32)")
    p.add_argument("--strength", type=float, default=1.0)

    p = sub.add_parser("demo", help="run every task on the embedded model; PNGs + index.html")
    p.add_argument("-o", "--output", default="soat-demo", help="output folder (default soat-demo)")
    p.add_argument("--size", type=int, default=None, help="model size (default 256)")
    p.add_argument("--channel-multiplier", type=int, choices=[1, 2], default=None)
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", default="fp32", choices=["fp32", "fp16", "bf16"])
    p.set_defaults(func=cmd_demo)

    _add_optional_tools(sub)
    return parser


def _add_optional_tools(sub) -> None:
    """Subcommands whose parsers live with their feature: (parser adder, command function)."""
    from soat import invert_cli
    from soat.bench import cli as bench_cli
    from soat.export import cli as export_cli
    from soat.serve import cli as serve_cli
    for adder, command in ((export_cli.add_parser, export_cli.run), (serve_cli.add_parser, serve_cli.run),
                           (invert_cli.add_invert_parser, invert_cli.cmd_invert),
                           (invert_cli.add_convert_parser, invert_cli.cmd_convert),
                           (bench_cli.add_parser, bench_cli.run)):
        adder(sub).set_defaults(func=command)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except SoatError as e:
        print(f"soat: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
