"""finfed: privacy-preserving federated fine-tuning (DP-LoRA over Flower) of language models on financial text."""

import logging as _logging
from importlib.metadata import PackageNotFoundError, version

from finfed.lean_imports import leave_out_int8_library_if_asked as _leave_out_int8_library_if_asked

try:
    __version__ = version("finfed")
except PackageNotFoundError:  # imported from a source folder that was never installed
    __version__ = "0+unknown"

# The Flower processes finfed starts (their environment says so) never quantize: the optional int8 library
# stays out of every import there, 84 MB and 0.6 s per process (finfed/lean_imports.py).
_leave_out_int8_library_if_asked()

# torchao (the optional `int8` extra; peft imports it whenever it is installed) warns at import that its GPU
# kernels do not load on a CPU-only machine, and torch that torchao registers enums the old way: noise on
# every command. finfed uses only torchao's CPU paths.
for _name in ("torchao", "torch.utils._pytree"):
    _logging.getLogger(_name).setLevel(_logging.ERROR)
