"""Inference on a panel of per-coin returns (SPEC 12): tests stated with their power.

A universe backtest gives each coin its own net-return series over one hourly grid, NaN where
the coin is not listed (or not in the fold). The statistics here treat the coins as one
sample whose cross-coin correlation is kept: a time-block bootstrap draws rows (bars) of the
whole panel, so every coin is resampled on the same bars.

  coin_sharpes(returns, periods_per_year=8760)          # (coins,) annualised net Sharpe
  sharpe_panel_test(returns, h0=0.8, alternative='less')  # H0: mean coin Sharpe >= 0.8
  sharpe_panel_test(a, baseline=b)                      # paired: mean over coins of a - b
  mean_difference_test(ic_a - ic_b, horizon=6)          # a per-bar series, Newey-West t
  required_scale(estimate, mde)                         # how much more data would decide it

Every test returns its minimum detectable effect at 80 % power (`min_detectable`): the
smallest true effect the test would find at its level four times in five, from the test's own
standard error. A test that "does not reject" says little when its minimum detectable effect
is larger than any effect one would care about; `required_scale` says by how many times the
data would have to grow (in bars, for the same coins) for the observed effect to be detected
with that power.

The block length is Politis-White's (`significance.politis_white_block_length`, via arch) on
the cross-coin mean return, printed with each result.
"""

from __future__ import annotations

import math
import statistics
from typing import Any

import jax
import numpy as np

from himari_jax.constants import PERIODS_PER_YEAR
from himari_jax.stats import cross_section, significance

ALTERNATIVES = ('two-sided', 'less', 'greater')
POWER = 0.80
# A coin needs this many return bars for its Sharpe ratio to enter a cross-coin mean.
MIN_COIN_BARS = 100

_NORMAL = statistics.NormalDist()


def _panel(name: str, values: Any) -> np.ndarray:
  array = np.asarray(values, np.float64)
  if array.ndim != 2:
    raise ValueError(f'{name} must be (bars, coins), got shape {array.shape}')
  return array


def coin_sharpes(returns: Any, *, periods_per_year: float = PERIODS_PER_YEAR,
                 min_bars: int = MIN_COIN_BARS) -> np.ndarray:
  """Annualised Sharpe ratio of each coin's finite returns: (coins,), NaN for a coin with
  fewer than `min_bars` finite bars or constant returns.

  Args:
    returns: (bars, coins) net returns, NaN where the coin is not traded.
  """
  r = _panel('returns', returns)
  finite = np.isfinite(r)
  count = finite.sum(axis=0)
  filled = np.where(finite, r, 0.0)
  mean = filled.sum(axis=0) / np.maximum(count, 1)
  var = (np.where(finite, r - mean, 0.0) ** 2).sum(axis=0) / np.maximum(count - 1, 1)
  with np.errstate(divide='ignore', invalid='ignore'):
    sharpe = mean / np.sqrt(var) * math.sqrt(periods_per_year)
  return np.where((count >= min_bars) & (var > 0), sharpe, np.nan)


def _mean_sharpe(returns: np.ndarray, baseline: np.ndarray | None, periods: float,
                 min_bars: int) -> float:
  s = coin_sharpes(returns, periods_per_year=periods, min_bars=min_bars)
  if baseline is not None:
    s = s - coin_sharpes(baseline, periods_per_year=periods, min_bars=min_bars)
  s = s[np.isfinite(s)]
  return float(s.mean()) if s.size else math.nan


def critical_values(alternative: str, level: float) -> tuple[float, float]:
  """(z of the test at `level`, z of 80 % power): their sum times the standard error is the
  minimum detectable effect."""
  if alternative not in ALTERNATIVES:
    raise ValueError(f'alternative must be one of {ALTERNATIVES}, got {alternative!r}')
  if not 0 < level < 1:
    raise ValueError(f'level must be in (0, 1), got {level}')
  tail = level / 2 if alternative == 'two-sided' else level
  return float(_NORMAL.inv_cdf(1 - tail)), float(_NORMAL.inv_cdf(POWER))


def normal_p_value(z: float, alternative: str = 'two-sided') -> float:
  """The p-value of a z statistic for `alternative` (NaN for a NaN z)."""
  if not np.isfinite(z):
    return math.nan
  if alternative == 'less':
    return float(_NORMAL.cdf(z))
  if alternative == 'greater':
    return float(1 - _NORMAL.cdf(z))
  return float(2 * (1 - _NORMAL.cdf(abs(z))))


def sharpe_panel_test(returns: Any, *, baseline: Any = None, h0: float = 0.0,
                      alternative: str = 'two-sided', level: float = 0.05,
                      periods_per_year: float = PERIODS_PER_YEAR, num_resamples: int = 1000,
                      block_length: float | None = None, seed: int = 0,
                      min_bars: int = MIN_COIN_BARS) -> dict[str, Any]:
  """Test of the mean over coins of each coin's net Sharpe ratio (or of its difference from
  `baseline`'s, coin by coin), by a stationary time-block bootstrap of the panel's rows.

  The statistic is the cross-coin mean of per-coin annualised Sharpe ratios (coins with at
  least `min_bars` bars). Each resample draws blocks of bars (the same bars for every coin and
  for the baseline), so the coins' correlation and each series' autocorrelation are kept. The
  test is a z-test with the bootstrap standard error; the interval is the percentile one.

  Args:
    returns, baseline: (bars, coins) net returns on one grid, NaN where not traded.
    h0: the Sharpe ratio (or difference) of the null hypothesis.
    alternative: 'two-sided'; 'less' (H0: statistic >= h0, rejected when it is clearly
      below); 'greater' (H0: statistic <= h0).
    level: the test's size, e.g. 0.05.
    block_length: expected block length in bars; None = Politis-White of the cross-coin mean.

  Returns:
    {'estimate', 'h0', 'alternative', 'se', 'low', 'high' (the two-sided 1 - level
    percentile interval), 'z', 'p_value', 'reject' (bool), 'min_detectable' (the effect
    |statistic - h0| the test detects with 80 % power), 'num_coins', 'num_bars',
    'block_length', 'num_resamples'}.

  Raises:
    ValueError: shapes differ, or too few bars or coins.
  """
  r = _panel('returns', returns)
  b = None if baseline is None else _panel('baseline', baseline)
  if b is not None and b.shape != r.shape:
    raise ValueError(f'returns {r.shape} and baseline {b.shape} must have one shape')
  z_test, z_power = critical_values(alternative, level)
  rows = np.isfinite(r).any(axis=1) | (np.isfinite(b).any(axis=1) if b is not None else False)
  r = r[rows]
  b = b[rows] if b is not None else None
  if r.shape[0] < 3 * min_bars:
    raise ValueError(f'{r.shape[0]} bars with returns; the test needs at least {3 * min_bars}')
  estimate = _mean_sharpe(r, b, periods_per_year, min_bars)
  pooled = np.nanmean(r if b is None else r - b, axis=1)
  pooled = np.where(np.isfinite(pooled), pooled, 0.0)
  if block_length is None:
    block_length = significance.politis_white_block_length(pooled)
  indices = np.asarray(significance.bootstrap_indices(
      jax.random.key(seed), num_bars=r.shape[0], num_resamples=num_resamples,
      block_length=float(block_length)))
  draws = np.array([_mean_sharpe(r[i], None if b is None else b[i], periods_per_year,
                                 min_bars) for i in indices])
  draws = draws[np.isfinite(draws)]
  se = float(draws.std(ddof=1)) if draws.size > 1 else math.nan
  z = (estimate - h0) / se if se > 0 else math.nan
  p = normal_p_value(z, alternative)
  low, high = ((float(q) for q in np.quantile(draws, [level / 2, 1 - level / 2]))
               if draws.size > 1 else (math.nan, math.nan))
  coins = coin_sharpes(r, periods_per_year=periods_per_year, min_bars=min_bars)
  return {'estimate': estimate, 'h0': h0, 'alternative': alternative, 'level': level,
          'se': se, 'low': low, 'high': high, 'z': z, 'p_value': p,
          'reject': bool(np.isfinite(p) and p < level),
          'min_detectable': (z_test + z_power) * se, 'num_coins': int(np.isfinite(coins).sum()),
          'num_bars': int(r.shape[0]), 'block_length': float(block_length),
          'num_resamples': int(num_resamples)}


def mean_difference_test(series: Any, *, horizon: int, h0: float = 0.0,
                         alternative: str = 'two-sided', level: float = 0.05
                         ) -> dict[str, Any]:
  """Test of the mean of a per-bar series (e.g. model A's rank IC minus model B's on each
  bar) with a Newey-West standard error (lags >= `horizon`, `cross_section.newey_west_mean`).

  Returns:
    `newey_west_mean`'s fields and 'h0', 'alternative', 'level', 'z', 'p_value', 'reject',
    'low', 'high' (normal interval), 'min_detectable' (at 80 % power).
  """
  z_test, z_power = critical_values(alternative, level)
  out: dict[str, Any] = dict(cross_section.newey_west_mean(series, horizon=horizon))
  se = out['se']
  z = (out['mean'] - h0) / se if se > 0 else math.nan
  half = float(_NORMAL.inv_cdf(1 - level / 2)) * se
  p = normal_p_value(z, alternative)
  out.update(estimate=out['mean'], h0=h0, alternative=alternative, level=level, z=z,
             p_value=p, reject=bool(np.isfinite(p) and p < level),
             low=out['mean'] - half, high=out['mean'] + half,
             min_detectable=(z_test + z_power) * se)
  return out


def required_scale(estimate: float, min_detectable: float, h0: float = 0.0) -> float:
  """By how many times the data (bars of the same coins) must grow for a true effect of
  `estimate - h0` to be detected with 80 % power: (min_detectable / |estimate - h0|)^2, as
  standard errors shrink with the square root of the bars. inf for a zero effect."""
  effect = abs(estimate - h0)
  if not np.isfinite(min_detectable) or not np.isfinite(effect):
    return math.nan
  return math.inf if effect == 0 else float((min_detectable / effect) ** 2)
