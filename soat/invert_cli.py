"""``soat invert`` and ``soat convert``: argument parsers and commands for soat/cli.py."""

from __future__ import annotations

import argparse
import os

import torch

from .errors import SoatError
from .options import (CHECKPOINT_HELP, add_backend, add_checkpoint, add_device, add_dtype, add_force, add_layout,
                      check_checkpoint, check_output_file, finite_float, int_range)
from .runtime.codes import save_codes
from .runtime.manifest import export_graph_format
from .runtime.files import atomic_output
from .runtime.images import save_png
from .runtime.inversion import VGG16_FILE
from .loader import load
from .runtime.sources import convert


# ---- soat invert -------------------------------------------------------------------------------
def add_invert_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """``soat invert IMAGE... -o codes.pt [--steps N] [--checkpoint MODEL] [--backend fast --dtype bf16]``: the
    fast path (``--backend fast``, ``auto`` for fp16/bf16) inverts too, its kernels running their torch references
    where gradients flow."""
    p = sub.add_parser("invert", help="fit sigma codes to photos (GAN inversion)",
                       description="Invert images into sigma space; the codes file feeds --codes of the tasks.")
    p.add_argument("images", nargs="+", metavar="IMAGE", help="image files (any Pillow format and mode)")
    p.add_argument("-o", "--output", required=True, metavar="CODES.pt", help="codes file to write (.pt)")
    add_checkpoint(p)
    add_backend(p, differentiable=True)
    add_layout(p)
    add_device(p)
    add_dtype(p)
    p.add_argument("--steps", type=int_range(1, 1_000_000), default=1000, help="optimisation steps (default 1000)")
    p.add_argument("--prior-weight", type=finite_float, default=1e-3,
                   help="Gaussian prior weight, 0 = off (default 1e-3)")
    p.add_argument("--lr", type=finite_float, default=0.05, help="peak learning rate (default 0.05)")
    p.add_argument("--lpips", default="auto",
                   help=f"'auto' (LPIPS when the lpips package is installed and {VGG16_FILE} is in torch hub's "
                        f"checkpoints folder; nothing is downloaded), 'off', or the path of {VGG16_FILE}")
    p.add_argument("--preview", metavar="PNG", help="also write the reconstructed images here (.png)")
    add_force(p)
    return p


def cmd_invert(args: argparse.Namespace) -> int:
    check_output_file(args.output, args.force, ".pt")
    if args.preview:
        check_output_file(args.preview, args.force, ".png", "--preview")
    missing = [im for im in args.images if not os.path.isfile(im)]
    if missing:
        raise SoatError(f"image not found: {missing[0]}")
    if export_graph_format(args.checkpoint) is not None:
        raise SoatError(f"--checkpoint {args.checkpoint} is an export folder, whose graphs give no gradients; invert "
                        "with the checkpoint it was exported from")
    check_checkpoint(args.checkpoint, backend=args.backend)
    G = load(args.checkpoint, backend=args.backend, device=args.device, dtype=args.dtype, size=args.size,
             channel_multiplier=args.channel_multiplier)
    codes = G.invert(args.images, steps=args.steps, lpips=args.lpips, prior_weight=args.prior_weight, lr=args.lr,
                     progress=True)
    with atomic_output(args.output) as tmp:
        save_codes(tmp, codes, G)
    print(f"wrote {codes.shape[0]} codes [{codes.shape[0]}, {codes.shape[1]}] to {args.output}")
    if args.preview:
        with torch.no_grad():
            print("wrote", ", ".join(save_png(G.generate(codes), args.preview)))
    return 0


# ---- soat convert ------------------------------------------------------------------------------
def add_convert_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """``soat convert --checkpoint IN -o OUT.safetensors``."""
    p = sub.add_parser("convert", help="convert a checkpoint or NVIDIA pickle to soat's .safetensors format",
                       description="Read a rosinality .pt, NVIDIA .pkl, registry model or random[:SEED] and write "
                                   "it as safetensors with its layout in the header.")
    p.add_argument("--checkpoint", required=True, metavar="MODEL", help=CHECKPOINT_HELP)
    p.add_argument("-o", "--output", required=True, metavar="OUT.safetensors", help="file to write (.safetensors)")
    add_layout(p)
    add_force(p)
    return p


def cmd_convert(args: argparse.Namespace) -> int:
    check_output_file(args.output, args.force, ".safetensors")
    check_checkpoint(args.checkpoint)
    with atomic_output(args.output) as tmp:
        convert(args.checkpoint, tmp, args.size, args.channel_multiplier)
    print("wrote", args.output)
    return 0
