"""Values as JSON takes them: one conversion for every file the package writes."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np


def to_json_types(value: Any, *, finite_only: bool = False) -> Any:
  """A copy of `value` with numpy / jax scalars and arrays as Python numbers and lists,
  tuples as lists and mapping keys as strings.

  Args:
    value: any nesting of mappings, lists, tuples, arrays and scalars.
    finite_only: NaN and infinities become None, so `json.dumps(allow_nan=False)` takes it.
  """
  if isinstance(value, Mapping):
    return {str(k): to_json_types(v, finite_only=finite_only) for k, v in value.items()}
  if isinstance(value, (list, tuple)):
    return [to_json_types(v, finite_only=finite_only) for v in value]
  if hasattr(value, '__array__'):  # numpy and jax arrays and scalars
    value = np.asarray(value)
    return to_json_types(value.tolist() if value.ndim else value.item(),
                         finite_only=finite_only)
  if finite_only and isinstance(value, float) and not math.isfinite(value):
    return None
  return value
