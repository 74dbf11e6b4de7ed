"""Action labels from future prices (SPEC section 4) and class weights.

Action encoding: 0 = SELL, 1 = HOLD, 2 = BUY. A label at bar t depends on bars t+1 .. t+h
only (and close_t); the last h bars have no label: `valid` is False there and the stored
value is a placeholder (1) that must be masked out, never trained on as HOLD.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import pandas as pd

from himari_jax.constants import ACTION_NAMES, BUY, HOLD, SELL

FIXED_CLASS_WEIGHTS = (2.5, 0.83, 2.5)


def threshold_labels(close: np.ndarray, *, horizon: int = 6, threshold: float = 0.01,
                     cost_floor: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
  """BUY if close_{t+h} / close_t - 1 > band, SELL if < -band, else HOLD, with
  band = max(threshold, cost_floor).

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
  band = max(threshold, cost_floor)
  labels[valid] = np.where(ret > band, BUY, np.where(ret < -band, SELL, HOLD))
  return labels, valid


def sharpe_labels(close: np.ndarray, low: np.ndarray, *, horizon: int = 24,
                  sharpe: float = 1.0, min_return: float = 0.03, max_drawdown: float = 0.025,
                  cost_floor: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
  """The later HIMARI rule over ret_k = close_{t+k} / close_t - 1, k = 1 .. horizon.

  BUY if mean(ret) / std(ret) > sharpe, ret_h > min_return and min(low_{t+1..t+h}) >=
  close_t * (1 - max_drawdown); SELL if mean / std < -sharpe and ret_h < -min_return; else
  HOLD. std is the population one (ddof = 0); a flat path (std 0) is HOLD. A cost floor
  raises min_return to at least cost_floor.

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
    min_return = max(min_return, cost_floor)
    buy = (ratio > sharpe) & (ret[:, -1] > min_return) & (lowest >= close[:m] *
                                                            (1.0 - max_drawdown))
    sell = (ratio < -sharpe) & (ret[:, -1] < -min_return)
    labels[:m] = np.where(buy, BUY, np.where(sell, SELL, HOLD))
  return labels, valid


def rolling_sigma(close: np.ndarray, *, window: int = 168) -> np.ndarray:
  """sigma_t: std (ddof 1) of the `window` one-bar log returns ending at bar t (bars <= t).

  Args:
    close: (N,) closes.

  Returns:
    (N,) float64, NaN for t < window (fewer than `window` returns known).
  """
  if int(window) != window or window < 2:
    raise ValueError(f'window must be a whole number >= 2, got {window}')
  window = int(window)
  close = np.asarray(close, np.float64)
  sigma = np.full(len(close), np.nan)
  returns = np.diff(np.log(close))  # returns[t - 1] ends at bar t
  if len(returns) >= window:
    sigma[window:] = np.lib.stride_tricks.sliding_window_view(returns, window).std(axis=1,
                                                                                    ddof=1)
  return sigma


def volatility_labels(close: np.ndarray, *, horizon: int = 6, k: float = 1.0,
                      window: int = 168, cost_floor: float = 0.0
                      ) -> tuple[np.ndarray, np.ndarray]:
  """The threshold rule with a scale-free band `max(k * sigma_t * sqrt(h), cost_floor)`.

  sigma_t is `rolling_sigma(close, window)` (bars <= t), so one rule labels a calm and a wild
  coin alike.

  Args:
    close: (N,) closes.

  Returns:
    labels int32 (N,), valid bool (N,) (False for the last `horizon` bars and the first
    `window` bars, where sigma_t is unknown).
  """
  close = np.asarray(close, np.float64)
  n = len(close)
  band = np.maximum(k * rolling_sigma(close, window=window) * np.sqrt(horizon), cost_floor)
  labels = np.full(n, HOLD, np.int32)
  valid = (np.arange(n) < n - horizon) & np.isfinite(band)
  ret = np.full(n, np.nan)
  ret[:n - horizon] = close[horizon:] / close[:n - horizon] - 1.0
  labels[valid] = np.where(ret[valid] > band[valid], BUY,
                           np.where(ret[valid] < -band[valid], SELL, HOLD))
  return labels, valid


def triple_barrier_labels(close: np.ndarray, high: np.ndarray, low: np.ndarray, *,
                          horizon: int = 24, k_up: float = 1.0, k_down: float = 1.0,
                          window: int = 168, cost_floor: float = 0.0
                          ) -> tuple[np.ndarray, np.ndarray]:
  """Lopez de Prado's triple barrier: the first barrier bars t+1 .. t+h touch.

  Upper barrier `close_t * (1 + max(k_up * sigma_t * sqrt(h), cost_floor))` (touched by a
  high), lower `close_t * (1 - max(k_down * sigma_t * sqrt(h), cost_floor))` (touched by a
  low), vertical at t + h. Upper first: BUY; lower first: SELL; both in one bar: the one
  that bar's close is nearer to (ties SELL); neither: HOLD.

  Args:
    close, high, low: (N,) bars.

  Returns:
    labels int32 (N,), valid bool (N,) (False for the last `horizon` bars and the first
    `window` bars).
  """
  close, high, low = (np.asarray(x, np.float64) for x in (close, high, low))
  n = len(close)
  width = k_up, k_down
  sigma = rolling_sigma(close, window=window) * np.sqrt(horizon)
  labels = np.full(n, HOLD, np.int32)
  valid = (np.arange(n) < n - horizon) & np.isfinite(sigma)
  rows = np.flatnonzero(valid)
  if rows.size:
    def window_of(x):  # (rows, h): bars t+1 .. t+h
      return np.lib.stride_tricks.sliding_window_view(x[1:], horizon)[rows]

    c = close[rows, None]
    upper = c * (1 + np.maximum(width[0] * sigma[rows, None], cost_floor))
    lower = c * (1 - np.maximum(width[1] * sigma[rows, None], cost_floor))
    hit_up, hit_down = window_of(high) >= upper, window_of(low) <= lower
    first_up = np.where(hit_up.any(1), hit_up.argmax(1), horizon)
    first_down = np.where(hit_down.any(1), hit_down.argmax(1), horizon)
    both = (first_up == first_down) & (first_up < horizon)
    close_then = window_of(close)[np.arange(rows.size), np.minimum(first_up, horizon - 1)]
    nearer_up = np.abs(upper[:, 0] - close_then) < np.abs(close_then - lower[:, 0])
    labels[rows] = np.where(
        first_up < first_down, BUY,
        np.where(first_down < first_up, SELL, np.where(both & nearer_up, BUY,
                                                       np.where(both, SELL, HOLD))))
  return labels, valid


RULES = ('threshold', 'sharpe', 'volatility', 'triple_barrier')
_DEFAULT_HORIZONS = {'threshold': 6, 'sharpe': 24, 'volatility': 6, 'triple_barrier': 24}


def round_trip_cost(commission: float = 0.001, slippage: float = 0.0005) -> float:
  """The cost floor of SPEC section 4: `2 * (commission + slippage)`, a fraction."""
  return 2.0 * (commission + slippage)


def make_labels(df: pd.DataFrame, kind: str = 'threshold',
                **params: Any) -> tuple[np.ndarray, np.ndarray]:
  """Labels of an OHLCV frame by rule `kind` (SPEC section 4).

  Args:
    df: OHLCV frame with N rows (see `data.load_ohlcv`).
    kind: 'threshold', 'sharpe', 'volatility' or 'triple_barrier'; `params` go to
      `threshold_labels` (horizon, threshold), `sharpe_labels` (horizon, sharpe, min_return,
      max_drawdown), `volatility_labels` (horizon, k, window) or `triple_barrier_labels`
      (horizon, k_up, k_down, window); every rule takes `cost_floor` (see
      `round_trip_cost`): a move smaller than it is HOLD.

  Returns:
    labels int32 (N,) in {0, 1, 2}; valid bool (N,), False where the future (or, for the
    volatility rules, sigma_t) is unknown.

  Raises:
    ValueError: for an unknown kind, a horizon <= 0, or no more bars than the horizon.
  """
  horizon = label_horizon(kind, **params)
  if horizon <= 0:
    raise ValueError(f'label horizon must be > 0, got {horizon}')
  if len(df) <= horizon:
    raise ValueError(f'{len(df)} bars are too few for label horizon {horizon}: no bar has '
                     f'{horizon} bars after it')
  if kind == 'threshold':
    return threshold_labels(df['close'].to_numpy(), **params)
  if kind == 'sharpe':
    return sharpe_labels(df['close'].to_numpy(), df['low'].to_numpy(), **params)
  if kind == 'volatility':
    return volatility_labels(df['close'].to_numpy(), **params)
  return triple_barrier_labels(df['close'].to_numpy(), df['high'].to_numpy(),
                               df['low'].to_numpy(), **params)


def label_horizon(kind: str = 'threshold', **params: Any) -> int:
  """Bars ahead a label of this rule looks (the embargo that keeps splits apart)."""
  if kind not in _DEFAULT_HORIZONS:
    raise ValueError(f'unknown label kind {kind!r}; use one of {RULES}')
  return int(params.get('horizon', _DEFAULT_HORIZONS[kind]))


def label_rates(frames: Mapping[str, pd.DataFrame], kind: str = 'threshold',
                **params: Any) -> pd.DataFrame:
  """Share of each label per asset under one rule, to compare how a rule treats assets.

  Args:
    frames: {asset name: OHLCV frame}.
    kind, params: as in `make_labels`.

  Returns:
    DataFrame indexed by asset: `n` (valid labels), `SELL`, `HOLD`, `BUY` (shares) and
    `trade_share` (SELL + BUY).
  """
  rows = {}
  for name, frame in frames.items():
    dist = label_distribution(*make_labels(frame, kind, **params))
    rows[name] = {'n': dist['n'], **dist['shares'],
                  'trade_share': dist['shares']['SELL'] + dist['shares']['BUY']}
  return pd.DataFrame.from_dict(rows, orient='index')


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


def next_bar_returns(close: Any) -> np.ndarray:
  """`R[t] = close[t+1] / close[t] - 1`, the return a position held at bar t earns.

  Args:
    close: (N,) positive closes.

  Returns:
    float64 (N,), NaN at the last bar (its next bar is unknown); `np.isfinite(R)` is the
    trading mask.

  Raises:
    ValueError: naming the first row whose close is not a positive finite number.
  """
  close = np.asarray(close, np.float64)
  if close.ndim != 1:
    raise ValueError(f'close must be (N,), got shape {close.shape}.')
  bad = np.flatnonzero(~(np.isfinite(close) & (close > 0)))
  if bad.size:
    raise ValueError(f'close row {bad[0]} is {close[bad[0]]}; closes must be positive.')
  returns = np.full(close.shape, np.nan)
  returns[:-1] = close[1:] / close[:-1] - 1.0
  return returns
