"""Adapter tensors <-> Flower's ArrayRecord: the one conversion both apps use on the wire."""

from __future__ import annotations

from typing import Mapping

import numpy as np
from flwr.app import Array, ArrayRecord


def to_array_record(arrays: Mapping[str, np.ndarray]) -> ArrayRecord:
    """Named NumPy tensors as an ArrayRecord, names kept (they are the parameter names)."""
    return ArrayRecord({name: Array.from_numpy_ndarray(value) for name, value in arrays.items()})


def from_array_record(record: ArrayRecord) -> dict[str, np.ndarray]:
    return {name: array.numpy() for name, array in record.items()}
