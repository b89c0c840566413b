"""Checkpoint reading: rosinality/SOAT ``{"g_ema": state_dict}`` torch files.

Files are read with ``torch.load(weights_only=True)``: nothing in a file can run code.
Every failure is a ``SoatError`` naming the file, the problem and the fix.
"""

from __future__ import annotations

import argparse
import io
import os
import pickle
import pickletools
import re
import stat
import zipfile
from typing import IO

import torch

from .config import GeneratorConfig
from .files import file_sha256
from ..errors import SoatError, os_error
from .weights import StyleGAN2Weights

_BLUR_KEY = re.compile(r"^(convs\.\d+\.conv\.blur\.kernel|to_rgbs\.\d+\.upsample\.kernel)$")
# torch's weights-only unpickler refusing a global: the file asks to import and call code
_NEEDS_CODE = re.compile(r"Unsupported global|whose module \S+ is blocked")

# Bounds on what a pickle may build, checked on its opcode stream before anything is unpickled:
# a deeply nested structure crashes CPython (hashing a nested tuple recurses in C), and a small
# pickle whose memo references fan out (t_k = (t_{k-1}, t_{k-1})) hashes for ever. Real
# checkpoints nest about 30 deep (NVIDIA snapshots) and expand to about their opcode count.
MAX_PICKLE_DEPTH = 200
MAX_PICKLE_EXPANSION = 50_000_000
# torch.save's legacy (pre-zip) files start with a pickle of this magic number
LEGACY_MAGIC = pickle.dumps(0x1950A86A20F9469CFC6C, protocol=2)[2:-1]
_LEGACY_PICKLES = 5  # torch.save's legacy format: magic, protocol, sys info, the object, storage keys
_IN_PLACE = {"APPEND", "APPENDS", "SETITEM", "SETITEMS", "ADDITEMS", "BUILD"}  # update the container below
_PASS_THROUGH = {"MEMOIZE", "READONLY_BUFFER"}
# The layout fields a file may declare, with the ranges a StyleGAN2 generator has (checked before
# anything is built: a header saying n_mlp=100000000 would otherwise build 10^8 layers).
LAYOUT_RANGES = {"style_dim": (1, 4096), "n_mlp": (1, 32)}
# The largest file read as a checkpoint: a 1024 px training checkpoint with both networks and Adam's state is
# about 1 GB; nothing near this size is a generator
MAX_CHECKPOINT_BYTES = 1 << 34
_NOT_FILES = ((stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"),
              (stat.S_ISFIFO, "a FIFO (named pipe)"), (stat.S_ISSOCK, "a socket"))


def check_checkpoint_file(path: str) -> None:
    """Refuse, before opening it, what cannot be a checkpoint: a device (``/dev/zero`` reads for ever), a FIFO
    (opening it waits for a writer), a socket, or a file larger than ``MAX_CHECKPOINT_BYTES``. A missing path or
    a folder is left to the loaders, which say so in their words."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return
    except OSError as e:
        raise os_error(e, f"reading the checkpoint {path!r}") from None
    kind = next((name for test, name in _NOT_FILES if test(st.st_mode)), None)
    if kind is not None:
        raise SoatError(f"{path!r} is {kind}, not a checkpoint file; give the path of a .pt, .pkl or "
                        ".safetensors file")
    if stat.S_ISREG(st.st_mode) and st.st_size > MAX_CHECKPOINT_BYTES:
        raise SoatError(f"{path!r} has {st.st_size:,} bytes, more than any StyleGAN2 checkpoint "
                        f"({MAX_CHECKPOINT_BYTES:,} at most); refused")


def _check_zip_records(z: zipfile.ZipFile, size: int, where: str) -> None:
    """Every record of a torch zip declares at most the archive's own size: torch stores its records
    uncompressed, so a larger one is a compressed record that would be inflated into memory."""
    for info in z.infolist():
        if info.file_size > size:
            raise SoatError(f"{where}: its record {info.filename!r} inflates to {info.file_size:,} bytes, more than "
                            f"the whole file ({size:,}); torch never compresses its records, so this is not a "
                            "checkpoint. Refused before reading it")


class _Clamped:
    """A plain file whose reads stop at its end: a pickle opcode declares its byte count, and a file's
    ``read(n)`` allocates ``n`` bytes before reading (a 100-byte file declaring 2**36 raised MemoryError)."""

    def __init__(self, f: IO[bytes], size: int):
        self._f, self._size = f, size

    def read(self, n: int = -1) -> bytes:
        return self._f.read(n if n is None or n < 0 else min(n, max(0, self._size - self._f.tell())))

    def readline(self) -> bytes:
        return self._f.readline()

    def tell(self) -> int:
        return self._f.tell()


class _Malformed(Exception):
    """The opcode stream cannot be a valid pickle: left to the real unpickler to report."""


def _scan_pickle(stream: IO[bytes], where: str) -> None:
    """Simulate the unpickler's stack on ``stream``'s opcodes (up to STOP) and refuse a pickle whose
    objects nest deeper than ``MAX_PICKLE_DEPTH`` or expand (memo references followed) past
    ``MAX_PICKLE_EXPANSION`` objects. Nothing is built; each stack entry is (depth, expanded size)."""
    stack: list[tuple[int, int]] = []
    marks: list[int] = []
    memo: dict = {}

    def push(depth: int, size: int) -> None:
        if depth > MAX_PICKLE_DEPTH:
            raise SoatError(f"{where} holds a structure nested more than {MAX_PICKLE_DEPTH} levels deep; "
                            "refused (no checkpoint nests like that, and unpickling it can crash Python)")
        if size > MAX_PICKLE_EXPANSION:
            raise SoatError(f"{where} holds a structure of more than {MAX_PICKLE_EXPANSION} objects once its "
                            "shared references are followed; refused (it would take for ever to unpickle)")
        stack.append((depth, size))

    def pop(n: int) -> list[tuple[int, int]]:
        if len(stack) < n:
            raise _Malformed
        items = stack[len(stack) - n:]
        del stack[len(stack) - n:]
        return items

    for op, arg, _ in pickletools.genops(stream):
        name = op.name
        if name == "STOP":
            return
        if name == "MARK":
            marks.append(len(stack))
        elif name in ("PUT", "BINPUT", "LONG_BINPUT", "MEMOIZE"):
            if not stack:
                raise _Malformed
            memo[len(memo) if name == "MEMOIZE" else arg] = stack[-1]
        elif name in ("GET", "BINGET", "LONG_BINGET"):
            if arg not in memo:
                raise _Malformed
            push(*memo[arg])
        elif name in _PASS_THROUGH:
            if not stack:
                raise _Malformed
        elif pickletools.markobject in op.stack_before:
            if not marks or marks[-1] > len(stack):
                raise _Malformed
            items = pop(len(stack) - marks.pop())
            depth = max((d for d, _ in items), default=0) + 1
            size = 1 + sum(n for _, n in items)
            if name in _IN_PLACE:  # APPENDS / SETITEMS / ADDITEMS into the container below the mark
                (d0, n0), = pop(1)
                push(max(d0, depth), n0 + size)
            elif op.stack_after:
                push(depth, size)
        else:
            items = pop(len(op.stack_before))
            if name in _IN_PLACE:  # APPEND / SETITEM / BUILD
                (d0, n0), rest = items[0], items[1:]
                push(max([d0] + [d + 1 for d, _ in rest]), n0 + sum(n for _, n in rest))
            elif name == "DUP":
                stack.extend(items * 2)
            else:
                depth = max((d for d, _ in items), default=-1) + 1
                for _ in op.stack_after:
                    push(depth, 1 + sum(n for _, n in items))


def check_pickle_structure(data: str | bytes, where: str) -> None:
    """Refuse, before unpickling, a file (path) or ``torch.save`` bytes whose pickles nest too deep, or whose
    zip records inflate past the file's size.

    Handles plain pickles (NVIDIA snapshots), torch zip files (every ``*.pkl`` member) and
    torch's legacy format (its leading pickles). Streams that are not valid pickles are left
    for the real loader to report.
    """
    raw = io.BytesIO(data) if isinstance(data, bytes) else None
    try:
        with (raw or open(data, "rb")) as f:
            if zipfile.is_zipfile(f):
                with zipfile.ZipFile(f) as z:
                    _check_zip_records(z, f.seek(0, io.SEEK_END), where)
                    for info in z.infolist():
                        if info.filename.endswith(".pkl"):
                            with z.open(info) as member:
                                _scan_pickle(member, where)
                return
            size = f.seek(0, io.SEEK_END)
            f.seek(0)
            legacy = LEGACY_MAGIC in f.read(64)
            f.seek(0)
            for _ in range(_LEGACY_PICKLES if legacy else 1):
                _scan_pickle(_Clamped(f, size), where)
    except SoatError:
        raise
    except (_Malformed, ValueError, EOFError, zipfile.BadZipFile, NotImplementedError):
        # not a valid pickle stream (zipfile raises NotImplementedError for a compression method it lacks):
        # the real loader reports it in its own words
        return
    except OSError as e:
        raise SoatError(f"cannot read {where}: {e.strerror or e}") from None


def check_finite(tensors: dict, where: str) -> None:
    """Refuse weights holding NaN or inf, naming the first such tensor (they make every image NaN)."""
    for name, t in tensors.items():
        if t is not None and t.is_floating_point() and not bool(torch.isfinite(t).all()):
            bad = int((~torch.isfinite(t)).sum())
            raise SoatError(f"{where}: tensor {name!r} holds {bad} NaN or inf value(s); the file is corrupt "
                            "(or the training diverged) and would give all-NaN images. Use another checkpoint")


def check_layout(style_dim: int, n_mlp: int, where: str) -> None:
    """Layout fields read from a file, checked against ``LAYOUT_RANGES`` before anything is built."""
    for name, value in (("style_dim", style_dim), ("n_mlp", n_mlp)):
        lo, hi = LAYOUT_RANGES[name]
        if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
            raise SoatError(f"{where}: {name}={value!r} is outside the range of a StyleGAN2 generator "
                            f"({lo} <= {name} <= {hi}); the file is corrupt or not a generator")


def read_torch_file(path: str) -> object:
    """``torch.load`` restricted to tensors and plain containers, with clear errors."""
    if not os.path.exists(path):
        raise SoatError(f"checkpoint not found: {path!r}; give the path of a .pt file (or 'random' for the built-in model)")
    if os.path.isdir(path):
        raise SoatError(f"{path!r} is a folder without a manifest.json, so not an export folder; give a checkpoint "
                        "file, or a folder written by `soat export`")
    check_pickle_structure(path, repr(path))
    try:
        # rosinality's train.py stores its argparse.Namespace beside the weights: a plain container, allowed
        with torch.serialization.safe_globals([argparse.Namespace]):
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        if _NEEDS_CODE.search(str(e)):
            raise SoatError(f"{path!r} holds Python objects that need code execution to unpickle; refusing to run them. "
                            "Re-save it as a plain state dict: torch.save({'g_ema': g_ema.state_dict()}, path)") from None
        raise SoatError(f"{path!r} is not a PyTorch checkpoint (its pickle data is malformed); "
                        "expected a torch.save file with a 'g_ema' state dict") from None
    except Exception as e:  # untrusted bytes can fail anywhere in torch.load (KeyError, IndexError, ...): a bad file
        msg = f"{type(e).__name__}: {str(e).splitlines()[0]}" if str(e) else type(e).__name__
        hint = "the file looks truncated or corrupt; download or save it again" \
            if _looks_truncated(path) else "expected a torch.save file with a 'g_ema' state dict"
        raise SoatError(f"cannot read {path!r} as a PyTorch checkpoint ({msg}); {hint}") from None


def _looks_truncated(path: str) -> bool:
    with open(path, "rb") as f:
        head = f.read(4)
    return head.startswith(b"PK") and not zipfile.is_zipfile(path)


def extract_g_ema(obj: object, path: str) -> dict[str, torch.Tensor]:
    if not isinstance(obj, dict) or "g_ema" not in obj:
        keys = sorted(map(str, obj.keys()))[:8] if isinstance(obj, dict) else type(obj).__name__
        raise SoatError(f"{path!r} has no 'g_ema' entry (found {keys}); expected a rosinality/SOAT checkpoint "
                        "{'g_ema': state_dict, ...}")
    sd = obj["g_ema"]
    if not isinstance(sd, dict) or not all(isinstance(v, torch.Tensor) for v in sd.values()):
        raise SoatError(f"{path!r}: 'g_ema' is not a state dict of tensors")
    odd = [k for k in sd if not isinstance(k, str)]
    if odd:
        raise SoatError(f"{path!r}: 'g_ema' has keys that are not names (e.g. {odd[0]!r}); "
                        "expected a state dict keyed by parameter names such as 'conv1.conv.weight'")
    return {k: v for k, v in sd.items() if not _BLUR_KEY.match(k)}


def mean_latent(value: object, style_dim: int, name: str, where: str) -> torch.Tensor | None:
    """A checkpoint's mean latent (rosinality's ``latent_avg``, NVIDIA's ``mapping.w_avg``) as
    ``[style_dim]`` fp32, ``None`` when absent; anything else stored there is refused."""
    if value is None:
        return None
    if not isinstance(value, torch.Tensor) or value.numel() != style_dim or not value.is_floating_point():
        shape = list(value.shape) if isinstance(value, torch.Tensor) else type(value).__name__
        raise SoatError(f"{where}: {name} must be a mean latent of {style_dim} floats; got {shape}")
    w_avg = value.detach().reshape(style_dim).float()
    check_finite({name: w_avg}, where)
    return w_avg


def infer_config(sd: dict[str, torch.Tensor], path: str, size: int | None = None,
                 channel_multiplier: int | None = None) -> GeneratorConfig:
    """Size from the number of ToRGB blocks, channel multiplier from the 64x64 width, MLP from ``style.*``."""
    def shape(key: str) -> tuple[int, ...]:
        if key not in sd:
            raise SoatError(f"{path!r}: key {key!r} is missing; this is not a StyleGAN2 generator in rosinality's layout")
        return tuple(sd[key].shape)

    blocks = len({k.split(".")[1] for k in sd if k.startswith("to_rgbs.")})
    inferred_size = 4 * 2 ** blocks
    mlp = sorted({int(k.split(".")[1]) for k in sd if re.match(r"^style\.\d+\.weight$", k)})
    style_dim = shape("style.1.weight")[0] if mlp else shape("conv1.conv.modulation.weight")[1]
    check_layout(style_dim, len(mlp) or 8, repr(path))
    cm = None
    if inferred_size >= 64:
        c64 = shape(f"convs.{2 * 3}.conv.weight")[1]  # the first conv of the 64x64 block
        if c64 % 256 or c64 // 256 not in (1, 2):
            raise SoatError(f"{path!r}: 64x64 layers have {c64} channels, which fits no channel multiplier (1 or 2)")
        cm = c64 // 256
    if size is not None and size != inferred_size:
        raise SoatError(f"{path!r} holds a {inferred_size}px generator ({blocks} ToRGB blocks) but size={size} was given; "
                        "leave size out to infer it")
    if channel_multiplier is not None and cm is not None and channel_multiplier != cm:
        raise SoatError(f"{path!r} has channel_multiplier {cm} but {channel_multiplier} was given; leave it out to infer it")
    return GeneratorConfig(size=inferred_size, channel_multiplier=cm or channel_multiplier or 2,
                           style_dim=style_dim, n_mlp=len(mlp) or 8)


def weights_from_state_dict(sd: dict[str, torch.Tensor], config: GeneratorConfig, path: str,
                            w_avg: torch.Tensor | None = None) -> StyleGAN2Weights:
    """Build the weights module on ``meta`` and assign the checkpoint tensors after strict key/shape and
    finiteness checks; ``w_avg``: the checkpoint's mean latent (see ``mean_latent``), if it has one."""
    with torch.device("meta"):
        weights = StyleGAN2Weights(config)
    expected = weights.state_dict()
    missing = sorted(set(expected) - set(sd))
    unexpected = sorted(set(sd) - set(expected))
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"missing {len(missing)} keys (e.g. {missing[:3]})")
        if unexpected:
            parts.append(f"unexpected {len(unexpected)} keys (e.g. {unexpected[:3]})")
        raise SoatError(f"{path!r} does not match a StyleGAN2 {config.size}px generator: {'; '.join(parts)}. "
                        "Check size/channel_multiplier, or that this is a rosinality-format g_ema")
    for k, v in expected.items():
        if tuple(sd[k].shape) != tuple(v.shape):
            raise SoatError(f"{path!r}: {k} has shape {list(sd[k].shape)}, expected {list(v.shape)} for "
                            f"size={config.size}, channel_multiplier={config.channel_multiplier}")
    check_finite({k: sd[k] for k in expected}, repr(path))
    weights.load_state_dict({k: sd[k].float() for k in expected}, assign=True)
    weights.w_avg = w_avg
    return weights


def load_checkpoint(path: str, size: int | None = None,
                    channel_multiplier: int | None = None) -> tuple[StyleGAN2Weights, str]:
    """Read a rosinality/SOAT checkpoint; returns the weights and the file's sha256."""
    obj = read_torch_file(path)
    sd = extract_g_ema(obj, path)
    config = infer_config(sd, path, size, channel_multiplier)
    w_avg = mean_latent(obj.get("latent_avg"), config.style_dim, "latent_avg", repr(path))
    return weights_from_state_dict(sd, config, path, w_avg), file_sha256(path)
