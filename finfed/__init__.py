"""finfed: privacy-preserving federated fine-tuning (DP-LoRA over Flower) of language models on financial text."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("finfed")
except PackageNotFoundError:  # imported from a source folder that was never installed
    __version__ = "0+unknown"
