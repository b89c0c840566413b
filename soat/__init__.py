"""StyleGAN of All Trades: a fast, faithful runtime for StyleGAN2 feature-space editing.

    import soat
    G = soat.load("random")                     # or a rosinality/SOAT checkpoint
    s1, s2 = G.styles(torch.randn(2, 512), truncation=0.7)...
    img = G.blend(s1, s2, mode="horizontal")    # [B, 3, R, R] in [-1, 1]
    soat.save_png(img, "blend.png")

    G = soat.load("random", device="cuda", dtype="fp16")    # the fast path
    blend = soat.graphed(lambda a, b: G.blend(a, b))         # one CUDA graph per input shape
"""

from soat.errors import SoatError
from soat.runtime.chain import LayerNode, build_chain
from soat.runtime.codes import load_codes, save_codes
from soat.runtime.config import GeneratorConfig
from soat.runtime.cudagraph import graphed
from soat.runtime.generator import Generator
from soat.runtime.images import save_png, to_pil, to_uint8
from soat.loader import load
from soat.runtime.sources import convert
from soat.runtime.styles import flatten_styles
from soat.runtime.tasks.translate import translate
from soat.version import __version__

__all__ = ["GeneratorConfig", "Generator", "LayerNode", "SoatError", "build_chain", "convert", "flatten_styles",
           "graphed", "load", "load_codes", "save_codes", "save_png", "to_pil", "to_uint8", "translate",
           "__version__"]
