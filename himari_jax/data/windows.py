"""Chronological splits and fixed-length context windows over per-bar arrays.

A window ending at bar t covers bars t-T+1 .. t (T = context length); T = 1 gives one bar per
example, the seed's setting. Windows lie entirely inside the requested bar range [start, end)
and after the feature warm-up, so the training loop can gather batches by their end index
(`window_ends` + `gather_windows`) without materialising every window.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np
import pandas as pd

from himari_jax.data.features import WARMUP_BARS

Boundary = float | str | pd.Timestamp


@dataclasses.dataclass(frozen=True)
class Split:
  """Bar index ranges [start, stop) of the train, validation and test parts, in time order.

  Consecutive non-empty parts are `embargo` bars apart: the last bars of a part are dropped
  so that a label there (which looks `embargo` bars ahead) never reads a later part's bars.
  """
  train: slice
  val: slice
  test: slice
  embargo: int

  def sizes(self) -> dict[str, int]:
    return {k: getattr(self, k).stop - getattr(self, k).start for k in ('train', 'val', 'test')}


def _boundary(spec: Boundary, index: pd.DatetimeIndex | None, n: int, name: str) -> int:
  """Bars from `spec` to the end: a fraction of n, or the first bar at/after a date."""
  if isinstance(spec, (int, float)) and not isinstance(spec, bool):
    if not 0.0 <= spec < 1.0:
      raise ValueError(f'{name} fraction must be in [0, 1), got {spec}')
    return int(round(n * spec))
  if index is None:
    raise ValueError(f'{name}={spec!r} is a date; pass the DatetimeIndex instead of a length')
  when = pd.Timestamp(spec)
  when = when.tz_localize('UTC') if when.tzinfo is None else when.tz_convert('UTC')
  return n - int(index.searchsorted(when, side='left'))


def chronological_split(index: int | pd.DatetimeIndex, *, val: Boundary = 0.15,
                        test: Boundary = 0.0, embargo: int = 0) -> Split:
  """Train / validation / test ranges in time order.

  Args:
    index: the number of bars N, or the frame's DatetimeIndex (needed for date boundaries).
    val, test: the share of all bars at the end held out for each part (test last), or the
      date at which the part starts (naive dates are UTC). 0 makes the part empty.
    embargo: bars dropped at the end of a part that a later non-empty part follows; use the
      label horizon (`labels.label_horizon`) so labels never straddle a boundary.

  Returns:
    Split of slices into [0, N).
  """
  dates = index if isinstance(index, pd.DatetimeIndex) else None
  n = len(index) if dates is not None else int(index)
  if embargo < 0:
    raise ValueError(f'embargo must be >= 0 bars, got {embargo}')
  test_start = n - _boundary(test, dates, n, 'test')
  if isinstance(val, (int, float)) and not isinstance(val, bool):
    if val + (test if isinstance(test, (int, float)) else 0.0) >= 1.0:
      raise ValueError(f'val + test fractions must be < 1, got {val} + {test}')
    val_start = test_start - _boundary(val, dates, n, 'val')
  else:
    val_start = n - _boundary(val, dates, n, 'val')
  if not 0 <= val_start <= test_start <= n:
    raise ValueError(f'validation must start before the test part: val starts at bar '
                     f'{val_start}, test at bar {test_start} of {n}')
  starts = [0, val_start, test_start]
  stops = [val_start, test_start, n]
  for i in range(2):
    if any(stops[j] > starts[j] for j in range(i + 1, 3)):
      stops[i] = max(starts[i], stops[i] - embargo)
  train, val_part, test_part = (slice(a, b) for a, b in zip(starts, stops, strict=True))
  return Split(train=train, val=val_part, test=test_part, embargo=embargo)


def window_ends(num_bars: int, context_length: int, *, stride: int = 1, start: int = 0,
                end: int | None = None, warmup: int = WARMUP_BARS,
                valid: np.ndarray | None = None) -> np.ndarray:
  """End bars t of the windows [t-T+1, t] inside [max(start, warmup), end).

  Args:
    num_bars: N, the length of the per-bar arrays.
    context_length: T >= 1.
    stride: bars between consecutive window ends (counted from the first window).
    start, end: the bar range (a `Split` part); end defaults to N.
    warmup: bars at the start of the series no window may touch (feature warm-up).
    valid: optional bool (N,) label mask; windows without any valid label are dropped.

  Returns:
    int64 (num_windows,) increasing end indices.
  """
  if context_length < 1 or stride < 1:
    raise ValueError(f'context_length and stride must be >= 1, got {context_length}, {stride}')
  end = num_bars if end is None else min(end, num_bars)
  ends = np.arange(max(start, warmup) + context_length - 1, end, stride, dtype=np.int64)
  if valid is not None and ends.size:
    counts = np.concatenate([[0], np.cumsum(np.asarray(valid, bool))])
    ends = ends[counts[ends + 1] - counts[ends + 1 - context_length] > 0]
  return ends


def gather_windows(x: Any, ends: np.ndarray, context_length: int) -> Any:
  """x[t-T+1 .. t] for every end t: (N, ...) -> (len(ends), T, ...); numpy or jax arrays."""
  offsets = np.arange(1 - context_length, 1, dtype=np.int64)
  return x[np.asarray(ends)[:, None] + offsets[None, :]]


def make_windows(features: np.ndarray, labels: np.ndarray, valid: np.ndarray,
                 context_length: int, *, stride: int = 1, start: int = 0,
                 end: int | None = None,
                 warmup: int = WARMUP_BARS) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """Every window of a bar range, materialised (fine for T = 1 or small ranges).

  Windows without any valid label are dropped (they carry no loss).

  Args:
    features: (N, F); labels: int (N,); valid: bool (N,).
    context_length, stride, start, end, warmup: as in `window_ends`.

  Returns:
    inputs (W, T, F), targets int32 (W, T), masks bool (W, T) (= valid of each bar).
  """
  ends = window_ends(len(features), context_length, stride=stride, start=start, end=end,
                     warmup=warmup, valid=valid)
  return (gather_windows(features, ends, context_length),
          gather_windows(np.asarray(labels, np.int32), ends, context_length),
          gather_windows(np.asarray(valid, bool), ends, context_length))
