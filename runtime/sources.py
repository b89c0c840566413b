"""Where weights come from: ``random[:SEED]``, NVIDIA pickles, soat ``.safetensors`` and rosinality
checkpoints, each read into ``StyleGAN2Weights`` with a fingerprint; conversion to soat's format;
the cache folder."""

from __future__ import annotations

import os

from ..errors import SoatError, os_error
from .checks import random_seed
from .config import GeneratorConfig
from .checkpoint import check_checkpoint_file, load_checkpoint
from .nvidia import is_nvidia_pickle, load_nvidia
from .random_model import random_weights
from .registry import cached_path, fetch, is_remote
from .safetensors_format import SUFFIX, is_safetensors, load_safetensors, save_safetensors
from .weights import StyleGAN2Weights

MODELS = "models"  # the cache folder of registry names and URLs (downloaded, or put there by hand)


def load_weights(source: str, size: int | None = None,
                 channel_multiplier: int | None = None) -> tuple[StyleGAN2Weights, str]:
    """``(StyleGAN2Weights, fingerprint)`` from ``random[:SEED]`` or a file: an NVIDIA pickle, a soat
    ``.safetensors`` file, a rosinality/SOAT torch checkpoint, or a registry name / ``https://`` URL
    (downloaded once into ``cache_dir()/models``, then read as a file)."""
    seed = random_seed(source)
    if seed is not None:
        config = GeneratorConfig(size=size or 256, channel_multiplier=channel_multiplier or 2)
        return random_weights(config, seed), f"random:{seed}:{config.size}:{config.channel_multiplier}"
    if not is_remote(source) or os.path.exists(source):
        return load_file(source, size, channel_multiplier)
    path = resolve_source(source)
    try:
        return load_file(path, size, channel_multiplier)
    except SoatError:
        try:  # is it the file, or the layout asked for?
            load_file(path)
        except SoatError as e:
            raise SoatError(f"{e} (the cached download of {source}: delete {path} to download it again)") from None
        raise


def load_file(path: str, size: int | None = None,
              channel_multiplier: int | None = None) -> tuple[StyleGAN2Weights, str]:
    """A checkpoint file of any of the formats, refused before it is read when it cannot be one (a device,
    a FIFO, a size no checkpoint has)."""
    check_checkpoint_file(path)
    if is_safetensors(path):
        return load_safetensors(path, size, channel_multiplier)
    if is_nvidia_pickle(path):
        return load_nvidia(path, size, channel_multiplier)
    return load_checkpoint(path, size, channel_multiplier)


def resolve_source(source: str) -> str:
    """A registry name or URL -> its file in ``cache_dir()/models`` (downloaded on first use, and kept only once
    it loads); else ``source``."""
    if is_remote(source) and not os.path.exists(source):
        return fetch(source, cache_subdir(MODELS), check=load_file)
    return source


def model_path(source: str) -> str:
    """Where the file of a registry name or URL goes in the cache (``soat models --path NAME``)."""
    return cached_path(source, os.path.join(cache_dir(), MODELS))


def convert(source: str, output: str, size: int | None = None, channel_multiplier: int | None = None) -> str:
    """``soat convert``: any loadable model (checkpoint, NVIDIA pickle, ``random:SEED``) -> ``output``."""
    if not output.lower().endswith(SUFFIX):
        raise SoatError(f"output={output!r} must end with {SUFFIX}")
    weights, fingerprint = load_weights(source, size, channel_multiplier)
    os.makedirs(os.path.dirname(os.path.abspath(output)), exist_ok=True)
    save_safetensors(weights, output, fingerprint)
    return output


def cache_dir() -> str:
    """Root of soat's caches (exports, engines): ``$SOAT_CACHE_DIR``, else ``~/.cache/soat``."""
    return os.environ.get("SOAT_CACHE_DIR") or os.path.join(os.path.expanduser("~"), ".cache", "soat")


def cache_subdir(name: str) -> str:
    """``cache_dir()/name``, created if missing; a cache root that is a file or not writable is one line."""
    folder = os.path.join(cache_dir(), name)
    try:
        os.makedirs(folder, exist_ok=True)
    except OSError as e:
        raise os_error(e, f"creating the cache folder {folder!r} (set SOAT_CACHE_DIR to a writable folder)") \
            from None
    if not os.access(folder, os.W_OK | os.X_OK):
        raise SoatError(f"the cache folder {folder!r} is not writable; set SOAT_CACHE_DIR to a writable folder")
    return folder
