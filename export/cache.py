"""The export cache: a checkpoint (or ``random[:SEED]``) exported once into
``<cache_dir>/exports/<key>`` (``$SOAT_CACHE_DIR``, default ``~/.cache/soat``), keyed by the
source's fingerprint, dtype, opset and exporter version, and reused while its manifest verifies.
``soat.load(CHECKPOINT, backend="onnxruntime")`` goes through here.
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile

from ..errors import SoatError
from ..runtime.checkpoint import file_sha256
from ..runtime.manifest import read_manifest
from ..runtime.sources import cache_dir, load_weights
from .onnx_export import DEFAULT_OPSET, cache_key, export_weights


def cached_export(source: str, dtype: str, size: int | None = None, channel_multiplier: int | None = None,
                  opset: int = DEFAULT_OPSET) -> str:
    """The cache folder holding ``source``'s export, made (atomically) when missing or invalid."""
    weights = None
    if os.path.isfile(source):
        fingerprint = file_sha256(source)  # load_checkpoint's fingerprint, without reading the weights
    else:
        weights, fingerprint = load_weights(source, size, channel_multiplier)
    folder = os.path.join(cache_dir(), "exports", cache_key(fingerprint, dtype, opset))
    if _is_valid(folder):
        return folder
    if weights is None:
        weights, fingerprint = load_weights(source, size, channel_multiplier)
    os.makedirs(os.path.dirname(folder), exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=".tmp-", dir=os.path.dirname(folder))
    try:
        export_weights(weights, weights.fixed_noise(), source, fingerprint, tmp, dtype, opset,
                       progress=sys.stderr.isatty())
        shutil.rmtree(folder, ignore_errors=True)  # an invalid leftover
        os.replace(tmp, folder)
    except OSError:
        if not _is_valid(folder):  # not another process that won the race
            raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return folder


def _is_valid(folder: str) -> bool:
    try:
        read_manifest(folder)
    except SoatError:
        return False
    return True
