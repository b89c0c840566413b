"""Inversion codes on disk: flat sigma ``[B, total]`` with the fingerprint of the model that made them.

A codes file is ``torch.save`` of a plain dict (read back with ``weights_only=True``):
``format``, ``version``, ``styles`` ``[B, total]`` fp32, ``fingerprint``, ``size``,
``channel_multiplier`` and ``style_channels`` (the sigma layout). Codes only make the
image they were fitted to on the model they were fitted with, so loading them for
another model is refused (``check_model=False`` lets a fine-tuned model that shares the
sigma layout, e.g. for translation, use them).
"""

from __future__ import annotations

import os
from typing import Any

import torch

from ..errors import SoatError
from .checkpoint import check_pickle_structure
from .styles import StyleArg, flatten_styles

FORMAT = "soat-codes"
VERSION = 1


def _model_info(G: Any) -> dict[str, Any]:
    return {"fingerprint": G.fingerprint, "size": G.config.size, "channel_multiplier": G.config.channel_multiplier,
            "style_channels": list(G.style_channels)}


def save_codes(path: str | os.PathLike, styles: StyleArg, G: Any) -> str:
    """Write codes for ``G``: ``styles`` is a sigma list or a flat ``[B, total]`` tensor."""
    flat = flatten_styles(G.check_styles(styles, "styles")).detach().to("cpu", torch.float32)
    path = os.fspath(path)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    torch.save({"format": FORMAT, "version": VERSION, "styles": flat, **_model_info(G)}, path)
    return path


def read_codes(path: str | os.PathLike) -> dict[str, Any]:
    """The codes file as a dict, after checking that it is one."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise SoatError(f"codes file not found: {path!r}; write one with `soat invert IMAGE... -o {path}`")
    check_pickle_structure(path, repr(path))
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except OSError as e:
        raise SoatError(f"cannot read {path!r}: {e.strerror or e}") from None
    except Exception as e:  # untrusted bytes (a text file, say) can fail anywhere in torch.load: a bad file
        raise SoatError(f"cannot read {path!r} as inversion codes ({type(e).__name__}: not a torch.save file of "
                        "tensors); a codes file is written by `soat invert` or soat.runtime.codes.save_codes") from None
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise SoatError(f"{path!r} is not a soat codes file (expected format {FORMAT!r}); "
                        "write one with `soat invert` or soat.runtime.codes.save_codes")
    if data.get("version") != VERSION or not isinstance(data.get("styles"), torch.Tensor):
        raise SoatError(f"{path!r}: codes version {data.get('version')!r} is not readable by this soat "
                        f"(version {VERSION})")
    return data


def load_codes(path: str | os.PathLike, G: Any, check_model: bool = True) -> torch.Tensor:
    """Codes fitted with ``G`` as flat sigma ``[B, total]`` on G's device and dtype.

    Refused when the sigma layout differs, or (with ``check_model``) the model fingerprint does.
    """
    data = read_codes(path)
    mine = _model_info(G)
    name = repr(os.fspath(path))
    if data.get("style_channels") != mine["style_channels"]:
        raise SoatError(f"{name} holds codes for a {data.get('size')}px channel_multiplier "
                        f"{data.get('channel_multiplier')} model, but this model is {mine['size']}px "
                        f"channel_multiplier {mine['channel_multiplier']}: their sigma layouts differ; "
                        "invert the images again with this model")
    if check_model and data.get("fingerprint") != mine["fingerprint"]:
        raise SoatError(f"{name} holds codes fitted with another model (fingerprint "
                        f"{str(data.get('fingerprint'))[:16]}, this model {str(mine['fingerprint'])[:16]}); codes only "
                        "reproduce their images on the model they were fitted with. Invert again with this model, or "
                        "pass check_model=False for a fine-tuned model that shares the sigma space")
    return flatten_styles(G.check_styles(data["styles"], "codes"))
