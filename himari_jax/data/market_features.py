"""Market context for every coin of a universe: the 'himari_market' feature set (SPEC 3, 12).

A coin's own 49 'himari' features say nothing about the market it trades in. This set keeps
them and fills the reserved columns 49-59 (`features.MARKET_FEATURE_NAMES`) from the whole
panel, on its hourly grid, with bars <= t only:

| col | name | value at hour t |
|---|---|---|
| 49-51 | btc_ret_1, _6, _24 | BTC's `close_t / close_{t-k} - 1` |
| 52-53 | btc_vol_24, _168 | std (ddof 0) of BTC's 1-hour returns over the last k hours |
| 54-55 | market_ret_1, _24 | mean k-hour return of the coins available at t |
| 56-57 | rank_ret_24, _168 | the coin's rank of its k-hour return among those, in [-1, 1] |
| 58-59 | breadth_24, _168 | 2 x (share of those coins with a positive k-hour return) - 1 |

A return needs both closes; an hour without one (a gap, before a listing) leaves that coin out
of the cross-section, and a value with nothing to average is 0, as warm-up values are. The
volatilities use the returns present in the window and need at least half of them. Each coin's
rows are its own bars (`Panel.frame`), so its columns 0-48 are exactly `compute_features` of
that frame.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from himari_jax.data import features as features_lib
from himari_jax.data.universe import Panel
from himari_jax.stats import cross_section

_RETURN_HOURS = (1, 6, 24)
_VOL_HOURS = (24, 168)
_MARKET_HOURS = (1, 24)
_RANK_HOURS = (24, 168)


def _returns(close: np.ndarray, k: int) -> np.ndarray:
  """(bars, assets) `close_t / close_{t-k} - 1` on the grid, NaN where either is missing."""
  out = np.full(close.shape, np.nan)
  out[k:] = close[k:] / close[:-k] - 1.0
  return out


def _mean_or_zero(total: np.ndarray, count: np.ndarray) -> np.ndarray:
  return np.where(count > 0, total / np.maximum(count, 1), 0.0)


def market_context(panel: Panel, *, btc: str = 'BTC') -> np.ndarray:
  """The 11 context columns of every coin at every hour.

  Args:
    panel: a universe panel (bars, assets) that holds `btc`.
    btc: the symbol whose returns and volatility stand for the market's.

  Returns:
    float64 (bars, assets, 11), columns `features.MARKET_FEATURE_NAMES`, finite.

  Raises:
    KeyError: `btc` is not in the panel.
  """
  close = panel.close
  bars, assets = close.shape
  b = panel.column(btc)
  columns = [np.nan_to_num(_returns(close, k)[:, b]) for k in _RETURN_HOURS]
  btc_returns = pd.Series(_returns(close, 1)[:, b])
  columns += [np.nan_to_num(btc_returns.rolling(k, min_periods=k // 2).std(ddof=0).to_numpy())
              for k in _VOL_HOURS]
  members = {}
  for k in sorted(set(_MARKET_HOURS + _RANK_HOURS)):
    r = _returns(close, k)
    members[k] = (r, panel.available & np.isfinite(r))
  for k in _MARKET_HOURS:
    r, m = members[k]
    columns.append(_mean_or_zero(np.where(m, r, 0.0).sum(axis=1), m.sum(axis=1)))
  market = np.stack(columns, axis=1)  # (bars, 7): the same for every coin
  per_coin = []
  for k in _RANK_HOURS:
    r, m = members[k]
    n = m.sum(axis=1, keepdims=True)
    ranks = cross_section.average_ranks(r, m, axis=1)
    scaled = 2.0 * (ranks - 1.0) / np.maximum(n - 1, 1) - 1.0
    per_coin.append(np.where(m & (n >= 2), scaled, 0.0))
  breadth = []
  for k in _RANK_HOURS:
    r, m = members[k]
    up = (m & (r > 0)).sum(axis=1)
    breadth.append(np.where(m.any(axis=1), 2.0 * _mean_or_zero(up, m.sum(axis=1)) - 1.0, 0.0))
  context = np.concatenate([
      np.broadcast_to(market[:, None, :], (bars, assets, market.shape[1])),
      np.stack(per_coin, axis=-1),
      np.broadcast_to(np.stack(breadth, axis=1)[:, None, :], (bars, assets, len(breadth)))],
      axis=-1)
  return context


def panel_features(panel: Panel, *, btc: str = 'BTC',
                   symbols: Any = None) -> dict[str, np.ndarray]:
  """The 'himari_market' state of every coin on its own bars.

  Args:
    panel: a universe panel that holds `btc`.
    symbols: the coins to compute (default all of the panel's).

  Returns:
    {symbol: float32 (rows, 60)}, rows those of `panel.frame(symbol)`: columns 0-48 are
    `compute_features(frame)`'s, 49-59 `market_context` at the coin's bars.
  """
  context = market_context(panel, btc=btc)
  out = {}
  for symbol in panel.symbols if symbols is None else symbols:
    a = panel.column(symbol)
    frame = panel.frame(symbol)
    if frame.empty:  # not listed yet in this window
      out[symbol] = np.zeros((0, features_lib.NUM_FEATURES), np.float32)
      continue
    state = features_lib.compute_features(frame, 'himari')
    rows = panel.index.get_indexer(frame.index)
    state[:, features_lib.NUM_COMPUTED:] = context[rows, a]
    out[symbol] = state
  return out
