"""StyleGAN of All Trades: a fast, faithful runtime for StyleGAN2 feature-space editing.

    import soat
    G = soat.load("random")                     # or a rosinality/SOAT checkpoint
    s1, s2 = G.styles(torch.randn(2, 512), truncation=0.7)...
    img = G.blend(s1, s2, mode="horizontal")    # [B, 3, R, R] in [-1, 1]
    soat.save_png(img, "blend.png")

    G = soat.load("random", device="cuda", dtype="fp16")    # the fast path
    blend = soat.cuda_graphed(lambda a, b: G.blend(a, b))    # one CUDA graph per input shape
"""

import warnings

from soat.errors import SoatError
from soat.runtime.chain import LayerNode, build_chain
from soat.runtime.codes import load_codes, save_codes
from soat.runtime.config import GeneratorConfig
from soat.runtime.cudagraph import cuda_graphed
from soat.runtime.generator import Generator
from soat.runtime.images import save_png, to_pil, to_uint8
from soat.loader import load
from soat.runtime.sources import convert
from soat.runtime.styles import flatten_styles
from soat.runtime.tasks.translate import translate
from soat.version import __version__

__all__ = ["GeneratorConfig", "Generator", "LayerNode", "SoatError", "build_chain", "convert", "cuda_graphed",
           "flatten_styles", "load", "load_codes", "save_codes", "save_png", "to_pil", "to_uint8", "translate",
           "__version__"]


def __getattr__(name: str):
    if name == "graphed":  # the old name: "graph" names the exported layer graphs
        warnings.warn("soat.graphed is deprecated; use soat.cuda_graphed", DeprecationWarning, stacklevel=2)
        return cuda_graphed
    raise AttributeError(f"module 'soat' has no attribute {name!r}")
