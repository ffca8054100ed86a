"""Run one function in a fresh child process, so that this process never imports what it needs.

`finfed simulate` checks its settings and plans its sites' data and privacy before the run (PyTorch,
Transformers, PEFT and the PRV accountant: about 0.45 GB resident), then only relays Flower's lines for
minutes. Done in a spawned child, the command stays a small process for the whole run; the child, which only
plans, leaves the optional int8 library out of its imports (finfed/lean_imports.py). Where this
process has PyTorch loaded already (finfed used as a library, the tests), a child would save nothing
and cost an import: the function then runs here.
"""

from __future__ import annotations

import multiprocessing
import sys
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from typing import Callable, TypeVar

from finfed.errors import RunError
from finfed.lean_imports import leave_out_int8_library

T = TypeVar("T")
HEAVY_MODULE = "torch"


def call_isolated(function: Callable[..., T], *args: object) -> T:
    """``function(*args)`` in a spawned child (its exception, a finfed error included, raised here)."""
    if HEAVY_MODULE in sys.modules:
        return function(*args)
    with ProcessPoolExecutor(max_workers=1, mp_context=multiprocessing.get_context("spawn"),
                             initializer=leave_out_int8_library) as pool:
        try:
            return pool.submit(function, *args).result()
        except BrokenProcessPool:
            raise RunError(f"the process running {function.__name__} ended before it answered (killed, or out "
                           "of memory?)") from None
