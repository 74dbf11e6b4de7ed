"""Significance of backtest results: block bootstrap CIs, probabilistic / deflated Sharpe, nulls.

Everything here works on plain per-bar arrays (strategy returns, benchmark returns, positions),
so it does not depend on the backtester. Conventions (SPEC section 7):

- Sharpe ratio: `mean(q) / std(q) * sqrt(periods_per_year)` with the sample std (ddof=1, as
  in `metrics.py` and empyrical), risk-free rate 0; annualised by the bars a year. A
  series with zero variance has an undefined Sharpe ratio: it is NaN here, never a crash or a
  huge number.
- The probabilistic and deflated Sharpe ratios (Bailey & Lopez de Prado 2012, 2014) take
  per-period (not annualised) Sharpe ratios, as in the papers. A deflated Sharpe ratio belongs
  to the sample the trials ran on (`selection.selection_deflated_sharpe`); a test result gets
  PSR with a HAC error (`sharpe_inference`) in `significance_report`.
- Resampling runs in `jax.numpy` under `jax.jit`: B resamples are drawn from one key and
  evaluated in fixed-size batches so that memory stays bounded for long hourly series.
  Arrays are float32 unless JAX's x64 mode is on.
"""

from __future__ import annotations

import functools
import math
import statistics
import warnings
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from himari_jax.constants import PERIODS_PER_YEAR
from himari_jax.stats import metrics as metrics_lib
from himari_jax.stats import sharpe_inference

EULER_GAMMA = 0.5772156649015329
# Resampled values held in memory at once per batch (indices plus gathered returns).
_ELEMENTS_PER_BATCH = 1 << 22
_NORMAL = statistics.NormalDist()

Statistic = str | Callable[[jax.Array], jax.Array]


# ---------------------------------------------------------------------------------------------
# Statistics of a return series (last axis = bars).


def _mean_std(returns: jax.Array) -> tuple[jax.Array, jax.Array]:
  """Mean and population std (ddof=0) over the last axis.

  Shifting by the first value makes a constant series give a std of exactly 0 (rounding
  otherwise leaves ~1e-8 and a Sharpe ratio of ~1e5).
  """
  shift = returns[..., :1]
  deviations = returns - shift
  mean_deviation = jnp.mean(deviations, axis=-1)
  variance = jnp.mean(jnp.square(deviations - mean_deviation[..., None]), axis=-1)
  return shift[..., 0] + mean_deviation, jnp.sqrt(variance)


def _per_period_sharpe(returns: jax.Array) -> jax.Array:
  """`mean / std` (ddof=1) over the last axis; NaN where the std is 0. (..., n) -> (...)."""
  mean, std = _mean_std(returns)
  num_bars = returns.shape[-1]
  std = std * math.sqrt(num_bars / (num_bars - 1))
  return metrics_lib.sharpe_from_moments(mean, std, 1.0)


def _total_return(returns: jax.Array) -> jax.Array:
  """Compounded return `prod(1 + r) - 1` over the last axis, summed in log space for accuracy."""
  return jnp.expm1(jnp.sum(jnp.log1p(returns), axis=-1))


def _statistic_fn(statistic: Statistic, periods_per_year: float) -> tuple[Callable, float]:
  """Maps a statistic name to a module-level function (stable under `jit`) and a scale."""
  if statistic == 'sharpe':
    # Annualised outside the jitted function so that its cache does not depend on the period.
    return _per_period_sharpe, math.sqrt(periods_per_year)
  if statistic == 'total_return':
    return _total_return, 1.0
  if callable(statistic):
    return statistic, 1.0
  raise ValueError(
      f"statistic must be 'sharpe', 'total_return' or a function of a (bars,) array; "
      f'got {statistic!r}.')


def _as_series(name: str, values: Any, min_length: int = 3) -> np.ndarray:
  """Validates a 1-D finite series and returns it as float64 numpy."""
  array = np.asarray(values, dtype=np.float64)
  if array.ndim != 1:
    raise ValueError(f'{name} must be 1-D (bars,); got shape {array.shape}.')
  if array.shape[0] < min_length:
    raise ValueError(f'{name} needs at least {min_length} bars; got {array.shape[0]}.')
  bad = np.flatnonzero(~np.isfinite(array))
  if bad.size:
    raise ValueError(f'{name} has non-finite values, first at bar {bad[0]} ({array[bad[0]]}).')
  return array


def sharpe_ratio(returns: Any, periods_per_year: float = PERIODS_PER_YEAR) -> float:
  """Annualised Sharpe ratio `mean / std * sqrt(periods_per_year)` (ddof=1, risk-free 0).

  Args:
    returns: (bars,) per-period returns.
    periods_per_year: bars per year (default: hourly bars); 1 gives the per-period Sharpe ratio.

  Returns:
    The Sharpe ratio; NaN for a series with zero variance (undefined, e.g. a strategy that
    never trades).
  """
  series = _as_series('returns', returns, min_length=2)
  return float(_per_period_sharpe(jnp.asarray(series))) * math.sqrt(periods_per_year)


def return_moments(returns: Any) -> dict[str, float]:
  """Per-period moments used by the probabilistic Sharpe ratio.

  Args:
    returns: (bars,) per-period returns.

  Returns:
    `num_observations`, per-period `sharpe` (`mean / std`, ddof=1), `skewness` and (non-excess,
    normal = 3) `kurtosis` from population central moments, as `scipy.stats.skew` and
    `scipy.stats.kurtosis(fisher=False)` with their default `bias=True`. NaN where the std is 0.
  """
  series = jnp.asarray(_as_series('returns', returns))
  mean, std = _mean_std(series)
  centred = series - mean
  variance = jnp.square(std)
  defined = variance > 0
  safe_variance = jnp.where(defined, variance, 1.0)
  skewness = jnp.mean(centred**3) / safe_variance**1.5
  kurtosis = jnp.mean(centred**4) / safe_variance**2
  return {
      'num_observations': int(series.shape[0]),
      'sharpe': float(_per_period_sharpe(series)),
      'skewness': float(jnp.where(defined, skewness, jnp.nan)),
      'kurtosis': float(jnp.where(defined, kurtosis, jnp.nan)),
  }


# ---------------------------------------------------------------------------------------------
# Block bootstrap.


# How a bootstrap's block length was set, as reports print it beside the interval.
BLOCK_RULE_DATA = 'Politis-White'
BLOCK_RULE_GIVEN = 'set'


def politis_white_block_length(*series: Any, method: str = 'stationary') -> float:
  """The block length chosen from the data: Politis & White (2004) with the correction of
  Patton, Politis & White (2009) (`arch.bootstrap.optimal_block_length`), the estimate for
  `method`'s bootstrap, on the returns themselves (the Sharpe ratio and the total return move
  with the returns to first order).

  Args:
    *series: one or more (n,) return series resampled with the same blocks (a strategy and
      its benchmark); the longest of their block lengths is taken.
    method: 'stationary' (expected block length) or 'circular' (fixed block length).

  Returns:
    A block length in [1, n] bars; 1 (the iid bootstrap) where the estimate is undefined
    (constant returns).
  """
  if method not in ('stationary', 'circular'):
    raise ValueError(f"method must be 'stationary' or 'circular'; got {method!r}.")
  from arch.bootstrap import optimal_block_length  # deferred: arch loads statsmodels

  data = np.stack([np.asarray(x, np.float64) for x in series], axis=1)
  with np.errstate(all='ignore'), warnings.catch_warnings():
    warnings.simplefilter('ignore', RuntimeWarning)  # a constant column divides by 0
    table = optimal_block_length(data)
  lengths = table['stationary' if method == 'stationary' else 'circular'].to_numpy()
  lengths = lengths[np.isfinite(lengths)]
  return float(np.clip(lengths.max(), 1.0, data.shape[0])) if lengths.size else 1.0


def _resample_indices(key: jax.Array, num_bars: int, block_length: Any,
                      method: str) -> jax.Array:
  """Indices of one block-bootstrap resample: (num_bars,) int32 in [0, num_bars); the block
  length may be traced, so a new length does not recompile."""
  positions = jnp.arange(num_bars)
  if method == 'stationary':
    # Politis & Romano (1994): a new block starts at each bar with probability 1/L, at a uniform
    # random bar, and otherwise continues (wrapping around) from the previous index.
    start_key, jump_key = jax.random.split(key)
    new_block = jax.random.uniform(jump_key, (num_bars,)) < 1.0 / block_length
    new_block = new_block.at[0].set(True)
    starts = jax.random.randint(start_key, (num_bars,), 0, num_bars)
    block_begin = jax.lax.cummax(jnp.where(new_block, positions, 0))
    return (starts[block_begin] + positions - block_begin) % num_bars
  if method == 'circular':
    # Politis & Romano (1992): blocks of fixed length L starting at uniform bars, wrapping around.
    # One start per bar is drawn (as many as blocks of length 1), so shapes do not depend on L.
    length = jnp.maximum(1, jnp.round(block_length)).astype(jnp.int32)
    starts = jax.random.randint(key, (num_bars,), 0, num_bars)
    return (starts[positions // length] + positions % length) % num_bars
  raise ValueError(f"method must be 'stationary' or 'circular'; got {method!r}.")


def _batch_size(num_bars: int, num_draws: int) -> int:
  return max(1, min(num_draws, _ELEMENTS_PER_BATCH // max(num_bars, 1)))


def _check_block_length(block_length: float | None, method: str,
                        *series: np.ndarray) -> tuple[float, str]:
  """(block length, how it was set): `politis_white_block_length` of `series` for None."""
  num_bars = series[0].shape[0]
  if block_length is None:
    return politis_white_block_length(*series, method=method), BLOCK_RULE_DATA
  if not 1 <= block_length <= num_bars:
    raise ValueError(f'block_length must be in [1, {num_bars}] (the number of bars); '
                     f'got {block_length}.')
  return float(block_length), BLOCK_RULE_GIVEN


@functools.partial(jax.jit, static_argnames=('num_bars', 'num_resamples', 'method'))
def bootstrap_indices(key: jax.Array, *, num_bars: int, num_resamples: int,
                      block_length: float, method: str = 'stationary') -> jax.Array:
  """Block-bootstrap resampling indices, the same ones the bootstrap functions use for `key`.

  Args:
    key: a `jax.random.key`; `block_bootstrap_ci(..., seed=s)` uses `jax.random.key(s)`.
    num_bars: n, the length of the series being resampled.
    num_resamples: B.
    block_length: expected block length for 'stationary' (blocks of geometric length with
      mean L), the fixed block length for 'circular' (rounded). 1 gives the iid bootstrap.
    method: 'stationary' (Politis & Romano 1994) or 'circular' (Politis & Romano 1992).

  Returns:
    (B, n) int32 indices into the series.
  """
  keys = jax.random.split(key, num_resamples)
  return jax.vmap(lambda k: _resample_indices(k, num_bars, block_length, method))(keys)


@functools.partial(jax.jit, static_argnames=('statistic', 'num_resamples', 'method'))
def _bootstrap_statistics(key: jax.Array, series: jax.Array, *, statistic: Callable,
                          num_resamples: int, block_length: float, method: str) -> jax.Array:
  """Statistic of B resamples of k series resampled with shared indices.

  series: (k, n); `statistic` maps (n,) to a scalar or (s,); returns (B, k) or (B, k, s).
  """
  num_series, num_bars = series.shape

  def one_resample(resample_key):
    indices = _resample_indices(resample_key, num_bars, block_length, method)
    return jax.vmap(statistic)(series[:, indices])

  keys = jax.random.split(key, num_resamples)
  return jax.lax.map(one_resample, keys,
                     batch_size=_batch_size(num_series * num_bars, num_resamples))


def _check_confidence(confidence: float) -> None:
  if not 0 < confidence < 1:
    raise ValueError(f'confidence must be in (0, 1), e.g. 0.95; got {confidence}.')


def _interval(estimate: float, draws: np.ndarray, confidence: float) -> dict[str, Any]:
  """Percentile interval and standard error of bootstrap draws, ignoring undefined (NaN) ones."""
  defined = draws[np.isfinite(draws)]
  low = high = std_error = math.nan
  if defined.size >= 2:
    alpha = 1.0 - confidence
    low, high = (float(q) for q in np.quantile(defined, [alpha / 2, 1 - alpha / 2]))
    std_error = float(np.std(defined, ddof=1))
  return {'estimate': float(estimate), 'low': low, 'high': high, 'std_error': std_error,
          'resamples': draws}


def _paired_interval(strategy: float, benchmark: float, strategy_draws: np.ndarray,
                     benchmark_draws: np.ndarray, confidence: float) -> dict[str, Any]:
  """`_interval` of the difference plus the p-value dual to the percentile interval."""
  estimate = strategy - benchmark
  differences = strategy_draws - benchmark_draws
  defined = differences[np.isfinite(differences)]
  p_value = math.nan
  if math.isfinite(estimate) and defined.size:
    p_value = float((1 + np.count_nonzero(defined <= 0)) / (1 + defined.size))
  return {**_interval(estimate, differences, confidence), 'strategy': float(strategy),
          'benchmark': float(benchmark), 'p_value': p_value}


def block_bootstrap_ci(
    returns: Any,
    statistic: Statistic = 'sharpe',
    *,
    num_resamples: int = 2000,
    block_length: float | None = None,
    method: str = 'stationary',
    confidence: float = 0.95,
    seed: int = 0,
    periods_per_year: float = PERIODS_PER_YEAR,
) -> dict[str, Any]:
  """Block-bootstrap percentile confidence interval of a statistic of autocorrelated returns.

  Resampling whole blocks of consecutive bars keeps the short-range dependence (volatility
  clustering, intraday patterns) that an iid bootstrap destroys and that would make the
  interval too narrow.

  Args:
    returns: (bars,) per-period returns.
    statistic: 'sharpe' (annualised with `periods_per_year`), 'total_return'
      (`prod(1 + r) - 1`), or a jax-traceable function from a (bars,) array to a scalar
      (compiled once per function object: pass a named function, not a fresh lambda, in a loop).
    num_resamples: B, the number of bootstrap resamples.
    block_length: expected (stationary) or fixed (circular) block length in bars;
      None = chosen from the returns (`politis_white_block_length`). 1 gives the iid
      bootstrap.
    method: 'stationary' or 'circular', see `bootstrap_indices`.
    confidence: two-sided level of the percentile interval.
    seed: resamples are drawn from `jax.random.key(seed)`; the same seed gives the same result.
    periods_per_year: annualisation of 'sharpe'.

  Returns:
    `estimate` (the statistic of `returns`), `low`, `high`, `std_error` (std of the resampled
    statistic), `block_length`, `block_rule` ('Politis-White' when chosen from the data,
    'set' when given), and `resamples`: (B,) numpy array of resampled values.
    Resamples whose statistic is undefined (a Sharpe ratio of a zero-variance resample) are
    NaN in `resamples` and left out of `low`, `high` and `std_error`; if fewer than two are
    defined (e.g. constant returns) those three are NaN.
  """
  series = _as_series('returns', returns)
  statistic_fn, scale = _statistic_fn(statistic, periods_per_year)
  length, rule = _check_block_length(block_length, method, series)
  _check_confidence(confidence)
  data = jnp.asarray(series)[None]
  estimate = float(jax.vmap(statistic_fn)(data)[0]) * scale
  draws = _bootstrap_statistics(
      jax.random.key(seed), data, statistic=statistic_fn, num_resamples=num_resamples,
      block_length=length, method=method)
  draws = np.asarray(draws[:, 0], dtype=np.float64) * scale
  return {**_interval(estimate, draws, confidence), 'block_length': length, 'block_rule': rule}


def paired_block_bootstrap(
    strategy_returns: Any,
    benchmark_returns: Any,
    statistic: Statistic = 'sharpe',
    *,
    num_resamples: int = 2000,
    block_length: float | None = None,
    method: str = 'stationary',
    confidence: float = 0.95,
    seed: int = 0,
    periods_per_year: float = PERIODS_PER_YEAR,
) -> dict[str, Any]:
  """Bootstrap of `statistic(strategy) - statistic(benchmark)` over the same bars.

  Both series are resampled with the same block indices, so their correlation (a long-only
  strategy moves with buy-and-hold) is kept and the interval of the difference is not inflated.

  Args:
    strategy_returns: (bars,) per-period returns of the strategy.
    benchmark_returns: (bars,) per-period returns of the benchmark (e.g. buy-and-hold).
    statistic, num_resamples, block_length, method, confidence, seed, periods_per_year: as in
      `block_bootstrap_ci`.

  Returns:
    `estimate` (observed difference), `strategy` and `benchmark` (their statistics), `low`,
    `high`, `std_error`, `block_length` and `block_rule` (None: the longer of the two
    series' Politis-White lengths), `resamples` (B,) of the difference, and `p_value`:
    one-sided p-value of "strategy > benchmark", `(1 + #{d*_b <= 0}) / (1 + B)`: the share of
    resampled differences at or below 0 (never exactly 0), the p-value dual to the percentile
    interval (p < alpha about when the one-sided 1 - alpha bound lies above 0). NaN where
    the difference is undefined.
  """
  strategy = _as_series('strategy_returns', strategy_returns)
  benchmark = _as_series('benchmark_returns', benchmark_returns)
  data = _stack_paired(strategy, benchmark)
  statistic_fn, scale = _statistic_fn(statistic, periods_per_year)
  length, rule = _check_block_length(block_length, method, strategy, benchmark)
  _check_confidence(confidence)
  observed = np.asarray(jax.vmap(statistic_fn)(data), dtype=np.float64) * scale
  draws = _bootstrap_statistics(
      jax.random.key(seed), data, statistic=statistic_fn, num_resamples=num_resamples,
      block_length=length, method=method)
  draws = np.asarray(draws, dtype=np.float64) * scale
  return {**_paired_interval(observed[0], observed[1], draws[:, 0], draws[:, 1], confidence),
          'block_length': length, 'block_rule': rule}


def _stack_paired(strategy: np.ndarray, benchmark: np.ndarray) -> jax.Array:
  if strategy.shape != benchmark.shape:
    raise ValueError(f'strategy_returns and benchmark_returns must cover the same bars; got '
                     f'{strategy.shape[0]} and {benchmark.shape[0]} bars.')
  return jnp.asarray(np.stack([strategy, benchmark]))


# ---------------------------------------------------------------------------------------------
# Probabilistic and deflated Sharpe ratio (per-period units).


def probabilistic_sharpe_ratio(
    sharpe: float,
    num_observations: int,
    skewness: float = 0.0,
    kurtosis: float = 3.0,
    benchmark_sharpe: float = 0.0,
) -> float:
  """Probabilistic Sharpe ratio (Bailey & Lopez de Prado 2012): P(true SR > benchmark).

  `PSR = Phi((SR - SR*) * sqrt(n - 1) / sqrt(1 - g3 * SR + (g4 - 1) / 4 * SR^2))`.

  Args:
    sharpe: observed per-period (not annualised) Sharpe ratio SR.
    num_observations: n, the number of returns SR was estimated from.
    skewness: g3 of the returns.
    kurtosis: g4 of the returns, non-excess (3 for normal returns).
    benchmark_sharpe: SR*, per-period.

  Returns:
    A probability in [0, 1]; NaN if any input is NaN (e.g. the Sharpe ratio of a flat series).
  """
  if num_observations < 2:
    raise ValueError(f'num_observations must be at least 2; got {num_observations}.')
  if not all(map(math.isfinite, (sharpe, skewness, kurtosis, benchmark_sharpe))):
    return math.nan
  difference = sharpe - benchmark_sharpe
  spread = 1.0 - skewness * sharpe + (kurtosis - 1.0) / 4.0 * sharpe**2
  if spread <= 0:
    # Only two-point return distributions (g4 = 1 + g3^2) reach 0: the estimate has no spread.
    z = math.copysign(math.inf, difference) if difference else 0.0
  else:
    z = difference * math.sqrt(num_observations - 1) / math.sqrt(spread)
  return _NORMAL.cdf(z)


def expected_max_sharpe(num_trials: float, trial_sharpe_variance: float) -> float:
  """Expected maximum Sharpe ratio of `num_trials` independent zero-skill trials (SR0).

  `SR0 = sqrt(V) * ((1 - gamma) * Phi^-1(1 - 1/N) + gamma * Phi^-1(1 - 1/(N e)))` with gamma
  the Euler-Mascheroni constant (Bailey & Lopez de Prado 2014, from extreme value
  theory). One trial has no selection: SR0 = 0 (the formula itself diverges at N = 1).

  Args:
    num_trials: N >= 1, the number of independent configurations tried (may be an effective,
      non-integer number).
    trial_sharpe_variance: V, the variance of the trials' Sharpe ratios, in the units SR0 is
      wanted in (per-period for the deflated Sharpe ratio).
  """
  if num_trials < 1:
    raise ValueError(f'num_trials must be at least 1; got {num_trials}.')
  if not trial_sharpe_variance >= 0:
    raise ValueError(f'trial_sharpe_variance must be >= 0; got {trial_sharpe_variance}.')
  if num_trials == 1:
    return 0.0
  expected_max_normal = ((1 - EULER_GAMMA) * _NORMAL.inv_cdf(1 - 1 / num_trials)
                         + EULER_GAMMA * _NORMAL.inv_cdf(1 - 1 / (num_trials * math.e)))
  return math.sqrt(trial_sharpe_variance) * expected_max_normal


def trial_statistics(
    trial_sharpes: Sequence[float] | np.ndarray | None = None,
    num_trials: float | None = None,
    trial_sharpe_variance: float | None = None,
) -> tuple[float, float]:
  """(N, V) for the deflated Sharpe ratio from either the trials' Sharpe ratios or N and V.

  Args:
    trial_sharpes: Sharpe ratios of every configuration of a sweep (the selected one included).
      V is their sample variance (ddof=1) over the defined (finite) values: a configuration
      that never traded has no Sharpe ratio but still counts as a trial in N.
    num_trials: N; defaults to `len(trial_sharpes)`, else 1. Pass it with `trial_sharpes` to
      use an effective number of independent trials.
    trial_sharpe_variance: V when `trial_sharpes` is not given; needed when N > 1.
  """
  if trial_sharpes is not None:
    if trial_sharpe_variance is not None:
      raise ValueError('give trial_sharpes or trial_sharpe_variance, not both.')
    values = np.asarray(trial_sharpes, dtype=np.float64).ravel()
    defined = values[np.isfinite(values)]
    if defined.size < 2:
      raise ValueError(f'trial_sharpes needs at least 2 finite Sharpe ratios to estimate their '
                       f'variance; got {defined.size} of {values.size}.')
    return (float(values.size) if num_trials is None else float(num_trials),
            float(np.var(defined, ddof=1)))
  trials = 1.0 if num_trials is None else float(num_trials)
  if trials == 1:
    return 1.0, (0.0 if trial_sharpe_variance is None else float(trial_sharpe_variance))
  if trial_sharpe_variance is None:
    raise ValueError(f'num_trials={num_trials} > 1 needs trial_sharpes (the sweep\'s Sharpe '
                     'ratios) or trial_sharpe_variance to set the expected maximum Sharpe.')
  return trials, float(trial_sharpe_variance)


def deflated_sharpe_ratio(
    sharpe: float,
    num_observations: int,
    skewness: float = 0.0,
    kurtosis: float = 3.0,
    *,
    trial_sharpes: Sequence[float] | np.ndarray | None = None,
    num_trials: float | None = None,
    trial_sharpe_variance: float | None = None,
) -> float:
  """Deflated Sharpe ratio (Bailey & Lopez de Prado 2014): `PSR(SR0)`.

  The probability that the true Sharpe ratio exceeds the best one expected from N zero-skill
  trials, i.e. that the selected configuration is not a product of the search. All Sharpe
  ratios (observed, trials, V) are per-period; N and V as in `trial_statistics`.

  Args:
    sharpe: observed per-period Sharpe ratio of the selected configuration.
    num_observations: number of returns it was estimated from.
    skewness, kurtosis: of its returns (kurtosis non-excess).
    trial_sharpes, num_trials, trial_sharpe_variance: see `trial_statistics`.
  """
  trials, variance = trial_statistics(trial_sharpes, num_trials, trial_sharpe_variance)
  return probabilistic_sharpe_ratio(sharpe, num_observations, skewness, kurtosis,
                                    benchmark_sharpe=expected_max_sharpe(trials, variance))


# ---------------------------------------------------------------------------------------------
# Shuffled-signal null.

# Commission 0.1 % plus slippage 0.05 % of traded notional (SPEC section 6 defaults).
DEFAULT_COST_RATE = 0.0015


def positions_from_actions(actions: Any, allow_short: bool = False) -> np.ndarray:
  """Unit positions from actions (0 = SELL, 1 = HOLD, 2 = BUY), starting flat.

  BUY goes long 1, SELL goes flat (or short -1 with `allow_short`), HOLD keeps the position.
  Sizing by confidence is the backtester's business; for a significance null only the timing
  of the signal matters.

  Args:
    actions: (bars,) ints in {0, 1, 2}.

  Returns:
    (bars,) float64 positions in {0, 1} (or {-1, 0, 1}).
  """
  actions = np.asarray(actions)
  if actions.ndim != 1 or not np.isin(actions, (0, 1, 2)).all():
    raise ValueError('actions must be a 1-D array of 0 (SELL), 1 (HOLD) and 2 (BUY).')
  target = np.where(actions == 2, 1.0, np.where(actions == 0, -1.0 if allow_short else 0.0, 0.0))
  decided = actions != 1
  last_decision = np.maximum.accumulate(np.where(decided, np.arange(actions.size), -1))
  return np.where(last_decision >= 0, target[np.maximum(last_decision, 0)], 0.0)


def _position_returns(positions: jax.Array, market_returns: jax.Array,
                      cost_rate: float | jax.Array) -> jax.Array:
  """`position_returns` on JAX arrays: (bars,) positions and returns -> (bars,) returns.

  cost_rate: () the same both ways, or (2,) (buying, selling) per unit of traded notional.
  """
  previous = jnp.concatenate([jnp.zeros_like(positions[:1]), positions[:-1]])
  change = positions - previous
  rate = jnp.asarray(cost_rate)
  if rate.ndim:  # a raised position was bought, a lowered one sold (shorting sells)
    rate = jnp.where(change > 0, rate[0], rate[1])
  return previous * market_returns - rate * jnp.abs(change)


def position_returns(positions: Any, market_returns: Any,
                     cost_rate: float | tuple[float, float] = DEFAULT_COST_RATE) -> np.ndarray:
  """Per-bar returns of holding `positions`, a simple cost model independent of the backtester.

  `q_t = p_{t-1} * r_t - cost_rate * |p_t - p_{t-1}|` with `p_{-1} = 0`: the position decided
  at the close of bar t earns the next bar's return and pays costs on the traded notional at t.

  Args:
    positions: (bars,) exposure as a fraction of equity (1 = fully long, -1 = fully short).
    market_returns: (bars,) `close_t / close_{t-1} - 1`; bar 0 is multiplied by `p_{-1} = 0`
      but must still be finite.
    cost_rate: cost per unit of traded notional (commission plus slippage), or a
      (buy, sell) pair when selling costs differ.

  Returns:
    (bars,) strategy returns (computed in JAX's default float precision).
  """
  positions, market_returns = _as_positions(positions, market_returns)
  return np.asarray(_position_returns(jnp.asarray(positions), jnp.asarray(market_returns),
                                      cost_rate), dtype=np.float64)


def _as_positions(positions: Any, market_returns: Any) -> tuple[np.ndarray, np.ndarray]:
  positions = _as_series('positions', positions)
  market_returns = _as_series('market_returns', market_returns)
  if positions.shape != market_returns.shape:
    raise ValueError(f'positions and market_returns must cover the same bars; got '
                     f'{positions.shape[0]} and {market_returns.shape[0]} bars.')
  return positions, market_returns


def _block_permutation(key: jax.Array, num_bars: int, block_length: int) -> jax.Array:
  """A permutation of range(num_bars) that moves whole blocks of consecutive bars."""
  offset_key, order_key = jax.random.split(key)
  num_blocks = -(-num_bars // block_length)
  lengths = jnp.minimum(block_length, num_bars - block_length * jnp.arange(num_blocks))
  order = jax.random.permutation(order_key, num_blocks)
  out_starts = jnp.cumsum(lengths[order]) - lengths[order]
  # Output block of each bar: count of block starts at or before it (cheaper than searchsorted).
  block = jnp.cumsum(jnp.zeros(num_bars, jnp.int32).at[out_starts].set(1)) - 1
  bars = jnp.arange(num_bars)
  source = block_length * order[block] + bars - out_starts[block]
  # A random rotation moves the block boundaries, so that shuffles differ in more than order.
  # With one block the rotation is the whole shuffle: never draw the identity.
  low = 1 if num_blocks == 1 and num_bars > 1 else 0
  return (source + jax.random.randint(offset_key, (), low, num_bars)) % num_bars


@functools.partial(jax.jit, static_argnames=('num_bars', 'num_permutations', 'block_length'))
def block_permutations(key: jax.Array, *, num_bars: int, num_permutations: int,
                       block_length: int) -> jax.Array:
  """The block permutations `shuffled_signal_test` applies for `key`: (K, num_bars) int32.

  Each is a bijection of range(num_bars): the series is rotated by a random offset, cut into
  blocks of `block_length` bars (the last may be shorter) and the blocks are put in random
  order, so the shuffled signal keeps its values and, within blocks, its autocorrelation.
  """
  keys = jax.random.split(key, num_permutations)
  return jax.vmap(lambda k: _block_permutation(k, num_bars, block_length))(keys)


@functools.partial(jax.jit, static_argnames=('num_shuffles', 'block_length'))
def _shuffled_sharpes(key: jax.Array, positions: jax.Array, market_returns: jax.Array,
                      cost_rate: jax.Array, *, num_shuffles: int,
                      block_length: int) -> jax.Array:
  """Per-period Sharpe ratios of the unshuffled positions, then of K block shuffles: (1 + K,).

  The observed value goes through the same compiled code as the shuffles, so a shuffle that
  reproduces the signal (e.g. of a constant position) ties with it exactly instead of by
  rounding.
  """
  num_bars = positions.shape[0]
  bars = jnp.arange(num_bars)

  def one_shuffle(args):
    shuffle_key, is_observed = args
    order = jnp.where(is_observed, bars, _block_permutation(shuffle_key, num_bars, block_length))
    return _per_period_sharpe(_position_returns(positions[order], market_returns, cost_rate))

  keys = jax.random.split(key, num_shuffles)
  keys = jnp.concatenate([keys[:1], keys])  # the first key is unused (observed signal)
  is_observed = jnp.arange(num_shuffles + 1) == 0
  return jax.lax.map(one_shuffle, (keys, is_observed),
                     batch_size=_batch_size(num_bars, num_shuffles + 1))


def mean_holding_length(positions: np.ndarray) -> int:
  """Mean length in bars of runs of constant position, at least 1."""
  num_runs = 1 + np.count_nonzero(np.diff(positions))
  return max(1, round(positions.shape[0] / num_runs))


def shuffled_signal_test(
    positions: Any,
    market_returns: Any,
    *,
    cost_rate: float | tuple[float, float] = DEFAULT_COST_RATE,
    num_shuffles: int = 1000,
    block_length: int | None = None,
    seed: int = 0,
    periods_per_year: float = PERIODS_PER_YEAR,
) -> dict[str, Any]:
  """Is the signal's timing better than chance? Sharpe ratio against block-shuffled signals.

  The positions are block-permuted K times (`block_permutations`) against the fixed market
  returns; each shuffle keeps the signal's exposure and, within blocks, its holding periods,
  and only breaks its alignment with the market. Returns follow `position_returns`.

  Args:
    positions: (bars,) exposure decided at each bar's close, e.g. `positions_from_actions`.
    market_returns: (bars,) `close_t / close_{t-1} - 1` of the traded asset.
    cost_rate: cost per unit of traded notional, or a (buy, sell) pair.
    num_shuffles: K.
    block_length: bars per shuffled block; None = the whole series, so each shuffle is a
      random rotation in time: it keeps every holding period and the number of position
      changes (but the one at the wrap), and only breaks the alignment with the market.
      Shorter blocks add position changes at their edges, hence costs, to the null and so
      flatter the signal (with blocks of the mean holding length, a model whose Sharpe was 0
      showed p = 0.001 against a null averaging -2.6).
    seed: shuffles are drawn from `jax.random.key(seed)`.
    periods_per_year: annualisation of the Sharpe ratios.

  Returns:
    `observed_sharpe` (annualised, of the unshuffled positions under this cost model),
    `null_mean`, `null_std`, `p_value` (`(1 + #{null >= observed}) / (1 + K)`, one-sided),
    `block_length`, and `null_sharpes`: (K,) annualised numpy array (NaN for a shuffle whose
    returns have zero variance, left out of the summary values).
  """
  positions, market_returns = _as_positions(positions, market_returns)
  num_bars = positions.shape[0]
  length = num_bars if block_length is None else int(block_length)
  if not 1 <= length <= num_bars:
    raise ValueError(f'block_length must be in [1, {num_bars}]; got {block_length}.')
  positions, market_returns = jnp.asarray(positions), jnp.asarray(market_returns)
  sharpes = _shuffled_sharpes(
      jax.random.key(seed), positions, market_returns, jnp.asarray(cost_rate, positions.dtype),
      num_shuffles=num_shuffles, block_length=length)
  sharpes = np.asarray(sharpes, dtype=np.float64) * math.sqrt(periods_per_year)
  observed, null = float(sharpes[0]), sharpes[1:]
  defined = null[np.isfinite(null)]
  p_value = math.nan
  if math.isfinite(observed) and defined.size:
    p_value = float((1 + np.count_nonzero(defined >= observed)) / (1 + defined.size))
  return {
      'observed_sharpe': observed,
      'null_mean': float(np.mean(defined)) if defined.size else math.nan,
      'null_std': float(np.std(defined, ddof=1)) if defined.size > 1 else math.nan,
      'p_value': p_value,
      'block_length': length,
      'null_sharpes': null,
  }


# ---------------------------------------------------------------------------------------------
# Report.


def _sharpe_and_total_return(returns: jax.Array) -> jax.Array:
  """(n,) -> (2,): per-period Sharpe ratio and total return, for one pass of resampling."""
  return jnp.stack([_per_period_sharpe(returns), _total_return(returns)])


def _json_value(value: Any) -> Any:
  """JSON-ready copy: numpy arrays dropped, non-finite floats None (`allow_nan=False` works)."""
  if isinstance(value, dict):
    return {k: _json_value(v) for k, v in value.items() if not isinstance(v, np.ndarray)}
  if isinstance(value, float):
    return value if math.isfinite(value) else None
  return value


def significance_report(
    strategy_returns: Any,
    benchmark_returns: Any,
    positions: Any = None,
    market_returns: Any = None,
    *,
    num_resamples: int = 2000,
    num_shuffles: int = 1000,
    block_length: float | None = None,
    method: str = 'stationary',
    confidence: float = 0.95,
    cost_rate: float | tuple[float, float] = DEFAULT_COST_RATE,
    seed: int = 0,
    periods_per_year: float = PERIODS_PER_YEAR,
) -> dict[str, Any]:
  """Every significance figure of one backtest, as a JSON-ready nested dict.

  The bootstrap figures equal those of `block_bootstrap_ci` and `paired_block_bootstrap` with
  the same arguments; they are computed here from one shared set of resamples.

  Args:
    strategy_returns: (bars,) per-period returns of the strategy's equity.
    benchmark_returns: (bars,) per-period returns of buy-and-hold of the same asset.
    positions: (bars,) exposure per bar for the shuffled-signal null; None skips it.
    market_returns: (bars,) asset returns for the null; None = `benchmark_returns`
      (buy-and-hold earns the asset's returns).
    num_resamples, block_length, method, confidence: of the block bootstraps (None: one
      block length for both series from the data, `politis_white_block_length`).
    num_shuffles, cost_rate: of the shuffled-signal null (cost_rate: one rate, or a (buy,
      sell) pair of commission plus slippage per unit of traded notional).
    seed: seeds every resampling; the same seed gives the same report.
    periods_per_year: bars per year (default: hourly bars).

  Returns:
    Nested dict of floats (None where undefined, e.g. the Sharpe ratio of a strategy that never
    trades): `sharpe` and `total_return` with bootstrap `estimate/low/high/std_error`;
    `moments` (per-period Sharpe, skewness, kurtosis); `test_psr`, the tested Sharpe ratio's
    PSR(0) with a HAC error and its minimum detectable Sharpe ratio
    (`sharpe_inference.probabilistic_sharpe_hac`; a test result is not deflated by a search
    that ran elsewhere: see `selection.selection_deflated_sharpe`); `benchmark`
    with `sharpe_difference` and `total_return_difference` (strategy minus buy-and-hold:
    `strategy`, `benchmark`, interval and one-sided `p_value` of "strategy better"); and
    `shuffled_signal` (see `shuffled_signal_test`) or None.
  """
  strategy = _as_series('strategy_returns', strategy_returns)
  benchmark = _as_series('benchmark_returns', benchmark_returns)
  data = _stack_paired(strategy, benchmark)
  length, rule = _check_block_length(block_length, method, strategy, benchmark)
  _check_confidence(confidence)
  scale = np.array([math.sqrt(periods_per_year), 1.0])  # Sharpe annualised; total return as is
  observed = np.asarray(jax.vmap(_sharpe_and_total_return)(data), dtype=np.float64) * scale
  draws = _bootstrap_statistics(
      jax.random.key(seed), data, statistic=_sharpe_and_total_return,
      num_resamples=num_resamples, block_length=length, method=method)
  draws = np.asarray(draws, dtype=np.float64) * scale  # (B, series, statistic)

  moments = return_moments(strategy)

  shuffled = None
  if positions is not None:
    shuffled = shuffled_signal_test(
        positions, benchmark if market_returns is None else market_returns,
        cost_rate=cost_rate, num_shuffles=num_shuffles, seed=seed,
        periods_per_year=periods_per_year)

  return _json_value({
      'num_observations': moments['num_observations'],
      'periods_per_year': float(periods_per_year),
      'confidence': float(confidence),
      'bootstrap': {'method': method, 'num_resamples': num_resamples, 'block_length': length,
                    'block_rule': rule},
      'sharpe': _interval(observed[0, 0], draws[:, 0, 0], confidence),
      'total_return': _interval(observed[0, 1], draws[:, 0, 1], confidence),
      'moments': {k: moments[k] for k in ('sharpe', 'skewness', 'kurtosis')},
      'test_psr': sharpe_inference.probabilistic_sharpe_hac(
          strategy, periods_per_year=periods_per_year),
      'benchmark': {
          'sharpe_difference': _paired_interval(
              observed[0, 0], observed[1, 0], draws[:, 0, 0], draws[:, 1, 0], confidence),
          'total_return_difference': _paired_interval(
              observed[0, 1], observed[1, 1], draws[:, 0, 1], draws[:, 1, 1], confidence),
      },
      'shuffled_signal': shuffled,
  })
