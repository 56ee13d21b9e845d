"""structseg: semantic segmentation with CNNs and structured prediction."""

__version__ = "0.1.0"
