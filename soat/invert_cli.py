"""``soat invert`` and ``soat convert``: argument parsers and commands for soat/cli.py."""

from __future__ import annotations

import argparse

import torch

from .runtime.codes import save_codes
from .runtime.images import save_png
from .runtime.load import load
from .runtime.sources import convert


def _add_model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--size", type=int, help="output resolution (inferred from a checkpoint; 256 for random)")
    p.add_argument("--channel-multiplier", type=int, help="1 or 2 (inferred from a checkpoint; 2 for random)")


def add_invert_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """``soat invert IMAGE... -o codes.pt [--steps N] [--checkpoint P]``."""
    p = sub.add_parser("invert", help="fit sigma codes to photos (GAN inversion)",
                       description="Invert images into sigma space; the codes file feeds `--codes` of the tasks.")
    p.add_argument("images", nargs="+", metavar="IMAGE", help="image files (any Pillow format and mode)")
    p.add_argument("-o", "--output", required=True, help="codes file to write, e.g. codes.pt")
    p.add_argument("--checkpoint", default="random",
                   help="model: rosinality .pt, NVIDIA .pkl, soat .safetensors or random[:SEED] (default random)")
    _add_model_args(p)
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    p.add_argument("--steps", type=int, default=1000, help="optimisation steps (default 1000)")
    p.add_argument("--prior-weight", type=float, default=1e-3, help="Gaussian prior weight, 0 = off (default 1e-3)")
    p.add_argument("--lr", type=float, default=0.05, help="peak learning rate (default 0.05)")
    p.add_argument("--lpips", default="auto",
                   help="'auto' (LPIPS when the lpips package and VGG16 weights are on disk), 'off', "
                        "or the path of vgg16-397923af.pth")
    p.add_argument("--preview", metavar="PNG", help="also write the reconstructed images here")
    return p


def cmd_invert(args: argparse.Namespace) -> int:
    G = load(args.checkpoint, device=args.device, size=args.size, channel_multiplier=args.channel_multiplier)
    codes = G.invert(args.images, steps=args.steps, lpips=args.lpips, prior_weight=args.prior_weight, lr=args.lr,
                     progress=True)
    save_codes(args.output, codes, G)
    print(f"wrote {codes.shape[0]} codes [{codes.shape[0]}, {codes.shape[1]}] to {args.output}")
    if args.preview:
        with torch.no_grad():
            print("wrote", ", ".join(save_png(G.generate(codes), args.preview)))
    return 0


def add_convert_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """``soat convert IN -o OUT.safetensors``."""
    p = sub.add_parser("convert", help="convert a checkpoint or NVIDIA pickle to soat's .safetensors format",
                       description="Read a rosinality .pt, NVIDIA .pkl or random[:SEED] model and write it as "
                                   "safetensors with its layout in the header.")
    p.add_argument("input", metavar="IN", help="checkpoint, NVIDIA pickle or random[:SEED]")
    p.add_argument("-o", "--output", required=True, metavar="OUT", help="file to write, ending in .safetensors")
    _add_model_args(p)
    return p


def cmd_convert(args: argparse.Namespace) -> int:
    print("wrote", convert(args.input, args.output, args.size, args.channel_multiplier))
    return 0
