"""finfed: privacy-preserving federated fine-tuning (DP-LoRA over Flower) of language models on financial text."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("finfed")
except PackageNotFoundError:  # imported from a source folder that was never installed
    __version__ = "0+unknown"

import logging as _logging

# torchao (the optional `int8` extra; peft imports it whenever it is installed) warns at import that its GPU
# kernels do not load on a CPU-only machine, and torch that torchao registers enums the old way: noise on
# every command. finfed uses only torchao's CPU paths.
for _name in ("torchao", "torch.utils._pytree"):
    _logging.getLogger(_name).setLevel(_logging.ERROR)
