"""The benchmark's answers: pooled and per-asset summaries of the trials, the Markdown table
and the plots. Reads what `benchmark.run_benchmark` stored; computes nothing a trial did.
"""

from __future__ import annotations

import math
import os
import statistics
from collections.abc import Callable, Sequence
from typing import Any

import ml_collections
import numpy as np

from himari_jax import extras
from himari_jax.data import input_pipeline
from himari_jax.data import labels as labels_lib
from himari_jax.research import benchmark_folds as folds_lib
from himari_jax.stats import cross_section, sharpe_inference
from himari_jax.stats import metrics as metrics_lib
from himari_jax.stats import selection as selection_lib
from himari_jax.stats import signal_metrics as signal_lib
from himari_jax.stats import significance as significance_lib

_NORMAL = statistics.NormalDist()


def _stitched(records: Sequence[dict], workdir: str) -> dict[str, np.ndarray]:
  """Net and gross test returns of one (model, asset), folds in time order, seed-averaged,
  and the per-bar IC and rank IC terms of the seed-mean score (`ic_contributions`, each fold
  standardised on its own scored bars; NaN where a trial saved no forward returns).

  Averaging the seeds' per-bar returns is an equal-weight portfolio of the seeds' runs, the
  fair reading of a model whose result depends on its initialisation.
  """
  by_fold: dict[int, list[dict]] = {}
  for r in records:
    by_fold.setdefault(r['fold'], []).append(r)
  parts: dict[str, list[np.ndarray]] = {k: [] for k in ('net', 'gross', 'score', 'ic', 'rank_ic')}
  for k in sorted(by_fold):
    arrays = []
    for r in by_fold[k]:
      path = os.path.join(folds_lib.Trial(r['model'], r['asset'], r['fold'], r['seed']).directory(
          workdir), folds_lib.TEST_ARRAYS)
      with np.load(path) as saved:
        arrays.append({name: saved[name] for name in ('net_returns', 'gross_returns', 'score')})
        arrays[-1]['forward'] = (saved['forward'] if 'forward' in saved.files
                                 else np.full(len(saved['score']), np.nan))
    parts['net'].append(np.mean([a['net_returns'] for a in arrays], axis=0))
    parts['gross'].append(np.mean([a['gross_returns'] for a in arrays], axis=0))
    score = np.mean([a['score'] for a in arrays], axis=0)
    parts['score'].append(score)
    forward = np.mean([a['forward'] for a in arrays], axis=0)  # NaN unless every seed scored
    scored = np.isfinite(forward)
    terms = {'ic': np.full(len(score), np.nan), 'rank_ic': np.full(len(score), np.nan)}
    if scored.sum() >= 3:
      terms = signal_lib.ic_contributions(score, np.where(scored, forward, 0.0), scored)
    parts['ic'].append(terms['ic'])
    parts['rank_ic'].append(terms['rank_ic'])
  return {name: np.concatenate(values) for name, values in parts.items()}


def ic_over_time(stitched: dict[str, np.ndarray], horizon: int) -> dict[str, dict[str, float]]:
  """The pooled per-bar IC and rank IC of the stitched test bars with a Newey-West t (lags at
  least the label horizon) and its one-sided p-value of "IC > 0".

  Returns:
    {'ic': newey_west_mean(...) + 'p_value', 'rank_ic': the same}; NaN where undefined.
  """
  out = {}
  for name in ('ic', 'rank_ic'):
    entry = cross_section.newey_west_mean(stitched[name], horizon=horizon)
    entry['p_value'] = (1.0 - _NORMAL.cdf(entry['t_stat']) if math.isfinite(entry['t_stat'])
                        else math.nan)
    out[name] = entry
  return out


def _return_statistics(net: np.ndarray, gross: np.ndarray,
                       sig: ml_collections.ConfigDict, ppy: float) -> dict[str, Any]:
  """Gross and net Sharpe with block-bootstrap CIs, total return, drawdown and the test PSR
  (HAC) of stitched per-bar returns."""
  row: dict[str, Any] = {}
  for kind, returns in (('gross', gross), ('net', net)):
    if np.std(returns) > 0:
      ci = significance_lib.block_bootstrap_ci(
          returns, num_resamples=sig.num_resamples, seed=sig.seed, periods_per_year=ppy)
      row[f'{kind}_sharpe'] = {'estimate': ci['estimate'], 'low': ci['low'],
                               'high': ci['high'], 'block_length': ci['block_length']}
    else:
      row[f'{kind}_sharpe'] = {'estimate': math.nan, 'low': math.nan, 'high': math.nan,
                               'block_length': math.nan}
  row['net_total_return'] = float(np.prod(1.0 + net) - 1.0)
  row['max_drawdown'] = float(np.min(metrics_lib.drawdown_curve(np.cumprod(1.0 + net), 1.0)))
  row['test_psr'] = (sharpe_inference.probabilistic_sharpe_hac(net, periods_per_year=ppy)
                     if np.std(net) > 0 else {'psr': math.nan,
                                              'min_detectable_sharpe': math.nan})
  return row


def summarize_benchmark(config: ml_collections.ConfigDict, records: Sequence[dict[str, Any]],
                        assets: Sequence[folds_lib.Asset], workdir: str) -> dict[str, Any]:
  """Per (model, asset): signal metrics across folds, the pooled per-bar IC and rank IC with
  Newey-West t and Holm-adjusted p-values over every IC test of the run, stitched gross / net
  Sharpe with CIs, turnover, drawdown, the trials' selection DSRs (each trial's policy search
  deflated on its own validation bars), the test PSR(0) with a HAC error and minimum
  detectable Sharpe ratio of the stitched net returns, paired bootstrap vs the best baseline
  (the baseline with the best validation net Sharpe). Every asset also gets the market rows
  `folds_lib.MARKET_MODELS` (always long at the position cap and with the whole equity).
  """
  sig = config.significance
  ppy = float(config.backtest.periods_per_year)
  horizon = labels_lib.label_horizon(config.labels.kind,
                                     **input_pipeline.label_params(config.labels))
  # Policies tried, over every trial (each trial's search is deflated on its own validation).
  num_trials = sum(r['policy']['num_trials'] for r in records)
  models = list(dict.fromkeys(r['model'] for r in records))
  rows, series = {}, {}
  for asset in assets:
    for model in models:
      mine = [r for r in records if r['model'] == model and r['asset'] == asset.name]
      if not mine:
        continue
      folds = {}
      for r in mine:
        folds.setdefault(r['fold'], []).append(r['signal'])
      per_fold = [{m: float(np.nanmean([s[m] for s in folds[k]])) if any(
          np.isfinite(s[m]) for s in folds[k]) else math.nan for m in signal_lib.METRICS}
          for k in sorted(folds)]
      stitched = _stitched(mine, workdir)
      series[(model, asset.name)] = stitched
      val_sharpes = [v for r in mine if (v := r['policy'].get('val_net_sharpe')) is not None
                     and np.isfinite(v)]
      row = {'model': model, 'asset': asset.name, 'trials': len(mine),
             'seeds': len({r['seed'] for r in mine}), 'folds': len(folds),
             'signal': signal_lib.aggregate_folds(per_fold), 'ic_per_fold':
                 [f['ic'] for f in per_fold],
             'ic_over_time': ic_over_time(stitched, horizon),
             'val_net_sharpe': float(np.mean(val_sharpes)) if val_sharpes else math.nan,
             'turnover_per_year': float(np.mean([r['backtest']['turnover_per_year']
                                                 for r in mine])),
             'num_trades': float(np.mean([r['backtest']['num_trades'] for r in mine])),
             'wall_seconds': float(sum(r['wall_seconds'] for r in mine)),
             **_return_statistics(stitched['net'], stitched['gross'], sig, ppy)}
      # Each trial's search is judged where it ran: its winner's DSR on its validation bars.
      dsrs = [d['dsr'] for r in mine if (d := r['policy'].get('selection'))
              and d.get('dsr') is not None]
      row['selection_dsr'] = float(np.median(dsrs)) if dsrs else math.nan
      row['own_trials'] = sum(r['policy']['num_trials'] for r in mine)
      rows[(model, asset.name)] = row
    for model, market in folds_lib.buy_and_hold_returns(config, asset).items():
      series[(model, asset.name)] = market
      rows[(model, asset.name)] = {
          'model': model, 'asset': asset.name, 'trials': 0, 'seeds': 0,
          'folds': len(asset.folds), 'signal': None, 'ic_per_fold': [], 'ic_over_time': None,
          'val_net_sharpe': math.nan, 'turnover_per_year': math.nan, 'num_trades': 1.0,
          'wall_seconds': 0.0, 'selection_dsr': math.nan, 'own_trials': 0,
          **_return_statistics(market['net'], market['gross'], sig, ppy)}
  # One family: every IC and rank IC test of the table.
  tests = [(row, name) for row in rows.values() if row['ic_over_time']
           for name in ('ic', 'rank_ic')]
  adjusted = selection_lib.holm_adjust([row['ic_over_time'][name]['p_value']
                                        for row, name in tests])
  for (row, name), p in zip(tests, adjusted, strict=True):
    row['ic_over_time'][name]['p_holm'] = p
  for asset in assets:
    # The market at the cap: what a model that may hold at most the cap earns by holding.
    held = series[(folds_lib.MARKET_MODELS[0], asset.name)]['net']
    for model in models:
      mine = series[(model, asset.name)]['net'] if (model, asset.name) in rows else None
      if mine is not None and np.std(mine) > 0 and np.std(held) > 0:
        paired = significance_lib.paired_block_bootstrap(
            mine, held, num_resamples=sig.num_resamples, seed=sig.seed, periods_per_year=ppy)
        rows[(model, asset.name)]['vs_market'] = {
            k: paired[k] for k in ('estimate', 'low', 'high', 'p_value')}
  best = {}
  for asset in assets:
    # Chosen on validation, where every baseline's policy was selected: not on the test bars.
    candidates = [(rows[(m, asset.name)]['val_net_sharpe'], m) for m in models
                  if (m, asset.name) in rows and m not in config.flag_traders
                  and np.isfinite(rows[(m, asset.name)]['val_net_sharpe'])]
    if not candidates:
      continue
    best[asset.name] = max(candidates)[1]
    reference = series[(best[asset.name], asset.name)]['net']
    for model in [*models, *folds_lib.MARKET_MODELS]:
      if (model, asset.name) not in rows or model == best[asset.name]:
        continue
      mine = series[(model, asset.name)]['net']
      if np.std(mine) > 0:
        paired = significance_lib.paired_block_bootstrap(
            mine, reference, num_resamples=sig.num_resamples, seed=sig.seed,
            periods_per_year=ppy)
        rows[(model, asset.name)]['vs_best'] = {
            k: paired[k] for k in ('estimate', 'low', 'high', 'p_value')}
  market = {}
  for asset in assets:
    close = np.concatenate([asset.df['close'].to_numpy()[f.test.start - 1:f.test.stop]
                            for f in asset.folds[:1]] +
                           [asset.df['close'].to_numpy()[f.test] for f in asset.folds[1:]])
    returns = metrics_lib.period_returns(close[1:], close[0])
    market[asset.name] = {'sharpe': significance_lib.sharpe_ratio(returns, ppy),
                          'total_return': float(close[-1] / close[0] - 1)}
  wall = {}
  for r in records:
    w = wall.setdefault(r['model'], {'trials': 0, 'seconds': 0.0})
    w['trials'] += 1
    w['seconds'] += r['wall_seconds']
  return {'rows': list(rows.values()), 'best_baseline': best, 'num_trials': num_trials,
          'market': market, 'wall': wall,
          'models': models, 'assets': {a.name: {'spec': a.spec, 'folds': [
              f.to_dict() for f in a.folds], 'test': [
              str(a.df.index[a.folds[0].test.start]),
              str(a.df.index[a.folds[-1].test.stop - 1])]} for a in assets},
          'series': series}


def _fmt(value: float, spec: str = '+.3f') -> str:
  return '-' if value is None or not np.isfinite(value) else format(value, spec)


def _ci(entry: dict[str, float]) -> str:
  return (f'{_fmt(entry["estimate"], "+.2f")} ({_fmt(entry["low"], "+.2f")} .. '
          f'{_fmt(entry["high"], "+.2f")}; block {_fmt(entry["block_length"], ".1f")})')


def _paired(vs: dict[str, float] | None) -> str:
  """A paired-bootstrap cell: difference (95% CI), one-sided p of "better"; '-' if none."""
  if vs is None:
    return '-'
  return (f'{_fmt(vs["estimate"], "+.2f")} ({_fmt(vs["low"], "+.2f")} .. '
          f'{_fmt(vs["high"], "+.2f")}), p {vs["p_value"]:.2f}')


def _signal_cells(row: dict[str, Any]) -> str:
  """The IC, rank IC and skill cells of one table row ('-' for the market rows)."""
  s, hac = row['signal'], row['ic_over_time']
  if s is None:
    return ' | '.join(['-'] * 8)
  cells = []
  for name in ('ic', 'rank_ic'):
    df = s[name]['n_folds'] - 1
    cells.append(f'{_fmt(s[name]["mean"])} (t({df}) {_fmt(s[name]["t_stat"], "+.1f")}, '
                 f'{_fmt(s[name]["icir"], "+.2f")})')
  for name in ('ic', 'rank_ic'):
    h = hac[name]
    cells.append(f'{_fmt(h["mean"])} (t {_fmt(h["t_stat"], "+.1f")}, {h["lags"]} lags; '
                 f'{_fmt(h["p_value"], ".3f")}, {_fmt(h.get("p_holm", math.nan), ".3f")})')
  cells += [_fmt(s['log_loss_skill']['mean']), _fmt(s['brier_skill']['mean']),
            _fmt(s['balanced_accuracy']['mean'], '.3f'), _fmt(s['macro_f1']['mean'], '.3f')]
  return ' | '.join(cells)


def write_report(config: ml_collections.ConfigDict, summary: dict[str, Any], workdir: str, *,
                 plots: dict[str, str] | None = None) -> str:
  """`benchmark.md`: setup, one table per asset, skipped models, wall times, plots."""
  bt = config.backtest
  f = config.folds
  lines = [f'# Model benchmark (`{config.variant}`)', '',
           f'Models: {", ".join(summary["models"])}. Seeds: {config.num_seeds} per learned '
           f'model (rule models once per fold). Labels: {config.labels.kind} '
           f'{dict(input_pipeline.label_params(config.labels))}. Folds: {f.mode}, '
           f'{f.train_bars} training bars (last {config.data.val_fraction:.0%} validation), '
           f'embargo {folds_lib.embargo_of(config)} bars, {f.test_bars}-bar test windows. Costs: '
           f'commission {bt.commission:.2%}, slippage {bt.slippage:.2%} per side; position cap '
           f'{bt.max_position_pct:.0%} of equity, '
           f'{"long/short" if bt.allow_short else "long-only"}.', '']
  lines += ['Every model: fitted on the fold\'s training rows, calibrated on its validation '
            f'rows ({bt.calibration.mode}; position models, whose margin `p_buy - p_sell` is '
            'their position, and models trained on net returns are not), decision policy '
            'selected on validation out of '
            f'{np.size(folds_lib.benchmark_policy_grid(config.policy).entry)} policies, then '
            'tested once '
            f'({summary["num_trials"]:,} policies tried over every model x asset x fold x seed; '
            'each search is deflated on the validation bars it ran on).', '']
  for name, why in (summary.get('skipped') or {}).items():
    lines += [f'**{name} skipped**: {why}', '']
  header = ('| model | IC, folds (t(df), ICIR) | rank IC, folds (t(df), ICIR) | '
            'per-bar IC (NW t; p, Holm p) | per-bar rank IC (NW t; p, Holm p) | '
            'log-loss skill | Brier skill | bal. acc | macro F1 | val net Sharpe | '
            'gross Sharpe (95% CI) | net Sharpe (95% CI) | turnover / yr | max DD | '
            'selection DSR | test PSR (MDS) | net vs best baseline (95% CI, p) | '
            f'net vs {folds_lib.MARKET_MODELS[0]} (95% CI, p) |')
  rule = '|' + '---|' * 18
  for asset, info in summary['assets'].items():
    best = summary['best_baseline'].get(asset)
    market = summary['market'][asset]
    lines += [f'## {asset}', '',
              f'`{info["spec"]}`; test bars {info["test"][0][:10]} .. {info["test"][1][:10]} '
              f'({len(info["folds"])} folds). Market (fully invested, no costs) over the '
              f'test bars: Sharpe {market["sharpe"]:+.2f}, return '
              f'{market["total_return"]:+.1%}. Best baseline by validation net Sharpe: '
              f'{best or "-"}.', '', header, rule]
    for row in summary['rows']:
      if row['asset'] != asset:
        continue
      versus = 'best baseline' if row['model'] == best else _paired(row.get('vs_best'))
      lines.append(
          f'| {row["model"]} | {_signal_cells(row)} | '
          f'{_fmt(row["val_net_sharpe"], "+.2f")} | {_ci(row["gross_sharpe"])} | '
          f'{_ci(row["net_sharpe"])} | {_fmt(row["turnover_per_year"], ".1f")} | '
          f'{_fmt(row["max_drawdown"], ".2%")} | {_fmt(row["selection_dsr"], ".3f")} | '
          f'{_fmt(row["test_psr"]["psr"], ".3f")} '
          f'({_fmt(row["test_psr"]["min_detectable_sharpe"], ".2f")}) | '
          f'{versus} | {_paired(row.get("vs_market"))} |')
    lines.append('')
  lines += ['IC and rank IC, folds: Pearson / Spearman correlation of `p_buy - p_sell` with '
            'the forward return over the label horizon, mean over folds of the seed-mean, '
            'with its t-statistic across the K folds (K - 1 degrees of freedom, shown as '
            't(K-1)) and ICIR (mean / std across folds). Per-bar IC: the same correlation as '
            'the mean of per-bar products of the standardised seed-mean score and forward '
            'return over every fold\'s test bars, with a Newey-West t (lags >= the label '
            'horizon, shown), its one-sided p of "IC > 0" and that p Holm-adjusted over '
            'every IC and rank IC test in this report. Val net Sharpe: the selected policy '
            'on the validation bars, mean over the row\'s trials; the best baseline is the '
            'one that scores highest there (FLAG-TRADER is not a baseline). '
            '`buy_and_hold_cap` / `buy_and_hold_full`: long from the first bar of each test '
            'window to its end at the position cap / with the whole equity, costs '
            'included. Skill scores: '
            '`1 - loss / loss of the training label prior`. Sharpe: annualised, of the test '
            'windows stitched in time order, per-bar returns averaged over seeds, with a '
            'stationary block-bootstrap CI (block: its length in bars, chosen from the returns '
            'by Politis-White with the Patton-Politis-White correction). Selection DSR: per '
            'trial, the probability that the validation winner\'s true Sharpe ratio on the '
            'validation bars beats the best of the policies tried there under no skill '
            '(median over the row\'s trials). '
            'Test PSR: P(true Sharpe > 0) of the stitched net test returns with a Newey-West '
            '(HAC) error; MDS: the Sharpe ratio detectable at 80 % power on those bars. Last '
            'columns: paired block bootstrap of the net Sharpe difference to the best '
            'baseline and to the market held at the position cap (one-sided p of '
            '"better"). A `-` Sharpe: the selected policy never traded on the test '
            'bars (a constant prediction, such as the label prior or the `buy_and_hold` '
            'model, calibrated to the validation label rates has HOLD as its argmax and a '
            'margin `p_buy - p_sell` below every entry threshold); the `buy_and_hold_*` rows '
            'are the market held.', '', '## Wall time', '',
            '| model | trials | total | per trial |', '|---|---:|---:|---:|']
  for model, w in summary['wall'].items():
    lines.append(f'| {model} | {w["trials"]} | {folds_lib.format_seconds(w["seconds"])} | '
                 f'{w["seconds"] / max(w["trials"], 1):.1f} s |')
  total = sum(w['seconds'] for w in summary['wall'].values())
  lines += ['', f'Sum of trial wall times {folds_lib.format_seconds(total)}; this invocation '
            f'{folds_lib.format_seconds(summary.get("run_seconds", 0.0))} (trials finished earlier '
            'are read back, not rerun).', '']
  images = [p for k, p in (plots or {}).items() if k.startswith('plot')]
  if images:
    lines += ['## Plots', ''] + [f'![{os.path.basename(p)}]({os.path.basename(p)})'
                                 for p in images] + ['']
  elif config.plots:
    lines += ['Plots: not drawn (matplotlib is not installed).', '']
  path = os.path.join(workdir, folds_lib.REPORT)
  with open(path, 'w') as fh:
    fh.write('\n'.join(lines))
  return path


def write_plots(summary: dict[str, Any], records: Sequence[dict], workdir: str, *,
                log: Callable[[str], None] = print) -> dict[str, str]:
  """IC per fold (one panel per asset) and seed-mean net equity curves per model and asset."""
  del records
  plt = extras.pyplot('the benchmark plots', warn=log)
  if plt is None:
    return {}
  paths = {}
  assets = list(summary['assets'])
  fig, axes = plt.subplots(1, len(assets), figsize=(6 * len(assets), 4), squeeze=False)
  for ax, asset in zip(axes[0], assets, strict=True):
    for row in summary['rows']:
      if row['asset'] == asset:
        ax.plot(range(len(row['ic_per_fold'])), row['ic_per_fold'], marker='o',
                label=row['model'])
    ax.axhline(0.0, color='grey', lw=0.8)
    ax.set(title=f'{asset}: IC per fold', xlabel='fold', ylabel='IC')
    ax.legend(fontsize=7)
  fig.tight_layout()
  paths['plot_ic'] = os.path.join(workdir, 'ic_per_fold.png')
  fig.savefig(paths['plot_ic'], dpi=100)
  plt.close(fig)
  for asset in assets:
    fig, ax = plt.subplots(figsize=(9, 4))
    for (model, name), s in summary['series'].items():
      if name == asset:
        ax.plot(np.cumprod(1.0 + s['net']), label=model, lw=1)
    ax.set(title=f'{asset}: net equity of the stitched test windows (seed mean)',
           xlabel='test bar', ylabel='equity / initial')
    ax.legend(fontsize=7)
    fig.tight_layout()
    paths[f'plot_equity_{asset}'] = os.path.join(workdir, f'equity_{asset}.png')
    fig.savefig(paths[f'plot_equity_{asset}'], dpi=100)
    plt.close(fig)
  return paths
