"""The few places finfed relies on another library's internals, each with the reason why.

Nothing else in finfed may use private (underscore) or undocumented layouts of Flower,
Opacus or PyTorch; when one of these breaks on an upgrade, it breaks here, loudly.
"""

from __future__ import annotations

import numpy as np
import torch

# PyTorch's CPU generator is MT19937. Its public `manual_seed` keeps only the low 32 bits of the
# seed (at::mt19937 seeds with `init_with_uint32`), so a generator seeded from 64 secret bits still
# has only 2**32 possible streams: few enough to try them all. Its full state, 624 32-bit words
# (19968 bits), can be set only through `Generator.set_state`, whose byte layout is PyTorch's
# `CPUGeneratorImplState` (aten/src/ATen/CPUGeneratorImpl.cpp): a legacy header (uint64 initial
# seed, int32 left, int32 seeded, uint64 next), then the 624 words each stored as a uint64, then
# cached normal samples. Checked below against the size of that layout and by a round trip.
_MT_WORDS = 624
_MT_STATE_OFFSET = 24
_CPU_STATE_BYTES = 5056


def generator_from_words(words: np.ndarray) -> torch.Generator:
    """A CPU generator whose whole MT19937 state is ``words`` (624 values below 2**32).

    The header of a freshly seeded generator is kept (``left`` = 1, no cached normal
    sample), so the first draw twists the new state: the stream depends on all 624 words.
    """
    words = np.asarray(words, dtype="<u8")
    if words.shape != (_MT_WORDS,) or int(words.max()) >= 2**32 or not words.any():
        raise ValueError(f"an MT19937 state is {_MT_WORDS} words below 2**32, not all zero")
    generator = torch.Generator().manual_seed(0)
    state = generator.get_state().clone()
    if state.numel() != _CPU_STATE_BYTES:
        raise RuntimeError(f"this PyTorch's CPU generator state is {state.numel()} bytes, not the "
                           f"{_CPU_STATE_BYTES} finfed knows how to fill; update finfed/compat.py")
    body = torch.frombuffer(bytearray(words.tobytes()), dtype=torch.uint8)
    state[_MT_STATE_OFFSET:_MT_STATE_OFFSET + body.numel()] = body
    generator.set_state(state)
    if not torch.equal(generator.get_state(), state):
        raise RuntimeError("PyTorch did not keep the MT19937 state finfed set; update finfed/compat.py")
    return generator
