"""Defaults that several layers share, each defined once (a light module: the CLI reads it at start-up).

The registry's default generator is `weights.registry.DEFAULT_GENERATOR`.
"""

SIZES = (256, 512)  # output sizes: the trained size, and twice it
DEFAULT_SIZE = 256
BG_KS = 13  # dilation (px) of the body mask before background inpainting (official --bg_ks)
FT_KS = 3  # dilation (px) of the source crop mask, and erosion of pseudo masks (official --ft_ks)
