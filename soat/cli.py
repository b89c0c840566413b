"""The ``soat`` command line: generation, every task, the demo gallery, and the tools (the parser and
``main``; what each task command does is in ``soat.commands``).

One convention everywhere: ``--checkpoint MODEL``; seeds as ``--seeds 0-7,9`` (a task on two images
takes exactly two seeds, a task on one image or the panorama sampler one); ``-o`` is a ``.png`` file
for one image and a folder for several; an existing output is replaced only with ``--force``.
Arguments and output paths are checked before a model is loaded; every user mistake is one line
``soat: error: ...`` and exit status 2 (a mistyped command or choice names the nearest one), and every
warning one line ``soat: warning: ...``. Every command that takes a model takes ``--offline`` (no download).
"""

from __future__ import annotations

import argparse
import contextlib
import difflib
import os
import sys
import warnings
from typing import Callable, Iterator

from soat.commands import (cmd_bbox, cmd_blend, cmd_demo, cmd_expand, cmd_generate, cmd_info, cmd_merge, cmd_models,
                           cmd_panorama, cmd_shift, cmd_swap, cmd_translate)
from soat.errors import SoatError, os_error, print_error
from soat.options import (Seeds, add_backend, add_checkpoint, add_device, add_dtype, add_force, add_layout,
                          finite_float, int_range, number, parse_seeds, seeds_arg)
from soat.runtime.checks import SIGMA_INDEX
from soat.runtime.registry import OFFLINE_ENV
from soat.version import __version__

DEFAULT_MODEL = "random"
PANORAMA_MAX_N = 64  # images in one panorama (R x 64R); soat serve streams wider ones

__all__ = ["PANORAMA_MAX_N", "Seeds", "build_parser", "main", "parse_seeds"]


class _UsageError(Exception):
    """An argparse error, reported as one line by ``main``."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # one line, no usage block; main() prints it and returns 2
        raise _UsageError(message)

    def _check_value(self, action: argparse.Action, value: object) -> None:
        """argparse's choice check, naming the nearest choice of a mistyped one (``soat generat``)."""
        if action.choices is not None and value not in action.choices:
            close = difflib.get_close_matches(str(value), [str(c) for c in action.choices], n=1)
            if close:
                choices = ", ".join(map(repr, action.choices))
                raise argparse.ArgumentError(action, f"invalid choice: {value!r}; did you mean {close[0]!r}? "
                                                     f"(choose from {choices})")
        super()._check_value(action, value)


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
    what, examples = {1: ("one seed", "3"), 2: ("exactly two seeds, one per image", "0,5 or 4-5")}[seeds]
    p.add_argument("--seeds", type=seeds_arg, default=parse_seeds(default_seeds), metavar="SEEDS",
                   help=f"{what}, in the seed syntax (e.g. {examples}; default {default_seeds})")
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
                                   "on first use, and which are already cached; --path NAME says where a file "
                                   "downloaded elsewhere goes.")
    p.add_argument("--path", metavar="NAME",
                   help="print where the file of NAME (a name or an https:// URL) goes in the cache, and nothing else")
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
    p.add_argument("--num-blend", type=int_range(0, what=SIGMA_INDEX), default=99,
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
    p.add_argument("--alpha", type=number(float, 0, 1), default=0.7, help="weight of generator 2 after --num-swap (default 0.7)")
    p.add_argument("--early-alpha", type=number(float, 0, 1), default=0.0,
                   help="weight of generator 2 in the first --num-swap entries (default 0)")
    p = _task(sub, "shift", cmd_shift, "replicate a patch with the Shift operator", "shift.png", 1, "0")
    p.add_argument("--source", type=int, nargs=4, required=True, metavar=("X", "Y", "W", "H"),
                   help="the patch to replicate, in output pixels")
    p.add_argument("--target", type=int, nargs=2, action="append", required=True, metavar=("X", "Y"),
                   help="where a copy goes (top-left corner); repeat for several")
    p.add_argument("--layers", type=int, nargs="+", default=None, metavar="RES",
                   help="resolutions to shift at (default 8 16 32)")
    p.add_argument("--strength", type=number(float, 0, 1), default=1.0, help="blend weight of the copies (default 1)")

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
    for p in sub.choices.values():
        if any("--checkpoint" in a.option_strings for a in p._actions):
            p.add_argument("--offline", action="store_true",
                           help=f"never download (as {OFFLINE_ENV}=1): a model not in the cache is an error saying "
                                "where to put its file")
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


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    """A warning as one line, as errors are (no file, line or source)."""
    print(f"soat: warning: {message}", file=sys.stderr if file is None else file)


@contextlib.contextmanager
def _offline(on: bool) -> Iterator[None]:
    """``--offline``: ``SOAT_OFFLINE=1`` for the command (the registry and any worker process read it)."""
    if not on:
        yield
        return
    before = os.environ.get(OFFLINE_ENV)
    os.environ[OFFLINE_ENV] = "1"
    try:
        yield
    finally:
        if before is None:
            os.environ.pop(OFFLINE_ENV, None)
        else:
            os.environ[OFFLINE_ENV] = before


def main(argv: list[str] | None = None) -> int:
    try:
        try:
            args = build_parser().parse_args(argv)
        except SystemExit as e:  # --help, --version
            return e.code if isinstance(e.code, int) else 0
        with warnings.catch_warnings(), _offline(getattr(args, "offline", False)):
            warnings.showwarning = _show_warning  # restored by catch_warnings
            code = args.func(args)
        sys.stdout.flush()  # inside the try: a closed pipe (soat info | head) is reported here
        return code
    except (SoatError, _UsageError) as e:
        print_error(e)
        return 2
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        # the reader went away (| head): no traceback, and none at exit when Python flushes stdout
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 141
    except OSError as e:  # a full disk, a folder made read-only meanwhile: the system's reason, one line
        print_error(os_error(e, "the command"))
        return 1


if __name__ == "__main__":
    sys.exit(main())
