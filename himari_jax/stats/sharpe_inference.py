"""How sure a Sharpe ratio of autocorrelated per-bar returns is (SPEC 11): HAC error, PSR, power.

The per-period Sharpe ratio `SR = mu / sigma` is a smooth function of the returns' first two
moments, so (Lo 2002, delta method) its sampling variance is the long-run variance of its
influence series divided by the number of bars:

  z_t = (q_t - mu) / sigma - SR / (2 sigma^2) * ((q_t - mu)^2 - sigma^2),
  Var(SR) = LRV(z) / (n - 1),  LRV(z) = gamma_0 + 2 sum_{l=1..L} (1 - l / (L + 1)) gamma_l

(Newey-West, Bartlett weights). At L = 0 this is the i.i.d. error of Bailey & Lopez de Prado
(2012), `(1 - g3 SR + (g4 - 1) / 4 SR^2) / (n - 1)`, with the returns' skewness g3 and
kurtosis g4; the autocovariances add what serial correlation and volatility clustering carry.
`sigma` is the population std and `SR` the reported (ddof=1) Sharpe ratio, so that at L = 0
the PSR here equals `significance.probabilistic_sharpe_ratio` exactly.

`sharpe_standard_error` picks L from the data: the Newey-West (1994) automatic bandwidth of
the Bartlett kernel (`arch.covariance.kernel.Bartlett`) on z. `sharpe_variance_hac` is the
same estimate in `jax.numpy` for code under `jit` / `vmap` (a policy grid), with L given.
"""

from __future__ import annotations

import math
import statistics
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from himari_jax.constants import PERIODS_PER_YEAR
from himari_jax.stats import cross_section

_NORMAL = statistics.NormalDist()
# One-sided 5 % test with 80 % power: the minimum detectable Sharpe is this many errors.
POWER_Z = _NORMAL.inv_cdf(0.95) + _NORMAL.inv_cdf(0.80)


def sharpe_influence(returns: jax.Array) -> jax.Array:
  """The influence series z of the per-period Sharpe ratio (module docstring).

  Args:
    returns: (..., n) per-period returns, n >= 2.

  Returns:
    (..., n) z_t, mean 0 by construction; NaN where the returns have zero variance.
  """
  returns = jnp.asarray(returns)
  n = returns.shape[-1]
  centred = returns - jnp.mean(returns, axis=-1, keepdims=True)
  variance = jnp.mean(jnp.square(centred), axis=-1, keepdims=True)
  defined = variance > 0
  variance = jnp.where(defined, variance, jnp.nan)
  sharpe = jnp.mean(returns, axis=-1, keepdims=True) / jnp.sqrt(variance * n / (n - 1))
  return centred / jnp.sqrt(variance) - sharpe / (2 * variance) * (jnp.square(centred) - variance)


def bartlett_long_run_variance(x: jax.Array, lags: Any) -> jax.Array:
  """`cross_section.newey_west_variance` in `jax.numpy`, over the last axis.

  Args:
    x: (..., n) series (demeaned here).
    lags: L >= 0; may be a traced integer (the loop runs L times, nothing recompiles).

  Returns:
    (...) `gamma_0 + 2 sum_{l=1..L} (1 - l / (L + 1)) gamma_l`, `gamma_l = sum_t d_t d_{t-l} / n`.
  """
  d = x - jnp.mean(x, axis=-1, keepdims=True)
  n = d.shape[-1]
  lags = jnp.minimum(jnp.asarray(lags), n - 1)
  bars = jnp.arange(n)

  def add_lag(lag, total):
    lagged = jnp.where(bars >= lag, jnp.roll(d, lag, axis=-1), 0.0)
    weight = 1.0 - lag / (lags + 1.0)
    return total + 2.0 * weight * jnp.sum(d * lagged, axis=-1) / n

  return jax.lax.fori_loop(1, lags + 1, add_lag, jnp.sum(d * d, axis=-1) / n)


def sharpe_variance_hac(returns: jax.Array, lags: Any) -> jax.Array:
  """Sampling variance of the per-period Sharpe ratio, HAC with `lags` Bartlett lags.

  Args:
    returns: (..., n) per-period returns.
    lags: L >= 0 (traceable).

  Returns:
    (...) `LRV(z) / (n - 1)` in per-period units; NaN where the returns are constant.
  """
  returns = jnp.asarray(returns)
  return bartlett_long_run_variance(sharpe_influence(returns), lags) / (returns.shape[-1] - 1)


def automatic_lags(series: Any) -> int:
  """Newey & West's (1994) automatic Bartlett bandwidth of a series, as an integer number of
  lags (`arch.covariance.kernel.Bartlett(series, force_int=True).bandwidth`)."""
  from arch.covariance.kernel import Bartlett  # deferred: arch loads statsmodels

  return int(Bartlett(np.asarray(series, np.float64), force_int=True).bandwidth)


def sharpe_standard_error(returns: Any, *, lags: int | None = None) -> dict[str, float]:
  """HAC (Lo 2002 / Newey-West) and i.i.d. standard errors of the per-period Sharpe ratio.

  Args:
    returns: (n,) per-period returns, finite.
    lags: Bartlett lags; None = `automatic_lags` of the influence series (from the data).

  Returns:
    {'sharpe' (per period, ddof 1), 'se' (HAC), 'se_iid' (the same at 0 lags: the i.i.d.
    error with skewness and kurtosis), 'lags', 'num_observations'}; NaN errors for constant
    returns.
  """
  series = np.asarray(returns, np.float64)
  if series.ndim != 1 or series.size < 3 or not np.all(np.isfinite(series)):
    raise ValueError(f'returns must be a finite 1-D series of at least 3 bars; got shape '
                     f'{series.shape}')
  n = series.size
  std = series.std(ddof=1)
  if not std > 0:
    return {'sharpe': math.nan, 'se': math.nan, 'se_iid': math.nan,
            'lags': 0 if lags is None else int(lags), 'num_observations': n}
  with jax.enable_x64():
    influence = np.asarray(sharpe_influence(jnp.asarray(series)), np.float64)
  lags = automatic_lags(influence) if lags is None else int(lags)
  if lags < 0:
    raise ValueError(f'lags must be >= 0; got {lags}')
  variance = cross_section.newey_west_variance(influence, lags) / (n - 1)
  return {'sharpe': float(series.mean() / std),
          'se': math.sqrt(variance) if variance > 0 else math.nan,
          'se_iid': math.sqrt(float(np.mean(influence ** 2)) / (n - 1)),
          'lags': lags, 'num_observations': n}


def probabilistic_sharpe_hac(returns: Any, *, periods_per_year: float = PERIODS_PER_YEAR,
                            lags: int | None = None,
                            benchmark_sharpe: float = 0.0) -> dict[str, Any]:
  """What one test Sharpe ratio may claim: PSR with a HAC error and the minimum detectable
  Sharpe ratio at 80 % power for this many bars (SPEC 11).

  `PSR = Phi((SR - SR*) / SE_HAC)`; `MDS = (z_0.95 + z_0.80) * SE_HAC`, the true Sharpe ratio a
  one-sided 5 % test on these bars detects four times out of five.

  Args:
    returns: (n,) per-period returns of the tested strategy.
    periods_per_year: annualisation of the figures shown (8,760 for hourly bars).
    lags: Bartlett lags; None = from the data (`automatic_lags`).
    benchmark_sharpe: SR*, annualised.

  Returns:
    {'label', 'sharpe', 'se', 'se_iid', 'min_detectable_sharpe' (annualised), 'psr',
    'p_value' (`1 - psr`, one-sided for "SR > SR*"), 'lags', 'num_observations'}; NaN
    where the returns are constant.
  """
  error = sharpe_standard_error(returns, lags=lags)
  scale = math.sqrt(periods_per_year)
  difference = error['sharpe'] - benchmark_sharpe / scale
  psr = math.nan
  if math.isfinite(difference) and math.isfinite(error['se']):
    psr = _NORMAL.cdf(difference / error['se'])
  return {
      'label': f'test: PSR({benchmark_sharpe:g}), HAC s.e.',
      'sharpe': error['sharpe'] * scale,
      'se': error['se'] * scale,
      'se_iid': error['se_iid'] * scale,
      'min_detectable_sharpe': POWER_Z * error['se'] * scale,
      'psr': psr,
      'p_value': 1.0 - psr,
      'lags': error['lags'],
      'num_observations': error['num_observations'],
  }
