"""What a search may claim, and what the tests after it may (SPEC 8 and 11).

* `selection_deflated_sharpe`: the deflated Sharpe ratio (Bailey & Lopez de Prado 2014) of a
  search's winner in the sample where the search ran: the winner's Sharpe ratio, skewness and
  kurtosis on those bars against the best of N zero-skill trials with the spread of the
  trials' Sharpe ratios on the same bars. One convention for every caller: per-period Sharpe
  ratios and the number of bars of that sample (annualised figures are for display only). A
  search on validation bars is deflated there; the test result of the one policy it chose is
  not a best-of-N and gets `sharpe_inference.probabilistic_sharpe_hac` instead.
* `null_p_value`: P(null >= observed) of a search rerun on inputs with the signal destroyed,
  `(1 + k) / (1 + R)`.
* `holm_adjust`: Holm's (1979) step-down adjustment of the p-values of the comparisons made
  on one test sample.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from himari_jax.constants import PERIODS_PER_YEAR
from himari_jax.stats import significance


def selection_deflated_sharpe(winner_returns: Any, trial_sharpes: Sequence[float] | np.ndarray,
                              *, periods_per_year: float = PERIODS_PER_YEAR,
                              num_trials: float | None = None,
                              sample: str = 'validation') -> dict[str, Any]:
  """DSR of a search's winner on the bars the search ran on.

  Args:
    winner_returns: (V,) per-period returns of the winning configuration on the search's bars.
    trial_sharpes: (N,) Sharpe ratios of every configuration tried on the same V bars (the
      winner included; NaN for one that never traded: it still counts in N), annualised with
      `periods_per_year` as a sweep reports them (`periods_per_year=1`: per period).
    periods_per_year: the annualisation of `trial_sharpes` and of the figures shown.
    num_trials: N; default `len(trial_sharpes)` (or an effective number of independent trials).
    sample: what the V bars are, for the label.

  Returns:
    {'label' ("selection: DSR of the validation winner (N trials, V validation bars)"), 'dsr',
    'num_trials', 'num_bars', 'sharpe' (the winner's, annualised), 'expected_max_sharpe' (SR0,
    annualised), 'trial_sharpe_std' (annualised), 'skewness', 'kurtosis'}. With fewer than
    two finite trial Sharpe ratios there is no spread to deflate by: SR0 = 0 (DSR = PSR(0)).
    NaN figures where the winner's returns are constant.
  """
  values = np.asarray(trial_sharpes, np.float64).ravel()
  scale = math.sqrt(periods_per_year)
  per_period = values / scale
  trials = float(values.size if num_trials is None else num_trials)
  moments = significance.return_moments(winner_returns)
  finite = per_period[np.isfinite(per_period)]
  variance = float(np.var(finite, ddof=1)) if finite.size >= 2 else 0.0
  expected_max = significance.expected_max_sharpe(trials, variance)
  dsr = significance.deflated_sharpe_ratio(
      moments['sharpe'], moments['num_observations'], moments['skewness'],
      moments['kurtosis'], num_trials=trials, trial_sharpe_variance=variance)
  bars = moments['num_observations']
  return {
      'label': f'selection: DSR of the {sample} winner ({trials:,.0f} trials, {bars:,} '
               f'{sample} bars)',
      'dsr': dsr,
      'num_trials': trials,
      'num_bars': bars,
      'sharpe': moments['sharpe'] * scale,
      'expected_max_sharpe': expected_max * scale,
      'trial_sharpe_std': math.sqrt(variance) * scale,
      'skewness': moments['skewness'],
      'kurtosis': moments['kurtosis'],
  }


def null_p_value(null_values: Sequence[float] | np.ndarray, observed: float) -> float:
  """`(1 + #{null >= observed}) / (1 + R)` over the R defined (finite or infinite, not NaN)
  null values; NaN if `observed` is NaN or no null value is defined."""
  null = np.asarray(null_values, np.float64)
  null = null[~np.isnan(null)]
  if math.isnan(observed) or not null.size:
    return math.nan
  return float((1 + np.count_nonzero(null >= observed)) / (1 + null.size))


def holm_adjust(p_values: Sequence[float]) -> list[float]:
  """Holm's step-down adjusted p-values (family-wise error), in the order given.

  The k-th smallest of m p-values is multiplied by `m - k + 1`, made non-decreasing in that
  order and capped at 1. NaN p-values are left out of m and stay NaN.
  """
  p = np.asarray(p_values, np.float64)
  adjusted = np.full(p.shape, np.nan)
  defined = np.flatnonzero(~np.isnan(p))
  order = defined[np.argsort(p[defined], kind='stable')]
  m = order.size
  running = 0.0
  for k, i in enumerate(order):
    running = max(running, min(1.0, (m - k) * p[i]))
    adjusted[i] = running
  return adjusted.tolist()
