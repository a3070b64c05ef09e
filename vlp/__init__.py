"""vlp: contrastive vision-language pretraining on PyTorch Lightning."""

__version__ = "0.1.0"
