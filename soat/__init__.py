"""StyleGAN of All Trades: a fast, faithful runtime for StyleGAN2 feature-space editing.

    import soat
    G = soat.load("random")                     # or a rosinality/SOAT checkpoint
    s1, s2 = G.styles(torch.randn(2, 512), truncation=0.7)...
    img = G.blend(s1, s2, mode="horizontal")    # [B, 3, R, R] in [-1, 1]
    soat.save_png(img, "blend.png")

    G = soat.load("random", device="cuda", dtype="fp16")    # the fast path
    blend = soat.graphed(lambda a, b: G.blend(a, b))         # one CUDA graph per input shape
"""

from soat.runtime import GeneratorConfig, Generator, LayerNode, SoatError, build_chain, load
from soat.runtime.cudagraph import graphed
from soat.runtime.images import save_png, to_pil, to_uint8
from soat.runtime.styles import flatten_styles
from soat.runtime.tasks.panorama import panorama_styles
from soat.runtime.tasks.translate import translate

__version__ = "0.1.0"

__all__ = ["GeneratorConfig", "Generator", "LayerNode", "SoatError", "build_chain", "graphed", "load", "save_png",
           "to_pil", "to_uint8", "flatten_styles", "panorama_styles", "translate", "__version__"]
