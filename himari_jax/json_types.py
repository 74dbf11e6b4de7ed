"""Values as JSON takes them: one conversion for every file the package writes, and the
reading and appending of JSON-lines files (one record per line) that survive a torn last line.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping
from typing import Any

import numpy as np
from absl import logging


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


def read_jsonl(path: str | os.PathLike) -> list[Any]:
  """The records of a JSON-lines file, one per non-blank line.

  A last line that does not parse is a record torn by a process killed while writing it: it
  is left out with a warning naming the file (`append_jsonl` drops it before appending).

  Raises:
    ValueError: any other line is not JSON, naming the file and the line.
  """
  with open(path) as f:
    lines = [(number, line) for number, line in enumerate(f, 1) if line.strip()]
  records = []
  for number, line in lines:
    try:
      records.append(json.loads(line))
    except json.JSONDecodeError as e:
      if number == lines[-1][0]:
        logging.warning('%s: dropped its torn last line %d (a process stopped while writing '
                        'it): %.60r', os.fspath(path), number, line)
        break
      raise ValueError(f'{os.fspath(path)} line {number}: not a JSON record ({e.msg}); fix or '
                       'delete that line') from e
  return records


def append_jsonl(path: str | os.PathLike, record: Any) -> None:
  """Appends `record` as one JSON line, synced to disk; a torn last line (see `read_jsonl`) is
  cut off first, so the new record does not continue it."""
  with open(path, 'a+b') as f:
    f.seek(0, os.SEEK_END)
    if f.tell():
      f.seek(-1, os.SEEK_END)
      if f.read(1) != b'\n':
        f.seek(0)
        payload = f.read()
        tail = payload[payload.rfind(b'\n') + 1:]
        try:
          json.loads(tail)
          f.write(b'\n')  # a whole record that only lacks its newline
        except ValueError:
          f.truncate(len(payload) - len(tail))
    f.write((json.dumps(record) + '\n').encode())
    f.flush()
    os.fsync(f.fileno())
