"""Heads: modules of the model that objectives train and inference uses, named in
``model.heads`` (``{decoder: ...}``) and looked up by that name (`vlp caption`, the CapPa
scorer; later the detector and the classifier). A head sizes itself on the towers it reads
(``attach(towers)``, called by the module before the objectives attach)."""

from vlp.heads.caption_decoder import CaptionDecoder

__all__ = ["CaptionDecoder"]
