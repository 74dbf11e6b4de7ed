"""Size and power of the test Sharpe, measured (SPEC 11): a planted signal on real bars.

A draw plants a score of known IC against the real next-bar returns of real bars,

  s_t = ic * z(r_{t+1}) + sqrt(1 - ic^2) * e_t,   e_t ~ N(0, 1) i.i.d.,

(`z`: the returns standardised over the bars), so `corr(s, r_next)` is `ic` in expectation.
The score becomes probabilities `softmax([-k s, 0, k s])` and goes through the benchmark's
decision path: calibration on the validation bars before the test window against the real
labels (`baselines.calibrate_and_decide`), the seed policy (argmax + threshold,
confidence-sized up to the position cap), the backtest with the configured costs, and the
test PSR(0) with a HAC error (`sharpe_inference.probabilistic_sharpe_hac`). The share of draws
whose one-sided p-value is below `alpha` is the test's size at IC 0 and its power above.

Which market a draw trades (`MARKETS`) decides which size is measured:

* `'placebo'` (the test's size): each draw picks a random window of validation + test bars,
  uniformly over every such window of the given assets' bars (BTC and ETH 2017-2026), and
  trades an era-matched placebo of it (`synthetic.make_era_market`): the window's
  volatility, its clustering and seasonality, but directions nothing can read and no
  trend. The placebo removes the mean log return; the simple return's mean left by it
  (`sigma^2 / 2` a bar, a buy-and-hold Sharpe near 0.45 a year) is removed as well, so a
  bar's expected return is 0. So every draw has its own price path, the null (true Sharpe 0
  at IC 0, whatever the positions) holds, and the IC-0 rejection rate is the unconditional
  size the nominal level promises.
* `'windows'`: the random real windows themselves. Their paths are real, but so is their
  drift (BTC and ETH rose about tenfold over 2017-2024), and a long-only strategy at IC 0
  holds the market part of the time: its rejections at IC 0 count that drift as well as
  false positives, so this is not a size under the null.
* `'fixed'`: every draw trades the same window (e.g. BTC 2025) and only the signal's noise
  differs. The IC-0 rate is then the size conditional on that one path: the PSR's error also
  covers the path's own randomness (the spread of the draws' Sharpe ratios is reported
  beside the mean error), so the conditional rate is lower than the nominal level when the
  year's drift is near 0, and the expected Sharpe at IC 0 follows the year's drift.

The binomial band says which rates the nominal level allows.
"""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Callable, Sequence
from typing import Any

import ml_collections
import numpy as np
import pandas as pd

from himari_jax import constants
from himari_jax.backtest import engine as backtest_lib
from himari_jax.backtest import policy as policy_lib
from himari_jax.data import input_pipeline, synthetic
from himari_jax.data import labels as labels_lib
from himari_jax.research import baselines as baselines_lib
from himari_jax.stats import metrics as metrics_lib
from himari_jax.stats import sharpe_inference

_NORMAL = statistics.NormalDist()
# How a draw picks its market (module docstring).
MARKETS = ('placebo', 'windows', 'fixed')
# A draw's test window and validation bars: (val, test) OHLCV frames.
Market = tuple[pd.DataFrame, pd.DataFrame]


def planted_score(next_returns: np.ndarray, ic: float, rng: np.random.Generator) -> np.ndarray:
  """A score whose correlation with `next_returns` is `ic` in expectation.

  Args:
    next_returns: (N,) the return of the bar after each bar, `close[t+1] / close[t] - 1`;
      NaN (the last bar) gets pure noise.
    ic: the planted correlation, in [-1, 1].
    rng: the draw's random generator.

  Returns:
    (N,) float64 score, unit variance.
  """
  if not -1.0 <= ic <= 1.0:
    raise ValueError(f'ic must be in [-1, 1], got {ic}')
  r = np.asarray(next_returns, np.float64)
  known = np.isfinite(r)
  z = np.zeros(r.shape)
  z[known] = (r[known] - r[known].mean()) / r[known].std()
  return ic * z + math.sqrt(1.0 - ic * ic) * rng.standard_normal(r.shape)


def score_probs(score: np.ndarray, scale: float = 1.0) -> np.ndarray:
  """`softmax([-scale s, 0, scale s])` per bar: (N,) -> (N, 3) (sell, hold, buy)."""
  logits = np.stack([-scale * score, np.zeros_like(score), scale * score], axis=-1)
  logits -= logits.max(axis=-1, keepdims=True)
  probs = np.exp(logits)
  return probs / probs.sum(axis=-1, keepdims=True)


def binomial_band(level: float, num_draws: int, coverage: float = 0.95) -> tuple[float, float]:
  """The central `coverage` range of the rejection rate of a test of size `level` over
  `num_draws` independent draws: the binomial's `(1 - coverage) / 2` and `(1 + coverage) / 2`
  quantiles divided by `num_draws` (exact, as `scipy.stats.binom.ppf`)."""
  if not 0 < level < 1 or num_draws < 1:
    raise ValueError(f'level must be in (0, 1) and num_draws >= 1; got {level}, {num_draws}')
  log_pmf = [math.lgamma(num_draws + 1) - math.lgamma(k + 1) - math.lgamma(num_draws - k + 1)
             + k * math.log(level) + (num_draws - k) * math.log1p(-level)
             for k in range(num_draws + 1)]
  cdf = np.cumsum(np.exp(log_pmf))
  tail = (1.0 - coverage) / 2.0
  low = int(np.searchsorted(cdf, tail - 1e-12))
  high = int(np.searchsorted(cdf, 1.0 - tail - 1e-12))
  return low / num_draws, high / num_draws


def _next_returns(close: np.ndarray) -> np.ndarray:
  out = np.full(close.shape, np.nan)
  out[:-1] = close[1:] / close[:-1] - 1.0
  return out


def planted_draw(val: pd.DataFrame, test: pd.DataFrame, val_labels: np.ndarray,
              val_mask: np.ndarray, ic: float, rng: np.random.Generator,
              backtest: ml_collections.ConfigDict, costs: dict[str, float]) -> dict[str, float]:
  """One planted draw through calibration, the seed policy, the backtest and the test PSR.

  Args:
    val, test: the validation and test bars (OHLCV frames, validation just before test).
    val_labels, val_mask: (V,) the validation bars' labels and which are known.
    ic: the planted IC; rng: the draw's generator.
    backtest: a config shaped like configs/backtest.py (calibration, threshold, cap, fill).
    costs: {'commission', 'slippage'} overriding the config's.

  Returns:
    {'ic' (realised on the test bars), 'sharpe' and 'se' (its HAC error, annualised), 'psr',
    'p_value', 'num_trades'}.
  """
  val_probs = score_probs(planted_score(_next_returns(val['close'].to_numpy()), ic, rng))
  test_next = _next_returns(test['close'].to_numpy())
  score = planted_score(test_next, ic, rng)
  decided = baselines_lib.calibrate_and_decide(
      val_probs, val_labels, val_mask, score_probs(score), mode=backtest.calibration.mode,
      bias=backtest.calibration.bias, temperature=backtest.calibration.temperature,
      threshold=backtest.confidence_threshold, name='planted')
  params = backtest_lib.make_params(**{**backtest_lib.settings_from_config(backtest), **costs})
  policy = policy_lib.seed_policy(float(backtest.confidence_threshold),
                                  max_position_pct=float(backtest.max_position_pct),
                                  allow_short=bool(backtest.allow_short))
  result = policy_lib.run_policy(test, decided.probs[0], policy, params,
                                 periods_per_year=backtest.periods_per_year)
  returns = np.asarray(metrics_lib.period_returns(np.asarray(result.equity, np.float64),
                                                  float(backtest.initial_capital)))
  known = np.isfinite(test_next)
  realised = float(np.corrcoef(score[known], test_next[known])[0, 1])
  trades = int(np.count_nonzero(np.asarray(result.fill_qty)))
  if not np.std(returns) > 0:
    return {'ic': realised, 'sharpe': math.nan, 'se': math.nan, 'psr': math.nan,
            'p_value': 1.0, 'num_trades': trades}
  psr = sharpe_inference.probabilistic_sharpe_hac(returns,
                                                  periods_per_year=backtest.periods_per_year)
  return {'ic': realised, 'sharpe': psr['sharpe'], 'se': psr['se'], 'psr': psr['psr'],
          'p_value': psr['p_value'], 'num_trades': trades}


def fixed_market(bars: pd.DataFrame, test_start: str, test_end: str,
                 val_bars: int = 2160) -> Market:
  """The `'fixed'` market: the test window `test_start` .. `test_end` (end excluded) of `bars`
  and the `val_bars` bars before it, as (val, test) frames."""
  start = bars.index.searchsorted(pd.Timestamp(test_start, tz=bars.index.tz))
  stop = bars.index.searchsorted(pd.Timestamp(test_end, tz=bars.index.tz))
  if start < val_bars or stop - start < 100:
    raise ValueError(f'{test_start} .. {test_end}: need {val_bars} bars before the test '
                     f'window and 100 in it; the bars cover {bars.index[0]} .. {bars.index[-1]}')
  return bars.iloc[start - val_bars:start], bars.iloc[start:stop]


def random_market(pools: Sequence[pd.DataFrame], rng: np.random.Generator, *,
                  test_bars: int = constants.BARS_PER_YEAR, val_bars: int = 2160,
                  placebo: bool = True) -> Market:
  """A `'windows'` or `'placebo'` market: a window of `val_bars + test_bars` consecutive bars,
  uniform over every such window of `pools` (one gap-filled series per asset), or with
  `placebo` an era-matched, drift-free placebo of it (`synthetic.make_era_market`).

  Returns:
    (val, test) frames of `val_bars` and `test_bars` bars.
  """
  size = val_bars + test_bars
  starts = np.array([max(len(p) - size + 1, 0) for p in pools])
  if starts.sum() == 0:
    raise ValueError(f'no series has {size} bars (validation + test)')
  which = int(rng.choice(len(pools), p=starts / starts.sum()))
  first = int(rng.integers(starts[which]))
  window = pools[which].iloc[first:first + size]
  if placebo:
    window = _without_arithmetic_drift(
        synthetic.make_era_market(window, seed=int(rng.integers(2**31)), remove_drift=True),
        window)
  return window.iloc[:val_bars], window.iloc[val_bars:]


def _without_arithmetic_drift(market: pd.DataFrame, era: pd.DataFrame) -> pd.DataFrame:
  # The placebo's log returns are the era's, demeaned, with random signs: mean 0, but the
  # simple return's mean is E[cosh(x)] - 1 > 0 (sigma^2 / 2 a bar, a Sharpe near 0.45 a year
  # held long). Every price of bar t times exp(-c t) makes that expectation 0; candles keep
  # their shape because all four prices of a bar scale alike.
  log_returns = np.diff(np.log(era['close'].to_numpy(np.float64)))
  c = math.log(np.mean(np.cosh(log_returns - log_returns.mean())))
  scale = np.exp(-c * np.arange(len(market)))
  out = market.copy()
  for column in ('open', 'high', 'low', 'close'):
    out[column] = market[column].to_numpy(np.float64) * scale
  return out


def measure_power(draw_market: Callable[[np.random.Generator], Market], *,
                  ics: Sequence[float], num_draws: int,
                  costs: dict[str, dict[str, float]], backtest: ml_collections.ConfigDict,
                  labels: ml_collections.ConfigDict, alpha: float = 0.05, seed: int = 0,
                  log: Callable[[str], None] = print) -> dict[str, Any]:
  """Rejection rates of the one-sided test PSR at `alpha` for planted signals.

  Args:
    draw_market: a draw's generator -> its (val, test) bars, e.g. `random_market` or
      `lambda _: fixed_market(...)`.
    ics: planted ICs; num_draws: draws per (IC, costs).
    costs: {name: {'commission', 'slippage'}}, e.g. seed costs and zero.
    backtest: configs/backtest.py-shaped settings (calibration, policy cap, fill).
    labels: the label config the calibration fits the label rates of.
    alpha: the test's nominal level; seed: of the first draw. Draw d trades one market in
      every (IC, costs) cell and reuses its signal noise, so the cells differ only by IC and
      costs.

  Returns:
    {'rows': [{'ic', 'costs', 'draws', 'rejections', 'rate', 'band' (for ic 0), 'mean_sharpe',
    'sharpe_spread' (std over draws), 'mean_se' (the test's HAC error), 'mean_realised_ic',
    'mean_trades'}], 'test': [[first, last bar] per draw], 'val_bars', 'alpha', 'seconds'}.
  """
  if num_draws < 1:
    raise ValueError(f'num_draws must be >= 1, got {num_draws}')
  tick = time.time()
  cells = [(name, float(ic)) for name in costs for ic in ics]
  draws: dict[tuple[str, float], list[dict[str, float]]] = {cell: [] for cell in cells}
  windows = []
  for d in range(num_draws):
    val, test = draw_market(np.random.default_rng([seed, d, 1]))
    windows.append([str(test.index[0]), str(test.index[-1])])
    # Labels of the validation bars read up to h bars past them, never into the test window.
    val_labels, val_valid = labels_lib.make_labels(val, labels.kind,
                                                   **input_pipeline.label_params(labels))
    for name, ic in cells:
      draws[(name, ic)].append(planted_draw(val, test, val_labels, val_valid, ic,
                                            np.random.default_rng([seed, d]), backtest,
                                            costs[name]))
    if (d + 1) % max(num_draws // 10, 1) == 0:
      log(f'{d + 1}/{num_draws} draws ({time.time() - tick:.0f} s)')
  rows = []
  for name, ic in cells:
    cell = draws[(name, ic)]
    rejections = sum(d['p_value'] < alpha for d in cell)
    rows.append({'ic': ic, 'costs': name, 'draws': num_draws, 'rejections': rejections,
                 'rate': rejections / num_draws,
                 'band': binomial_band(alpha, num_draws) if ic == 0 else None,
                 'mean_sharpe': float(np.nanmean([d['sharpe'] for d in cell])),
                 'sharpe_spread': float(np.nanstd([d['sharpe'] for d in cell])),
                 'mean_se': float(np.nanmean([d['se'] for d in cell])),
                 'mean_realised_ic': float(np.mean([d['ic'] for d in cell])),
                 'mean_trades': float(np.mean([d['num_trades'] for d in cell]))})
  return {'rows': rows, 'test': windows, 'val_bars': len(val), 'alpha': alpha,
          'seconds': time.time() - tick}


def power_table(summary: dict[str, Any]) -> str:
  """The rejection rates as a Markdown table, the IC-0 rows with their binomial band."""
  lines = [f'| planted IC | costs | draws | significant at {summary["alpha"]:.0%} | rate '
           '(95% band at IC 0) | mean test Sharpe | its std over draws | mean HAC s.e. | '
           'mean realised IC | mean fills |',
           '|---:|---|---:|---:|---|---:|---:|---:|---:|---:|']
  for r in summary['rows']:
    band = f' ({r["band"][0]:.3f} .. {r["band"][1]:.3f})' if r['band'] else ''
    lines.append(f'| {r["ic"]:.2f} | {r["costs"]} | {r["draws"]} | {r["rejections"]} | '
                 f'{r["rate"]:.3f}{band} | {r["mean_sharpe"]:+.2f} | '
                 f'{r["sharpe_spread"]:.2f} | {r["mean_se"]:.2f} | '
                 f'{r["mean_realised_ic"]:+.3f} | {r["mean_trades"]:.0f} |')
  return '\n'.join(lines)
