"""Action labels from future prices (SPEC section 4) and class weights.

Action encoding: 0 = SELL, 1 = HOLD, 2 = BUY. A label at bar t depends on bars t+1 .. t+h
only (and close_t); the last h bars have no label: `valid` is False there and the stored
value is a placeholder (1) that must be masked out, never trained on as HOLD.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from himari_jax.constants import ACTION_NAMES, BUY, HOLD, SELL  # noqa: F401 - re-exported

FIXED_CLASS_WEIGHTS = (2.5, 0.83, 2.5)


def threshold_labels(close: np.ndarray, *, horizon: int = 6,
                     threshold: float = 0.01) -> tuple[np.ndarray, np.ndarray]:
  """BUY if close_{t+h} / close_t - 1 > threshold, SELL if < -threshold, else HOLD.

  Args:
    close: (N,) closes.

  Returns:
    labels int32 (N,), valid bool (N,) (False for the last `horizon` bars).
  """
  close = np.asarray(close, np.float64)
  n = len(close)
  labels = np.full(n, HOLD, np.int32)
  valid = np.arange(n) < n - horizon
  ret = close[horizon:] / close[:n - horizon] - 1.0
  labels[valid] = np.where(ret > threshold, BUY, np.where(ret < -threshold, SELL, HOLD))
  return labels, valid


def sharpe_labels(close: np.ndarray, low: np.ndarray, *, horizon: int = 24,
                  sharpe: float = 1.0, min_return: float = 0.03,
                  max_drawdown: float = 0.025) -> tuple[np.ndarray, np.ndarray]:
  """The later HIMARI rule over ret_k = close_{t+k} / close_t - 1, k = 1 .. horizon.

  BUY if mean(ret) / std(ret) > sharpe, ret_h > min_return and min(low_{t+1..t+h}) >=
  close_t * (1 - max_drawdown); SELL if mean / std < -sharpe and ret_h < -min_return; else
  HOLD. std is the population one (ddof = 0); a flat path (std 0) is HOLD.

  Args:
    close, low: (N,) closes and lows.

  Returns:
    labels int32 (N,), valid bool (N,) (False for the last `horizon` bars).
  """
  close = np.asarray(close, np.float64)
  low = np.asarray(low, np.float64)
  n = len(close)
  labels = np.full(n, HOLD, np.int32)
  valid = np.arange(n) < n - horizon
  m = int(valid.sum())
  if m:
    future = np.lib.stride_tricks.sliding_window_view(close[1:], horizon)[:m]  # (m, h)
    ret = future / close[:m, None] - 1.0
    mean, std = ret.mean(axis=1), ret.std(axis=1)
    ratio = np.divide(mean, std, out=np.zeros(m), where=std > 0)
    lowest = np.lib.stride_tricks.sliding_window_view(low[1:], horizon)[:m].min(axis=1)
    buy = (ratio > sharpe) & (ret[:, -1] > min_return) & (lowest >= close[:m] *
                                                            (1.0 - max_drawdown))
    sell = (ratio < -sharpe) & (ret[:, -1] < -min_return)
    labels[:m] = np.where(buy, BUY, np.where(sell, SELL, HOLD))
  return labels, valid


def make_labels(df: pd.DataFrame, kind: str = 'threshold',
                **params: Any) -> tuple[np.ndarray, np.ndarray]:
  """Labels of an OHLCV frame by rule `kind` ('threshold' or 'sharpe').

  Args:
    df: OHLCV frame with N rows (see `data.load_ohlcv`).
    kind: the rule; `params` go to `threshold_labels` (horizon, threshold) or `sharpe_labels`
      (horizon, sharpe, min_return, max_drawdown).

  Returns:
    labels int32 (N,) in {0, 1, 2}; valid bool (N,), False where the future is unknown.
  """
  if kind == 'threshold':
    return threshold_labels(df['close'].to_numpy(), **params)
  if kind == 'sharpe':
    return sharpe_labels(df['close'].to_numpy(), df['low'].to_numpy(), **params)
  raise ValueError(f"unknown label kind {kind!r}; use 'threshold' or 'sharpe'")


def label_horizon(kind: str = 'threshold', **params: Any) -> int:
  """Bars ahead a label of this rule looks (the embargo that keeps splits apart)."""
  defaults = {'threshold': 6, 'sharpe': 24}
  if kind not in defaults:
    raise ValueError(f"unknown label kind {kind!r}; use 'threshold' or 'sharpe'")
  return int(params.get('horizon', defaults[kind]))


def class_weights(labels: np.ndarray, valid: np.ndarray, mode: str = 'fixed') -> np.ndarray:
  """Loss weight per class, from the (training) labels where valid.

  Modes: 'fixed' ([2.5, 0.83, 2.5]), 'inverse' (n / (3 * count)), 'sqrt' (square root of
  inverse), 'none' (ones). A class with no valid label gets weight 0 (nothing to weigh).

  Returns:
    float32 (3,), indexed by action.
  """
  if mode == 'fixed':
    return np.asarray(FIXED_CLASS_WEIGHTS, np.float32)
  if mode == 'none':
    return np.ones(3, np.float32)
  if mode not in ('inverse', 'sqrt'):
    raise ValueError(f"unknown class-weight mode {mode!r}; use 'fixed', 'inverse', 'sqrt' "
                     "or 'none'")
  counts = np.bincount(np.asarray(labels)[np.asarray(valid, bool)], minlength=3)[:3]
  inverse = np.divide(counts.sum(), 3.0 * counts, out=np.zeros(3), where=counts > 0)
  return (inverse if mode == 'inverse' else np.sqrt(inverse)).astype(np.float32)


def label_distribution(labels: np.ndarray, valid: np.ndarray) -> dict[str, Any]:
  """Counts and shares of each action among valid labels.

  Returns:
    {'n': valid count, 'counts': {'SELL': ..., 'HOLD': ..., 'BUY': ...}, 'shares': {...}}.
  """
  counts = np.bincount(np.asarray(labels)[np.asarray(valid, bool)], minlength=3)[:3]
  n = int(counts.sum())
  return {'n': n,
          'counts': {a: int(k) for a, k in zip(ACTION_NAMES, counts, strict=True)},
          'shares': {a: (float(k) / n if n else 0.0)
                     for a, k in zip(ACTION_NAMES, counts, strict=True)}}
