"""localspec: fast local decoding with train-free, lossless speculative decoding."""

__version__ = "0.1.0"
