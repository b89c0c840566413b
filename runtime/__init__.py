"""The SOAT runtime: the layer chain, its backends, sigma space and the editing tasks."""

from .chain import LayerNode, build_chain
from .config import GeneratorConfig
from ..errors import SoatError
from .generator import Generator
from .load import load

__all__ = ["LayerNode", "build_chain", "GeneratorConfig", "SoatError", "Generator", "load"]
