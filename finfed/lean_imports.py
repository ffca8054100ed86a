"""Keep the optional int8 library (torchao) out of processes that only plan, train or evaluate.

Where torchao is installed (the `int8` and `dev` extras), Transformers imports it with its quantizers in every
process that loads a model: 84 MB resident and 0.6 s of imports per process on the project's 2-core machine
(docs/speed.md), paid by the ServerApp and the ClientApp worker of every run, and in a deployment by the
process each message starts, though only `finfed export --quantize int8` and loading an int8 export use it.
It is left out the standard way: with ``sys.modules["torchao"] = None``, ``import torchao`` raises
ImportError and ``importlib.util.find_spec("torchao")`` answers None, so Transformers and PEFT take it for
not installed. Only processes that can never quantize do this: the apps when the engine that started them
says so (``WITHOUT_INT8_ENV``, set by ``finfed simulate`` and ``finfed deploy``), and the planning child.
`finfed export --quantize int8` brings it back if a shell exported the variable (``bring_back_int8_library``),
and says so plainly where it is too late (finfed.inference.export.torchao_version).
"""

from __future__ import annotations

import os
import sys

INT8_LIBRARY = "torchao"
#: set in the environment of the Flower processes finfed starts: their apps only train and evaluate
WITHOUT_INT8_ENV = {"FINFED_WITHOUT_INT8": "1"}


def leave_out_int8_library() -> bool:
    """Hide torchao from this process's later imports; False where torchao or Transformers' models are
    imported already (too late to leave it out)."""
    if INT8_LIBRARY in sys.modules or "transformers.modeling_utils" in sys.modules:
        return False
    sys.modules[INT8_LIBRARY] = None  # type: ignore[assignment]
    return True


def leave_out_int8_library_if_asked() -> bool:
    """``leave_out_int8_library()`` in a process whose environment carries ``WITHOUT_INT8_ENV``."""
    if all(os.environ.get(key) == value for key, value in WITHOUT_INT8_ENV.items()):
        return leave_out_int8_library()
    return False


def int8_library_left_out() -> bool:
    return INT8_LIBRARY in sys.modules and sys.modules[INT8_LIBRARY] is None


def bring_back_int8_library() -> bool:
    """Undo ``leave_out_int8_library()`` while Transformers is not imported yet (it decides once); True if done."""
    if not int8_library_left_out() or "transformers" in sys.modules:
        return False
    del sys.modules[INT8_LIBRARY]
    return True
