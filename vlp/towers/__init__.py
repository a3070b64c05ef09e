"""Towers: nn.Modules that map an input batch field to ``{"pooled": [B, E], "tokens": [B, N, W]}``.

``pooled`` is the projected embedding (not normalised); ``tokens`` the last hidden states.
"""

from vlp.towers.coca_image import CoCaImageTower
from vlp.towers.coca_text import CoCaTextTower
from vlp.towers.hf_text import HFTextTower
from vlp.towers.projection import make_projection
from vlp.towers.text import TextTransformer
from vlp.towers.timm_image import TimmImageTower

__all__ = ["CoCaImageTower", "CoCaTextTower", "HFTextTower", "TextTransformer", "TimmImageTower", "make_projection"]
