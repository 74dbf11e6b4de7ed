"""The universe benchmark's report: its table, its answers stated as tests, its plots.

  write_universe_report(config, workdir, models, folds, symbols, times)

reads what `universe_benchmark` wrote (each trial's `series.npz`, each fold's benchmark
returns; `folds` are its `UniverseFold`s) and writes into the workdir:

* `universe_benchmark.md`: per model, the rank IC over every test bar (Newey-West t, Holm
  over the ranking models), the long-short portfolio's net Sharpe with its block-bootstrap
  interval and its placebo p, the timing portfolio's net Sharpe and the mean of the coins'
  own net Sharpe ratios with its interval; then "Answers, stated as tests" (below); then the
  plots.
* `universe_tests.json`: every test's numbers.
* `long_short_equity.png` (cumulative net return of each long-short portfolio beside the
  equal-weight buy-and-hold) and `rank_ic_over_time.png` (rolling mean rank IC), with
  matplotlib (the `plot` extra).

A model's seeds are combined before any test: its per-bar rank IC is the seeds' mean, and its
portfolios are the seeds' portfolios with equal capital each (the per-bar mean of their net
returns). The folds' test windows follow one another, so each series is joined in time.

The answers (`config.tests`), each with its minimum detectable effect at 80 % power and the
growth of the data (in bars of the same coins) that would detect the observed effect; the
tests of one answer are a family, Holm-adjusted together, and "decided" means the adjusted p
is below `tests.level`:

1. Model A minus model B (`tests.compare`, default FLAG-TRADER minus LightGBM): the per-bar
   rank IC difference (Newey-West t) and the mean over coins of the per-coin net Sharpe
   difference of the timing sleeves (a time-block bootstrap that resamples every coin on the
   same bars, `panel_inference.sharpe_panel_test`).
2. The seed's claim, H0 "the seed's decision rule earns net Sharpe >= `tests.seed_claim` per
   coin" (the mean over coins of each coin's timing net Sharpe), one-sided, per model.
3. Long-short: does a net Sharpe interval exclude 0, and is the Sharpe above the placebo
   null (the same portfolio on the model's scores rotated in time, `tests.null_rotations`
   shifts per fold, the same for every model; p = (1 + #null >= real) / (1 + R), Holm over
   the models).
4. Market context: each model with and without it ('m' and 'm@<feature set>'), on 1.
"""

from __future__ import annotations

import json
import math
import os
import warnings
from collections.abc import Callable, Sequence
from typing import Any

import ml_collections
import numpy as np
import pandas as pd

from himari_jax import config as config_lib
from himari_jax import extras, json_types
from himari_jax.stats import (
  cross_section,
  panel_inference,
  selection,
  sharpe_inference,
  significance,
)

# The workdir's layout, written by universe_benchmark and read here.
REPORT = 'universe_benchmark.md'
TESTS = 'universe_tests.json'
SERIES = 'series.npz'  # per trial: its per-bar series
BENCHMARKS = 'benchmarks'  # per fold: the benchmark portfolios' net returns
RULES = ('reversal', 'momentum')
# Models whose scores are the same for every coin: no cross-section to rank.
CONSTANT_SCORES = ('label_prior', 'buy_and_hold')


def split_model(name: str) -> tuple[str, str | None]:
  """('logistic', 'himari') of 'logistic@himari'; (name, None) without a feature set."""
  base, _, feature_set = name.partition('@')
  return base, feature_set or None


def num_seeds(config: ml_collections.ConfigDict, model: str) -> int:
  """Seeds a model runs with: 1 for the rules and constant models, else `num_seeds`."""
  base = split_model(model)[0]
  return 1 if base in RULES or base in CONSTANT_SCORES else int(config.num_seeds)


def trial_dir(workdir: str, model: str, fold: int, seed: int) -> str:
  """Where trial (model, fold, seed) writes its series (and a FLAG-TRADER its run)."""
  return os.path.join(workdir, 'trials', model, f'fold_{fold:03d}', f'seed_{seed}')


def _number(value: Any, spec: str) -> str:
  return 'n/a' if value is None or not np.isfinite(value) else format(value, spec)


def load_model_series(config: ml_collections.ConfigDict, workdir: str, model: str,
                      folds: Sequence[Any], symbols: Sequence[str]) -> dict[str, Any]:
  """A model's seeds combined, its folds joined in time: 'rank_ic', 'quantile_spread',
  'long_short',
  'timing' (bars,), 'coins' (bars, len(symbols)) per-coin timing net returns (NaN where a
  coin is not traded), 'null' (R, bars) placebo long-short returns (R = 0 without), and
  'long_short_seeds' (seeds, bars)."""
  column = {s: i for i, s in enumerate(symbols)}
  seeds = []
  for seed in range(num_seeds(config, model)):
    parts = [dict(np.load(os.path.join(trial_dir(workdir, model, f.index, seed), SERIES)))
             for f in folds]
    coins = []
    for f, part in zip(folds, parts, strict=True):
      panel = np.full((len(part['rank_ic']), len(symbols)), np.nan)
      panel[:, [column[s] for s in f.symbols]] = part['coin_returns']
      coins.append(panel)
    rotations = min(p['long_short_null'].shape[0] for p in parts)

    def nan(part: dict[str, np.ndarray]) -> np.ndarray:
      return np.full(len(part['rank_ic']), np.nan)

    seeds.append({
        'rank_ic': np.concatenate([p['rank_ic'] for p in parts]),
        'quantile_spread': np.concatenate([p['quantile_spread'] for p in parts]),
        'long_short': np.concatenate([p['long_short_returns'] for p in parts]),
        # A workdir written before these books existed has none: NaN.
        'long_short_free': np.concatenate([p.get('long_short_free_returns', nan(p))
                                           for p in parts]),
        'top_k': np.concatenate([p.get('top_k_returns', nan(p)) for p in parts]),
        'timing': np.concatenate([p['timing_returns'] for p in parts]),
        'coins': np.concatenate(coins),
        'null': np.concatenate([p['long_short_null'][:rotations] for p in parts], axis=1)})

  def combine(key: str) -> np.ndarray:
    stack = np.stack([s[key] for s in seeds])
    with warnings.catch_warnings():
      warnings.simplefilter('ignore', RuntimeWarning)  # a bar without any IC: NaN
      return (np.nanmean(stack, axis=0) if key in ('rank_ic', 'quantile_spread')
              else stack.mean(axis=0))

  out = {k: combine(k) for k in ('rank_ic', 'quantile_spread', 'long_short',
                                 'long_short_free', 'top_k', 'timing', 'coins', 'null')}
  out['long_short_seeds'] = np.stack([s['long_short'] for s in seeds])
  return out


def _finite(x: np.ndarray) -> np.ndarray:
  return x[np.isfinite(x)]


def long_short_test(series: dict[str, Any], config: ml_collections.ConfigDict
                    ) -> dict[str, Any] | None:
  """The long-short portfolio's net Sharpe: block-bootstrap interval (Politis-White block),
  HAC PSR(0) p and minimum detectable Sharpe, and the placebo null's p. None for a model
  without a cross-section (a constant score)."""
  returns = series['long_short']
  if not np.isfinite(returns).any():
    return None
  periods = float(config.backtest.periods_per_year)
  returns = np.nan_to_num(returns)
  ci = significance.block_bootstrap_ci(returns, 'sharpe', periods_per_year=periods,
                                       num_resamples=int(config.tests.num_resamples))
  psr = sharpe_inference.probabilistic_sharpe_hac(returns, periods_per_year=periods)
  null = np.array([significance.sharpe_ratio(np.nan_to_num(r), periods)
                   for r in series['null']])
  null = _finite(null)
  return {'sharpe': ci['estimate'], 'low': ci['low'], 'high': ci['high'],
          'block_length': ci['block_length'], 'excludes_zero': bool(ci['low'] > 0 or
                                                                   ci['high'] < 0),
          'p_hac': psr['p_value'], 'se_hac': psr['se'],
          'min_detectable': psr['min_detectable_sharpe'],
          'placebo_p': selection.null_p_value(null, ci['estimate']) if null.size else math.nan,
          'placebo_mean': float(null.mean()) if null.size else math.nan,
          'placebo_q95': float(np.quantile(null, 0.95)) if null.size else math.nan,
          'placebo_runs': int(null.size),
          'seed_sharpes': [significance.sharpe_ratio(np.nan_to_num(r), periods)
                           for r in series['long_short_seeds']]}


def _panel_test(config: ml_collections.ConfigDict, returns: np.ndarray, **kwargs: Any
                ) -> dict[str, Any]:
  return panel_inference.sharpe_panel_test(
      returns, periods_per_year=float(config.backtest.periods_per_year),
      num_resamples=int(config.tests.num_resamples), level=float(config.tests.level),
      **kwargs)


def compare_models(config: ml_collections.ConfigDict, a: dict[str, Any], b: dict[str, Any]
                   ) -> dict[str, Any]:
  """A minus B: rank IC difference per bar (Newey-West) and the mean over coins of the
  per-coin timing net Sharpe difference (panel bootstrap)."""
  out: dict[str, Any] = {}
  if np.isfinite(a['rank_ic']).any() and np.isfinite(b['rank_ic']).any():
    out['rank_ic'] = panel_inference.mean_difference_test(
        a['rank_ic'] - b['rank_ic'], horizon=int(config.labels.horizon),
        level=float(config.tests.level))
  out['coin_sharpe'] = _panel_test(config, a['coins'], baseline=b['coins'])
  return out


def _pairs(text: str) -> list[tuple[str, str]]:
  pairs = []
  for item in config_lib.split_list(text):
    a, sep, b = item.partition(':')
    if not sep or not a or not b:
      raise config_lib.ConfigError(f'config.tests.compare: {item!r} is not "model_a:model_b"')
    pairs.append((a, b))
  return pairs


def context_pairs(models: Sequence[str]) -> list[tuple[str, str]]:
  """(with, without) market context: 'm' and 'm@feature_set' both run."""
  out = []
  for name in models:
    base, feature_set = split_model(name)
    if feature_set is not None and base in models:
      out.append((base, name))
  return out


def holm_family(tests: Sequence[dict[str, Any]]) -> None:
  """Holm-adjusts a family of tests in place: each gets 'p_holm', and 'reject' becomes
  p_holm < its level (the family-wise error rate is held at the level)."""
  defined = [t for t in tests if np.isfinite(t['p_value'])]
  for t, p in zip(defined, selection.holm_adjust([t['p_value'] for t in defined]),
                  strict=True):
    t['p_holm'] = p
    t['reject'] = bool(p < t['level'])


def run_tests(config: ml_collections.ConfigDict, series: dict[str, dict[str, Any]],
              models: Sequence[str], log: Callable[[str], None] = print) -> dict[str, Any]:
  """Every answer of the module docstring, as JSON-able dicts."""
  out: dict[str, Any] = {'compare': [], 'seed_claim': {}, 'long_short': {}, 'context': []}
  for a, b in _pairs(config.tests.compare):
    missing = [m for m in (a, b) if m not in series]
    if missing:
      out['compare'].append({'a': a, 'b': b, 'not_run': f'{", ".join(missing)} did not run '
                             '(not in config.models, or skipped: see the log)'})
      continue
    log(f'test: {a} minus {b}')
    out['compare'].append({'a': a, 'b': b, **compare_models(config, series[a], series[b])})
  for model in models:
    log(f'test: {model}: seed claim, long-short')
    out['seed_claim'][model] = _panel_test(config, series[model]['coins'],
                                           h0=float(config.tests.seed_claim),
                                           alternative='less')
    coins = panel_inference.coin_sharpes(series[model]['coins'],
                                         periods_per_year=config.backtest.periods_per_year)
    out['seed_claim'][model]['coins_at_or_above'] = int(np.sum(
        _finite(coins) >= float(config.tests.seed_claim)))
    out['seed_claim'][model]['coin_sharpes'] = coins.tolist()
    out['long_short'][model] = long_short_test(series[model], config)
  tested = [m for m in models if out['long_short'][m] is not None]
  for key in ('placebo_p', 'p_hac'):
    adjusted = selection.holm_adjust([out['long_short'][m][key] for m in tested])
    for m, p in zip(tested, adjusted, strict=True):
      out['long_short'][m][f'{key}_holm'] = p
  # Each answer is a family: its tests are Holm-adjusted together.
  holm_family([c[k] for c in out['compare'] for k in ('rank_ic', 'coin_sharpe') if k in c])
  claimed = config_lib.split_list(config.tests.seed_claim_models)
  holm_family([t for m, t in out['seed_claim'].items() if m in claimed])
  for m, t in out['seed_claim'].items():
    t['in_family'] = m in claimed
    if not t['in_family']:  # shown for reference: no claim was made for it
      t['reject'] = False
  for with_context, without in context_pairs(models):
    log(f'test: {with_context} against {without}')
    out['context'].append({'a': with_context, 'b': without,
                           **compare_models(config, series[with_context], series[without])})
  holm_family([c[k] for c in out['context'] for k in ('rank_ic', 'coin_sharpe') if k in c])
  return out


def verdict(test: dict[str, Any], *, years: float, what: str) -> str:
  """One sentence: decided or not, and how much more data would decide it."""
  mde = test['min_detectable']
  estimate = test['estimate']
  h0 = test.get('h0', 0.0)
  p = f'p = {test["p_value"]:.3g}, Holm-adjusted {_number(test.get("p_holm"), ".3g")}'
  if test['reject']:
    return f'**decided**: {what} ({p} < {test["level"]:g}).'
  scale = panel_inference.required_scale(estimate, mde, h0)
  more = ('no effect was observed, so no amount of data is implied' if not np.isfinite(scale)
          else f'at the observed effect about {scale:.1f}x these bars ({scale * years:.0f} '
          'years of these coins) would detect it with 80 % power' if scale > 1 else
          'the observed effect is above the detectable one, yet not significant: the '
          'normal approximation and the interval disagree at the margin')
  return (f'**not decided** ({p}): the test detects only effects of '
          f'{mde:.3g} or more with 80 % power; {more}.')


def _side(t: dict[str, Any]) -> str:
  if not t['excludes_zero']:
    return 'no'
  return 'yes, above' if t['low'] > 0 else 'yes, below'


def _ls_cell(t: dict[str, Any] | None) -> tuple[str, str]:
  if t is None:
    return 'n/a', 'n/a'
  return (f'{t["sharpe"]:+.2f} [{t["low"]:+.2f}, {t["high"]:+.2f}]',
          f'{_number(t["placebo_p"], ".3f")} ({_number(t["placebo_p_holm"], ".3f")})')


def _sharpe_of(returns: np.ndarray, periods: float) -> float:
  """Net Sharpe of a joined series; NaN where it is undefined (a constant score's book)."""
  if not np.isfinite(returns).any():
    return math.nan
  return significance.sharpe_ratio(np.nan_to_num(returns), periods)


def table_rows(config: ml_collections.ConfigDict, series: dict[str, dict[str, Any]],
               tests: dict[str, Any], models: Sequence[str]) -> list[dict[str, Any]]:
  """Per model: its rank IC (Newey-West), Holm p over the ranking models, Sharpe figures."""
  periods = float(config.backtest.periods_per_year)
  rows = []
  for model in models:
    s = series[model]
    ic = cross_section.newey_west_mean(s['rank_ic'], horizon=int(config.labels.horizon))
    spread = cross_section.newey_west_mean(s['quantile_spread'],
                                           horizon=int(config.labels.horizon))
    rows.append({'model': model, 'seeds': num_seeds(config, model),
                 'rank_ic': ic['mean'], 'rank_ic_t': ic['t_stat'],
                 'rank_ic_p': panel_inference.normal_p_value(ic['t_stat']),
                 'spread_bp': spread['mean'] * 1e4, 'spread_t': spread['t_stat'],
                 'long_short_sharpe': (tests['long_short'][model] or {}).get('sharpe', math.nan),
                 'long_short_free_sharpe': _sharpe_of(s['long_short_free'], periods),
                 'top_k_sharpe': _sharpe_of(s['top_k'], periods),
                 'timing_sharpe': significance.sharpe_ratio(np.nan_to_num(s['timing']), periods),
                 'coin_sharpe': tests['seed_claim'][model]['estimate']})
  ranked = [r for r in rows if np.isfinite(r['rank_ic_p'])]
  for r, p in zip(ranked, selection.holm_adjust([r['rank_ic_p'] for r in ranked]), strict=True):
    r['rank_ic_p_holm'] = p
  return rows


def benchmark_rows(config: ml_collections.ConfigDict, workdir: str,
                   folds: Sequence[Any]) -> tuple[list[dict[str, Any]],
                                                             dict[str, np.ndarray]]:
  """The equal-weight and BTC buy-and-hold rows, and their joined net returns."""
  periods = float(config.backtest.periods_per_year)
  parts = [np.load(os.path.join(workdir, BENCHMARKS, f'fold_{f.index:03d}.npz'))
           for f in folds]
  joined = {name: np.concatenate([p[name] for p in parts]) for name in ('equal_weight',
                                                                        'btc_hold')}
  rows = []
  for name, returns in joined.items():
    finite = _finite(returns)
    rows.append({'model': f'{name} (benchmark)', 'seeds': 0,
                 'timing_sharpe': (significance.sharpe_ratio(finite, periods)
                                   if finite.size > 1 else math.nan)})
  return rows, joined


def per_coin_ic(workdir: str, models: Sequence[str]) -> pd.DataFrame:
  """Each coin's time-series IC of each model's score with its forward return, the mean
  over the folds and seeds it was tested in (`results.jsonl`): (coins, models)."""
  path = os.path.join(workdir, 'results.jsonl')
  table: dict[str, dict[str, list[float]]] = {m: {} for m in models}
  for record in json_types.read_jsonl(path):
    if record['model'] in table and record.get('per_coin_ic'):
      for coin, value in record['per_coin_ic'].items():
        if value is not None and np.isfinite(value):
          table[record['model']].setdefault(coin, []).append(value)
  frame = pd.DataFrame({m: {c: float(np.mean(v)) for c, v in coins.items()}
                        for m, coins in table.items() if coins})
  return frame.sort_index()


def write_universe_plots(workdir: str, times: pd.DatetimeIndex,
                         series: dict[str, dict[str, Any]],
                         benchmarks: dict[str, np.ndarray], ic_window: int,
                         log: Callable[[str], None] = print) -> dict[str, str]:
  """long_short_equity.png and rank_ic_over_time.png; {} without matplotlib."""
  plt = extras.pyplot('the universe benchmark plots', warn=log)
  if plt is None:
    return {}
  paths = {}

  def save(fig: Any, ax: Any, name: str) -> None:
    ax.legend(fontsize=7, ncol=2)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    paths[name] = os.path.join(workdir, f'{name}.png')
    fig.savefig(paths[name], dpi=110)
    plt.close(fig)

  fig, ax = plt.subplots(figsize=(10, 4.5))
  for model, s in series.items():
    if np.isfinite(s['long_short']).any():
      ax.plot(times, np.cumprod(1 + np.nan_to_num(s['long_short'])), lw=1.0, label=model)
  ax.plot(times, np.cumprod(1 + np.nan_to_num(benchmarks['equal_weight'])), 'k--', lw=0.8,
          label='equal-weight buy & hold')
  ax.set(title='Long-short portfolios: growth of 1 net of costs (folds joined)',
         ylabel='growth of 1 (log scale)')
  ax.set_yscale('log')
  save(fig, ax, 'long_short_equity')
  fig, ax = plt.subplots(figsize=(10, 4.5))
  for model, s in series.items():
    if np.isfinite(s['rank_ic']).any():
      rolling = pd.Series(s['rank_ic'], index=times).rolling(
          ic_window, min_periods=ic_window // 2).mean()
      ax.plot(times, rolling.to_numpy(), lw=1.0, label=model)
  ax.axhline(0, color='k', lw=0.6)
  ax.set(title=f'Cross-sectional rank IC, rolling mean over {ic_window} bars',
         ylabel='rank IC')
  save(fig, ax, 'rank_ic_over_time')
  return paths


def _compare_lines(items: list[dict[str, Any]], years: float, label: str) -> list[str]:
  lines = []
  for item in items:
    a, b = item['a'], item['b']
    if 'not_run' in item:
      lines.append(f'- {label.format(a=a, b=b)}: not run: {item["not_run"]}.')
      continue
    lines.append(f'- {label.format(a=a, b=b)}:')
    if 'rank_ic' in item:
      t = item['rank_ic']
      lines.append(f'  - rank IC difference {t["estimate"]:+.4f} (95 % CI {t["low"]:+.4f} .. '
                   f'{t["high"]:+.4f}, Newey-West t {t["t_stat"]:+.2f}, {t["lags"]} lags); '
                   + verdict(t, years=years, what=f'{a}\'s rank IC is '
                             f'{"higher" if t["estimate"] > 0 else "lower"} than {b}\'s'))
    t = item['coin_sharpe']
    lines.append(f'  - mean per-coin timing net Sharpe difference {t["estimate"]:+.2f} (95 % '
                 f'CI {t["low"]:+.2f} .. {t["high"]:+.2f}, {t["num_coins"]} coins, block '
                 f'{t["block_length"]:.1f} bars); '
                 + verdict(t, years=years, what=f'{a} earns a '
                           f'{"higher" if t["estimate"] > 0 else "lower"} per-coin net Sharpe '
                           f'than {b}'))
  return lines


def report_lines(config: ml_collections.ConfigDict, rows: list[dict[str, Any]],
                 tests: dict[str, Any], folds: Sequence[Any], bars: int,
                 plots: dict[str, str], coin_ic: pd.DataFrame | None = None) -> list[str]:
  """The markdown of `universe_benchmark.md`."""
  years = bars / float(config.backtest.periods_per_year)
  claim = float(config.tests.seed_claim)
  claimed = config_lib.split_list(config.tests.seed_claim_models)
  lines = [
      f'# Universe benchmark `{config.variant}`', '',
      f'{len(folds)} test folds {folds[0].test_start:%Y-%m-%d} .. {folds[-1].test_end:%Y-%m-%d} '
      f'({bars} bars, {years:.2f} years; {config.folds.test_months} months each, trained on '
      f'the {config.folds.train_months} months before); coins per fold: '
      f'{", ".join(str(len(f.symbols)) for f in folds)}. Costs: commission '
      f'{config.backtest.commission}, slippage {config.backtest.slippage}, shorting '
      f'{config.portfolio.short_rate:.0%} a year. A model\'s seeds are combined (mean rank IC '
      'per bar; equal capital per seed). Rank IC: mean over every test bar of the '
      f'cross-sectional rank IC with the {config.labels.horizon}-bar forward return, '
      'Newey-West t, two-sided p Holm-adjusted over the ranking models; the top minus bottom '
      'quintile of the score in forward return. Long-short: k = '
      f'{config.portfolio.k} per side, rebalanced every {config.portfolio.rebalance_every} '
      'bars, net Sharpe with its 95 % stationary-bootstrap interval (Politis-White block); '
      'placebo p: the same portfolio on the model\'s scores rotated in time '
      f'({config.tests.null_rotations} shifts per fold), Holm over the models in brackets. '
      'Beside it: the same book with no shorting cost, and the long-only book of the k '
      'best-scored coins (net Sharpe). '
      'Timing: each coin long on BUY, flat on SELL, equal capital per coin. Coin Sharpe: the '
      'mean over coins of each coin\'s own timing net Sharpe.', '',
      '| model | seeds | rank IC | NW t | p (Holm) | top-bottom quintile, bp (NW t) | '
      'long-short net Sharpe [95 % CI] | placebo p (Holm) | long-short, no shorting cost | '
      'top-k long-only | timing net Sharpe | mean coin Sharpe |',
      '|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|']
  for r in rows:
    ls, placebo = _ls_cell(tests['long_short'].get(r['model']))
    lines.append(
        f'| {r["model"]} | {r["seeds"]} | {_number(r.get("rank_ic"), "+.4f")} | '
        f'{_number(r.get("rank_ic_t"), "+.2f")} | {_number(r.get("rank_ic_p_holm"), ".3f")} | '
        f'{_number(r.get("spread_bp"), "+.1f")} ({_number(r.get("spread_t"), "+.2f")}) | '
        f'{ls if r["seeds"] else "n/a"} | {placebo if r["seeds"] else "n/a"} | '
        f'{_number(r.get("long_short_free_sharpe"), "+.2f")} | '
        f'{_number(r.get("top_k_sharpe"), "+.2f")} | '
        f'{_number(r["timing_sharpe"], "+.2f")} | {_number(r.get("coin_sharpe"), "+.2f")} |')
  lines += ['', '## Answers, stated as tests', '',
            f'Level {config.tests.level:g}; "detects" means with 80 % power. {bars} test bars '
            f'= {years:.2f} years of these coins.', '',
            '### 1. Model against model (rank IC and per-coin net Sharpe)', '']
  lines += _compare_lines(tests['compare'], years, '{a} minus {b}') or ['- no pair named.']
  lines += ['', f'### 2. The seed\'s claim: H0 "net Sharpe >= {claim:g} per coin"', '',
            f'One-sided test of the mean over coins of each coin\'s timing net Sharpe against '
            f'{claim:g} (time-block bootstrap of the panel). The claim is the seed\'s, so the '
            f'family is its model ({", ".join(claimed)}), Holm-adjusted together; the other '
            'rows are for reference, unadjusted and not judged. Rejected means the claim is '
            'refuted on these coins.', '',
            '| model | mean coin Sharpe | 95 % CI | coins >= claim | p (Holm) | H0 rejected | '
            'detects a shortfall of |', '|---|---:|---:|---:|---:|---|---:|']
  for model, t in tests['seed_claim'].items():
    if not t['num_coins']:
      lines.append(f'| {model} | n/a (never trades) | | | | | |')
      continue
    judged = ('yes' if t['reject'] else 'no') if t['in_family'] else '(reference)'
    lines.append(f'| {model} | {t["estimate"]:+.2f} | {t["low"]:+.2f} .. {t["high"]:+.2f} | '
                 f'{t["coins_at_or_above"]}/{t["num_coins"]} | {t["p_value"]:.3g} '
                 f'({_number(t.get("p_holm"), ".3g")}) | {judged} | '
                 f'{t["min_detectable"]:.2f} |')
  lines += ['', '### 3. Long-short: an interval that excludes 0, and the placebo null', '',
            '| model | net Sharpe | 95 % CI (block) | excludes 0 | HAC p (Holm) | '
            'min. detectable | placebo mean | placebo q95 | placebo p (Holm) |',
            '|---|---:|---:|---|---:|---:|---:|---:|---:|']
  survivors = []
  for model, t in tests['long_short'].items():
    if t is None:
      continue
    if t['low'] > 0 and t['placebo_p_holm'] < float(config.tests.level):
      survivors.append(model)
    lines.append(f'| {model} | {t["sharpe"]:+.2f} | {t["low"]:+.2f} .. {t["high"]:+.2f} '
                 f'({t["block_length"]:.1f} bars) | {_side(t)} | '
                 f'{_number(t["p_hac"], ".3f")} ({_number(t["p_hac_holm"], ".3f")}) | '
                 f'{t["min_detectable"]:.2f} | {_number(t["placebo_mean"], "+.2f")} | '
                 f'{_number(t["placebo_q95"], "+.2f")} | {_number(t["placebo_p"], ".3f")} '
                 f'({_number(t["placebo_p_holm"], ".3f")}) |')
  lines += ['', ('**Decided**: ' + ', '.join(survivors) + ' earn(s) a long-short net Sharpe '
                 'whose interval lies above 0 and that beats its placebo null after Holm.')
            if survivors else '**No model** earns a long-short net Sharpe whose interval '
            'lies above 0 and that beats its placebo null after Holm.']
  lines += ['', '### 4. Market context (each model with and without it)', '']
  lines += _compare_lines(tests['context'], years, '{a} minus {b}') or [
      '- not run: name a model both with and without @feature_set in config.models.']
  if coin_ic is not None and not coin_ic.empty:
    lines += ['', '## Per-coin time-series IC (mean over folds and seeds)', '',
              '| coin | ' + ' | '.join(coin_ic.columns) + ' |',
              '|---|' + '---:|' * len(coin_ic.columns)]
    for coin, values in coin_ic.iterrows():
      lines.append(f'| {coin} | ' + ' | '.join(_number(v, '+.3f') for v in values) + ' |')
  if plots:
    lines += ['', '## Plots', ''] + [f'![{name}]({os.path.basename(p)})'
                                     for name, p in plots.items()]
  else:
    lines += ['', 'Plots: not drawn (matplotlib is not installed).']
  return lines


def write_universe_report(config: ml_collections.ConfigDict, workdir: str,
                          models: Sequence[str], folds: Sequence[Any],
                          symbols: Sequence[str], times: pd.DatetimeIndex | None = None, *,
                          log: Callable[[str], None] = print) -> dict[str, Any]:
  """Writes the report, its tests and plots; returns {'rows', 'tests', 'report', 'plots'}."""
  series = {m: load_model_series(config, workdir, m, folds, symbols) for m in models}
  tests = run_tests(config, series, models, log)
  rows = table_rows(config, series, tests, models)
  bench_rows, benchmarks = benchmark_rows(config, workdir, folds)
  bars = len(benchmarks['equal_weight'])
  if times is None or len(times) != bars:
    times = pd.date_range(folds[0].test_start, periods=bars, freq='h')
  plots = write_universe_plots(workdir, times, series, benchmarks,
                               int(config.tests.ic_window), log)
  coin_ic = per_coin_ic(workdir, [m for m in models if split_model(m)[1] is None])
  lines = report_lines(config, rows + bench_rows, tests, folds, bars, plots, coin_ic)
  path = os.path.join(workdir, REPORT)
  with open(path, 'w') as f:
    f.write('\n'.join(lines) + '\n')
  with open(os.path.join(workdir, TESTS), 'w') as f:
    json.dump(json_types.to_json_types(tests), f, indent=1, allow_nan=True)
  return {'rows': rows + bench_rows, 'tests': tests, 'report': path, 'plots': plots}
