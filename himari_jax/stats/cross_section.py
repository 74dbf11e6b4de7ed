"""Signal quality across many coins at once (SPEC sections 11-12).

Inputs are panels `(bars, assets)`: a score `s[t, a]` decided on bars <= t, the forward h-bar
return `r[t, a] = close[t + h, a] / close[t, a] - 1`, and `available[t, a]`, the coins that
can be traded at bar t. An entry takes part only where it is available and both its score and
its forward return are finite (the last h bars, or a coin whose bar t + h is missing, drop out).

* `cross_sectional_ic`: per bar, the Pearson (IC) and Spearman (rank IC, average ranks for
  ties) correlation across the coins taking part; NaN where fewer than `min_assets` (3) do, or
  either side is constant across them.
* `newey_west_mean`: the mean of such a per-bar series with a Newey-West (Bartlett kernel)
  standard error and t-statistic; `lags` must be at least the forward horizon h, because
  forward returns of consecutive bars overlap by h - 1 bars. NaN bars are dropped first.
* `time_series_ic`: per coin, the IC and rank IC over time.
* `quantile_returns`: per bar, the mean forward return of each score quantile, their average
  over bars, and the top-minus-bottom spread with its Newey-West t.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from himari_jax.stats import signal_metrics

MIN_ASSETS = 3  # a correlation across fewer coins says nothing


def panel_forward_returns(close: Any, horizon: int) -> np.ndarray:
  """`signal_metrics.forward_returns` per coin: (bars, assets) -> (bars, assets) float64, NaN
  for the last h bars and wherever either close is NaN."""
  close = np.asarray(close, np.float64)
  if close.ndim != 2:
    raise ValueError(f'close must be (bars, assets), got shape {close.shape}')
  return np.stack([signal_metrics.forward_returns(c, horizon) for c in close.T], axis=1)


def newey_west_lags(num_bars: int, horizon: int = 1) -> int:
  """Bartlett-kernel lags: Newey and West's (1994) rule `floor(4 (n / 100)^(2/9))`, raised to
  the forward horizon where overlapping returns need more."""
  return max(int(horizon), int(math.floor(4.0 * (num_bars / 100.0) ** (2.0 / 9.0))))


def newey_west_variance(x: Any, lags: int) -> float:
  """Long-run variance of a series, `gamma_0 + 2 sum_{l=1..L} (1 - l / (L + 1)) gamma_l`.

  `gamma_l = sum_t (x_t - mean)(x_{t-l} - mean) / n` (no small-sample correction); the variance
  of the mean is this divided by n.

  Args:
    x: (n,) finite values in time order.
    lags: L >= 0.
  """
  x = np.asarray(x, np.float64)
  if x.ndim != 1 or not x.size or not np.all(np.isfinite(x)):
    raise ValueError(f'x must be a non-empty finite 1-D series, got shape {x.shape}')
  if lags < 0:
    raise ValueError(f'lags must be >= 0, got {lags}')
  d = x - x.mean()
  n = d.size
  total = d @ d / n
  for lag in range(1, min(lags, n - 1) + 1):
    total += 2.0 * (1.0 - lag / (lags + 1.0)) * (d[lag:] @ d[:-lag]) / n
  return float(total)


def newey_west_mean(series: Any, *, horizon: int, lags: int | None = None) -> dict[str, float]:
  """Mean of a per-bar series with a Newey-West t-statistic (NaN bars dropped).

  Args:
    series: (bars,) e.g. a per-bar cross-sectional IC or a quantile spread.
    horizon: the forward-return horizon h of the series.
    lags: Bartlett lags, at least `horizon`; default `newey_west_lags(n, horizon)`.

  Returns:
    {'mean', 'std' (per bar, ddof 1), 'ir' (mean / std per bar), 'se' (HAC error of the mean),
    't_stat', 'n_bars', 'lags'}; NaN statistics where fewer than 2 bars are defined.
  """
  values = np.asarray(series, np.float64)
  if values.ndim != 1:
    raise ValueError(f'series must be 1-D (bars,), got shape {values.shape}')
  values = values[np.isfinite(values)]
  n = values.size
  lags = newey_west_lags(n, horizon) if lags is None else int(lags)
  if lags < horizon:
    raise ValueError(f'lags {lags} < horizon {horizon}: forward returns of consecutive bars '
                     'overlap, so the Newey-West lags must cover the horizon')
  if n < 2:
    return {'mean': float(values.mean()) if n else math.nan, 'std': math.nan, 'ir': math.nan,
            'se': math.nan, 't_stat': math.nan, 'n_bars': n, 'lags': lags}
  mean = float(values.mean())
  std = float(values.std(ddof=1))
  variance = newey_west_variance(values, lags)
  se = math.sqrt(variance / n) if variance > 0 else math.nan
  return {'mean': mean, 'std': std, 'ir': mean / std if std > 0 else math.nan, 'se': se,
          't_stat': mean / se, 'n_bars': n, 'lags': lags}


def _panel_mask(score: Any, forward: Any, available: Any
                ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  score = np.asarray(score, np.float64)
  forward = np.asarray(forward, np.float64)
  if score.ndim != 2 or score.shape != forward.shape:
    raise ValueError(f'score and forward returns must be (bars, assets) of one shape, got '
                     f'{score.shape} and {forward.shape}')
  if available is None:
    available = np.ones(score.shape, bool)
  available = np.asarray(available)
  if available.shape != score.shape or available.dtype != bool:
    raise ValueError(f'available must be bool {score.shape}, got {available.dtype} '
                     f'{available.shape}')
  mask = available & np.isfinite(score) & np.isfinite(forward)
  return score, forward, mask


def average_ranks(values: Any, mask: Any, axis: int = -1) -> np.ndarray:
  """1-based ranks along `axis` among the entries where `mask`, ties sharing the mean of the
  ranks they span; NaN where not `mask`. (bars, assets) -> (bars, assets)."""
  values = np.moveaxis(np.asarray(values, np.float64), axis, -1)
  mask = np.moveaxis(np.asarray(mask, bool), axis, -1)
  keyed = np.where(mask, values, np.inf)  # entries left out sort last
  order = np.argsort(keyed, axis=-1, kind='stable')
  ordered = np.take_along_axis(keyed, order, axis=-1)
  positions = np.broadcast_to(np.arange(ordered.shape[-1]), ordered.shape)
  starts_run = np.ones(ordered.shape, bool)
  starts_run[..., 1:] = ordered[..., 1:] != ordered[..., :-1]
  ends_run = np.ones(ordered.shape, bool)
  ends_run[..., :-1] = starts_run[..., 1:]
  first = np.maximum.accumulate(np.where(starts_run, positions, 0), axis=-1)
  last = np.flip(np.minimum.accumulate(
      np.flip(np.where(ends_run, positions, ordered.shape[-1]), -1), axis=-1), -1)
  ranks = np.empty(ordered.shape)
  np.put_along_axis(ranks, order, (first + last) / 2.0 + 1.0, axis=-1)
  return np.moveaxis(np.where(mask, ranks, np.nan), -1, axis)


def _masked_pearson(x: np.ndarray, y: np.ndarray, mask: np.ndarray, axis: int,
                    min_count: int) -> tuple[np.ndarray, np.ndarray]:
  """Pearson correlation along `axis` over `mask`, NaN below `min_count` or if constant."""
  count = mask.sum(axis=axis)
  n = np.maximum(count, 1)
  dx = np.where(mask, x - np.sum(np.where(mask, x, 0.0), axis, keepdims=True)
                / np.expand_dims(n, axis), 0.0)
  dy = np.where(mask, y - np.sum(np.where(mask, y, 0.0), axis, keepdims=True)
                / np.expand_dims(n, axis), 0.0)
  sxx, syy = np.sum(dx * dx, axis), np.sum(dy * dy, axis)
  # Constant within rounding: a centred sum of squares that is rounding noise.
  tiny = 1e-24
  defined = (count >= min_count) & (sxx > tiny) & (syy > tiny)
  corr = np.sum(dx * dy, axis) / np.sqrt(np.where(defined, sxx * syy, 1.0))
  return np.where(defined, np.clip(corr, -1.0, 1.0), np.nan), count


def cross_sectional_ic(score: Any, forward: Any, available: Any = None, *,
                       min_assets: int = MIN_ASSETS) -> dict[str, np.ndarray]:
  """Per-bar correlation across coins of the score with the forward return.

  Args:
    score: (bars, assets) decided on bars <= t.
    forward: (bars, assets) forward returns (`panel_forward_returns`).
    available: (bars, assets) bool, default all True.
    min_assets: fewest coins a bar's correlation needs.

  Returns:
    {'ic': (bars,), 'rank_ic': (bars,), 'n_assets': (bars,) int}: NaN where undefined.
  """
  score, forward, mask = _panel_mask(score, forward, available)
  ic, count = _masked_pearson(score, forward, mask, 1, min_assets)
  rank_ic, _ = _masked_pearson(average_ranks(score, mask, 1), average_ranks(forward, mask, 1),
                               mask, 1, min_assets)
  return {'ic': ic, 'rank_ic': rank_ic, 'n_assets': count}


def ic_summary(score: Any, forward: Any, available: Any = None, *, horizon: int,
               lags: int | None = None, min_assets: int = MIN_ASSETS
               ) -> dict[str, dict[str, float]]:
  """The time average of the per-bar IC and rank IC with Newey-West t-statistics.

  Returns:
    {'ic': newey_west_mean(...), 'rank_ic': newey_west_mean(...)}.
  """
  series = cross_sectional_ic(score, forward, available, min_assets=min_assets)
  return {name: newey_west_mean(series[name], horizon=horizon, lags=lags)
          for name in ('ic', 'rank_ic')}


def time_series_ic(score: Any, forward: Any, available: Any = None, *,
                   min_bars: int = MIN_ASSETS) -> dict[str, np.ndarray]:
  """Per coin, the correlation over time of its score with its forward return.

  Returns:
    {'ic': (assets,), 'rank_ic': (assets,), 'n_bars': (assets,) int}.
  """
  score, forward, mask = _panel_mask(score, forward, available)
  ic, count = _masked_pearson(score, forward, mask, 0, min_bars)
  rank_ic, _ = _masked_pearson(average_ranks(score, mask, 0), average_ranks(forward, mask, 0),
                               mask, 0, min_bars)
  return {'ic': ic, 'rank_ic': rank_ic, 'n_bars': count}


def quantile_buckets(score: Any, mask: Any, num_quantiles: int) -> np.ndarray:
  """Score quantile of every entry per bar: 0 (lowest) .. q-1, -1 where not `mask` or where a
  bar has fewer than q coins. With n coins and average rank r, the bucket is
  `floor((r - 1) q / n)`: equal counts when q divides n, tied scores in one bucket.
  (bars, assets) -> (bars, assets) int."""
  mask = np.asarray(mask, bool)
  ranks = average_ranks(score, mask, 1)
  count = mask.sum(axis=1, keepdims=True)
  buckets = np.floor((np.nan_to_num(ranks) - 1.0) * num_quantiles / np.maximum(count, 1))
  return np.where(mask & (count >= num_quantiles), buckets, -1).astype(np.int64)


def quantile_returns(score: Any, forward: Any, available: Any = None, *, horizon: int,
                     num_quantiles: int = 5, lags: int | None = None) -> dict[str, Any]:
  """Mean forward return per score quantile, and the top-minus-bottom spread.

  Args:
    score, forward, available: as in `cross_sectional_ic`.
    horizon: the forward horizon h (sets the Newey-West lags of the spread).
    num_quantiles: q buckets per bar; bars with fewer than q coins take no part.
    lags: Bartlett lags of the spread's t, at least `horizon`.

  Returns:
    {'per_bar': (bars, q) mean forward return per bucket (NaN where a bucket is empty),
    'mean': (q,) their average over bars, 'spread': (bars,) top minus bottom bucket,
    'spread_summary': newey_west_mean of the spread}.
  """
  if num_quantiles < 2:
    raise ValueError(f'num_quantiles must be >= 2, got {num_quantiles}')
  score, forward, mask = _panel_mask(score, forward, available)
  buckets = quantile_buckets(score, mask, num_quantiles)
  member = buckets[..., None] == np.arange(num_quantiles)  # (bars, assets, q)
  counts = member.sum(axis=1)
  sums = np.sum(np.where(member, np.nan_to_num(forward)[..., None], 0.0), axis=1)
  per_bar = np.where(counts > 0, sums / np.maximum(counts, 1), np.nan)
  with np.errstate(invalid='ignore'):
    defined = np.isfinite(per_bar)
    mean = np.where(defined.any(0), np.nansum(per_bar, 0) / np.maximum(defined.sum(0), 1),
                    np.nan)
  spread = per_bar[:, -1] - per_bar[:, 0]
  return {'per_bar': per_bar, 'mean': mean, 'spread': spread,
          'spread_summary': newey_west_mean(spread, horizon=horizon, lags=lags)}
