"""Generator configuration: the few numbers that fix a StyleGAN2 layout."""

from __future__ import annotations

import math
from dataclasses import dataclass

from ..errors import SoatError
from .checks import check_int

SUPPORTED_SIZES = (8, 16, 32, 64, 128, 256, 512, 1024, 2048)


def check_layout(size: int | None, channel_multiplier: int | None) -> None:
    """A layout as given (None: inferred from a checkpoint, or the random model's default): integers, a
    StyleGAN2 resolution and a channel multiplier of 1 or 2."""
    if size is not None and check_int(size, "size") not in SUPPORTED_SIZES:
        raise SoatError(f"size={size} is not a StyleGAN2 resolution; use one of {SUPPORTED_SIZES}")
    if channel_multiplier is not None and check_int(channel_multiplier, "channel_multiplier") not in (1, 2):
        raise SoatError(f"channel_multiplier={channel_multiplier} is not supported; use 1 or 2")


@dataclass(frozen=True)
class GeneratorConfig:
    """StyleGAN2 generator layout in rosinality's convention.

    Args:
        size: output resolution R, a power of two >= 8.
        channel_multiplier: 2 for the paper's models (1 for some configs).
        style_dim: width of z, w and the mapping network.
        n_mlp: number of mapping layers.
        lr_mlp: equalized learning-rate multiplier of the mapping layers.
    """

    size: int = 256
    channel_multiplier: int = 2
    style_dim: int = 512
    n_mlp: int = 8
    lr_mlp: float = 0.01

    def __post_init__(self) -> None:
        check_layout(check_int(self.size, "size"), check_int(self.channel_multiplier, "channel_multiplier"))

    @property
    def log_size(self) -> int:
        return int(math.log2(self.size))

    @property
    def num_blocks(self) -> int:
        """Upsampling blocks after the 4x4 stage (8x8 ... R x R)."""
        return self.log_size - 2

    @property
    def num_noises(self) -> int:
        """Styled convs: conv1 plus two per block."""
        return 2 * self.num_blocks + 1

    @property
    def n_latent(self) -> int:
        """Entries of W+ (2L - 2)."""
        return 2 * self.log_size - 2

    def channels(self, resolution: int) -> int:
        """Feature channels at a resolution (docs/contract.md#layout)."""
        cm = self.channel_multiplier
        table = {4: 512, 8: 512, 16: 512, 32: 512, 64: 256 * cm, 128: 128 * cm,
                 256: 64 * cm, 512: 32 * cm, 1024: 16 * cm, 2048: 8 * cm}
        return table[resolution]
