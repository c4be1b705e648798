"""GLPN's configuration and published models (GLPN on MiT-B4, KITTI and NYUv2): no PyTorch."""

from __future__ import annotations

from typing import Any

from ..pyramid import configuration as pyramid_config


class GLPNConfig(pyramid_config.PyramidConfig):
    """Configuration of a GLPN model; field names and defaults are transformers'.

    Args:
        decoder_hidden_size: Width of the decoder.
        max_depth: The largest depth the head predicts (the sigmoid's scale), in the labels' unit.
        head_in_index: Which decoder output the head reads (-1: the last, at the input's size).
        **kwargs: The encoder's fields (`pyramid_config.PyramidConfig`) and the common ones.
    """

    model_type = "glpn"
    title = "GLPN"
    variant_prefixes = ("glpn_", "vinvino02/glpn_")

    def __init__(
        self, decoder_hidden_size: int = 64, max_depth: float = 10, head_in_index: int = -1, **kwargs: Any
    ) -> None:
        super().__init__(**kwargs)
        self.decoder_hidden_size, self.head_in_index = int(decoder_hidden_size), int(head_in_index)
        # transformers types the field int: whole depths are written as ints so its strict config loads our file
        self.max_depth = int(max_depth) if float(max_depth).is_integer() else float(max_depth)
        if self.decoder_hidden_size < 2 or self.decoder_hidden_size % 2:
            raise ValueError(f"GLPNConfig: decoder_hidden_size must be an even number >= 2, got {decoder_hidden_size}")
        if not float(max_depth) > 0:
            raise ValueError(f"GLPNConfig: max_depth must be positive, got {max_depth}")


# ---------------------------------------------------------------------------------------------------------------
# The published models: GLPN on MiT-B4, trained on KITTI (depths to 80 m) and NYUv2 (to 10 m).

_B4 = {"depths": (3, 8, 27, 3), "hidden_sizes": (64, 128, 320, 512), "decoder_hidden_size": 64}
VARIANTS: dict[str, dict[str, Any]] = {"kitti": {**_B4, "max_depth": 80}, "nyu": {**_B4, "max_depth": 10}}
GLPNConfig.variants = VARIANTS
