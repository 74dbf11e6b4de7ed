"""Outputs of a backtest run (SPEC section 7): JSON, trade CSV, PNG plots and an HTML page.

`write_reports(outdir, result, prices_df, actions, confidence, config, metrics=...,
benchmark=..., benchmark_metrics=...)` writes what it is given (the backtest's record, its
metrics and buy-and-hold's, computed by `evaluate.metrics_vs_buy_and_hold`):

* `backtest_results.json`: metrics of the strategy and of buy-and-hold, the config and the
  settings used, and the equity and drawdown curves (one value per bar, with bar times);
* `backtest_trades.csv`: one row per fill with `time` (open time of the bar in which the fill
  happened: at its close for `fill='close'`, at its open for `'next_open'`), `side`, `price`,
  `quantity` (units, positive), `commission`, `slippage` (currency), `position_after`,
  `equity_after` (marked at that bar's close) and `confidence` (of the executed decision);
* `equity.png`, `drawdown.png`, `position.png`, `actions.png` and `backtest_report.html` (a
  self-contained page: metrics table and the plots). Plots need matplotlib (the `plot`
  extra); without it they are skipped with a logged notice.

In JSON, NaN metrics (e.g. a win rate without round trips) are null and infinite ones the
strings "inf" / "-inf".
"""

from __future__ import annotations

import base64
import html
import io
import json
import math
import os
from collections.abc import Mapping, Sequence
from typing import Any

import jax.numpy as jnp
import ml_collections
import numpy as np
import pandas as pd

from himari_jax import extras
from himari_jax.backtest import engine as backtest_lib
from himari_jax.constants import ACTION_NAMES, HOLD, PERIODS_PER_YEAR
from himari_jax.stats import metrics as metrics_lib
from himari_jax.stats import significance

RESULTS_JSON = 'backtest_results.json'
TRADES_CSV = 'backtest_trades.csv'
REPORT_HTML = 'backtest_report.html'
PLOTS = ('equity', 'drawdown', 'position', 'actions')
TRADE_COLUMNS = ('time', 'side', 'price', 'quantity', 'commission', 'slippage',
                 'position_after', 'equity_after', 'confidence')
# How each metric is printed: percentages, currency, ratios, counts.
_PERCENT = frozenset({'total_return', 'cagr', 'volatility', 'max_drawdown', 'var_95', 'cvar_95',
                      'trade_bar_share', 'exposure', 'win_rate'})
_CURRENCY = frozenset({'final_equity', 'total_commission', 'total_slippage', 'avg_trade_profit'})
_COUNTS = frozenset({'num_trades', 'num_round_trips'})


def to_python(metrics: Mapping[str, Any]) -> dict[str, Any]:
  """Metric scalars (jax / numpy) as JSON-ready Python values: NaN -> None, inf -> 'inf'."""
  out = {}
  for name, value in metrics.items():
    value = np.asarray(value).item()
    if isinstance(value, float) and math.isnan(value):
      value = None
    elif isinstance(value, float) and math.isinf(value):
      value = 'inf' if value > 0 else '-inf'
    out[name] = value
  return out


def format_metric(name: str, value: Any) -> str:
  """One metric for people: '12.34%', '101,234.56', '1.234', '42' or 'n/a'."""
  if value is None or (isinstance(value, float) and math.isnan(value)):
    return 'n/a'
  if isinstance(value, str) or (isinstance(value, float) and math.isinf(value)):
    return str(value)
  if name in _PERCENT:
    return f'{100 * value:.2f}%'
  if name in _CURRENCY:
    return f'{value:,.2f}'
  if name in _COUNTS:
    return f'{int(value):d}'
  return f'{value:.3f}'


def format_metrics_table(strategy: Mapping[str, Any], benchmark: Mapping[str, Any], *,
                         names: tuple[str, str] = ('strategy', 'buy & hold')) -> str:
  """A plain-text table, one metric per row, strategy next to buy-and-hold."""
  strategy, benchmark = to_python(strategy), to_python(benchmark)
  rows = [('metric', *names)] + [
      (name, format_metric(name, strategy.get(name)), format_metric(name, benchmark.get(name)))
      for name in metrics_lib.METRIC_NAMES]
  widths = [max(len(row[i]) for row in rows) for i in range(3)]
  lines = [f'{a:<{widths[0]}}  {b:>{widths[1]}}  {c:>{widths[2]}}' for a, b, c in rows]
  lines.insert(1, '-' * len(lines[0]))
  return '\n'.join(lines)


def print_metrics_table(strategy: Mapping[str, Any], benchmark: Mapping[str, Any]) -> None:
  """Prints `format_metrics_table(strategy, benchmark)` to the console."""
  print(format_metrics_table(strategy, benchmark))


def significance_lines(significance: Mapping[str, Any]) -> list[str]:
  """Plain-language lines of a `significance.significance_report` (console and HTML)."""

  def num(value, fmt='.2f'):
    return 'n/a' if value is None else format(value, fmt)

  level = f'{100 * significance["confidence"]:.0f}%'
  sharpe, total = significance['sharpe'], significance['total_return']
  psr = significance['test_psr']
  block = block_text(significance['bootstrap'])
  lines = [
      f'Sharpe {num(sharpe["estimate"])} ({level} block-bootstrap CI {num(sharpe["low"])} .. '
      f'{num(sharpe["high"])}, {block}); minimum detectable Sharpe at 80% power over these '
      f'{psr["num_observations"]:,} bars: {num(psr["min_detectable_sharpe"])}',
      f'total return {num(total["estimate"], ".2%")} ({level} CI {num(total["low"], ".2%")} .. '
      f'{num(total["high"], ".2%")}, {block})',
      f'{psr["label"]} = {num(psr["psr"], ".3f")} (s.e. {num(psr["se"])} with {psr["lags"]} '
      f'Newey-West lags; i.i.d. s.e. {num(psr["se_iid"])})',
  ]
  compared = significance.get('test_comparisons')
  if compared:
    lines.append(f'test comparisons ({compared["adjustment"]}): ' + '; '.join(
        f'{row["name"]}{" (traded)" if row["traded"] else ""} Sharpe {num(row["sharpe"])}, '
        f'PSR {num(row["psr"], ".3f")}, p {num(row["p_value"], ".3f")}, Holm p '
        f'{num(row["p_holm"], ".3f")}' for row in compared['rows']))
  null = significance.get('null_test')
  if null:
    lines.append(f'{null["label"]}: mean test Sharpe {num(null["sharpe_mean"])} +- '
                 f'{num(null["sharpe_std"])} over {null["winners"]} null winners')
  swept = significance.get('sweep')
  if swept:
    lines.append(selection_line(swept))
  diff = significance['benchmark']['sharpe_difference']
  lines.append(f'Sharpe minus buy & hold {num(diff["estimate"])} ({level} CI {num(diff["low"])} '
               f'.. {num(diff["high"])}), one-sided p = {num(diff["p_value"], ".3f")} for "better"')
  for key, label in (('shuffled_signal', 'net of costs'),
                     ('shuffled_signal_gross', 'before costs')):
    shuffled = significance.get(key)
    if shuffled:
      lines.append(f'rotated-signal null, {label}: observed Sharpe '
                   f'{num(shuffled["observed_sharpe"])} vs null {num(shuffled["null_mean"])} '
                   f'+- {num(shuffled["null_std"])}, p = {num(shuffled["p_value"], ".3f")}')
  return lines


def block_text(bootstrap: Mapping[str, Any]) -> str:
  """'block 19 bars (Politis-White)': a bootstrap's block length and how it was set."""
  return (f'{bootstrap.get("method", "stationary")} bootstrap, block '
          f'{bootstrap["block_length"]:.1f} bars ({bootstrap["block_rule"]})')


def policy_line(policy: Mapping[str, Any]) -> str:
  """The one line that names the decision rule traded (`evaluate.PolicyChoice.summary`): the
  backtest's reports and paper trading print it alike."""
  described = policy.get('policy')
  if isinstance(described, Mapping):
    keys = ('signal', 'entry', 'exit', 'min_hold', 'cooldown', 'sizing', 'max_position_pct',
            'band', 'allow_short')
    described = ', '.join(f'{k}={described[k]:g}' if isinstance(described[k], float)
                          else f'{k}={described[k]}' for k in keys if k in described)
  return (f'decision policy: {policy["mode"]} ({described}); {policy.get("num_trials", 1)} '
          'policy(ies) tried')


def policy_lines(policy: Mapping[str, Any] | None) -> list[str]:
  """How decisions were made (`evaluate.PolicyChoice.summary`), for console and HTML."""
  if not policy:
    return []
  lines = [policy_line(policy)]
  if policy.get('fallback'):
    lines.append(f'policy: {policy["fallback"]}')
  auto = policy.get('auto')
  if auto:
    lines.append(f'policy auto: {auto["reason"]}')
  val = policy.get('validation')
  if val:
    seed = val.get('best_seed_sharpe')
    eligible = ('' if 'eligible' not in policy else f' among {policy["eligible"]} with >= '
                f'{policy["min_round_trips"]} round trips')
    lines.append(f'chosen on {val["bars"]} validation bars ({val["first"][:10]} .. '
                 f'{val["last"][:10]}) by {policy.get("objective")}{eligible}: validation '
                 f'Sharpe {val["sharpe"]:.2f}, {val["num_trades"]} fills, turnover '
                 f'{val["turnover_per_year"]:.1f}x a year' +
                 ('' if seed is None else f' (best seed policy there: Sharpe {seed:.2f})'))
  folds = policy.get('folds') or {}
  for name, searched in [('', policy)] + [(f'fold {k}: ', v) for k, v in folds.items()]:
    if searched.get('windows'):
      lines.append(name + window_line(searched['windows']))
    if searched.get('selection'):
      lines.append(name + selection_line(searched['selection']))
    if searched.get('null'):
      lines.append(name + null_line(searched['null']))
  return lines


def window_line(windows: Mapping[str, Any]) -> str:
  """The selection rule and the per-window objective of the winner and of the seed rule
  (`policy_search.window_summary`), e.g. 'selection: nested over 3 validation windows,
  worst-window sharpe_lcb: selected policy 0.91 / 1.20 / 0.75 (ranked by 0.75), seed rule
  -0.40 / 0.10 / n/a (ranked by -0.40)'."""

  def values(key):
    found = ' / '.join('n/a' if v is None else f'{v:.2f}' for v in windows[key])
    score = windows.get(f'{key}_score')
    return found + ('' if windows['windows'] == 1 else
                    f' (ranked by {"n/a" if score is None else format(score, ".2f")})')

  return (f'{windows["label"]}: selected policy {values("selected")}, seed rule '
          f'{values("seed_rule")}')


def null_line(null: Mapping[str, Any]) -> str:
  """One line of a selection null (`policy_search.selection_null_summary`)."""
  if 'p_value' not in null:
    return f'{null["label"]}: {null.get("note", "")}'

  def num(value, spec='.2f'):
    return 'n/a' if value is None else format(value, spec)

  return (f'{null["label"]}: P(null winner >= real winner) = {num(null["p_value"], ".3f")}; '
          f'null winners\' validation Sharpe {num(null["null_sharpe_mean"])} +- '
          f'{num(null["null_sharpe_std"])}')


def selection_line(deflated: Mapping[str, Any]) -> str:
  """One line of a `selection.selection_deflated_sharpe` result (as JSON)."""
  if deflated.get('dsr') is None:
    return f'{deflated["label"]}: n/a ({deflated.get("note", "undefined")})'
  return (f'{deflated["label"]} = {deflated["dsr"]:.3f} (winner\'s Sharpe there '
          f'{deflated["sharpe"]:.2f}; expected best of as many zero-skill trials '
          f'{deflated["expected_max_sharpe"]:.2f})')


def print_backtest_summary(outcome: dict, top: int = 10) -> None:
  """Console summary of `evaluate.backtest_pipeline`: metrics vs buy-and-hold, luck, sweep,
  files."""
  for warning in outcome.get('warnings', ()):
    print(warning)
  print()
  print_metrics_table(outcome['metrics'], outcome['benchmark'])
  print()
  for line in policy_lines(outcome.get('policy')):
    print(f'  {line}')
  attribution = outcome.get('attribution')
  if attribution:
    for line in attribution_lines(attribution['values'], attribution['intervals']):
      print(f'  {line}')
  for line in significance_lines(outcome['significance']):
    print(f'  {line}')
  table = outcome['sweep']
  if table is not None:
    columns = [c for c in ('signal', 'confidence_threshold', 'total_return', 'sharpe',
                           'max_drawdown', 'num_trades', 'exposure') if c in table]
    best = table.sort_values('sharpe', ascending=False).head(top)[columns]
    print(f'\nsweep: best {len(best)} of {len(table)} configurations by Sharpe')
    print(best.to_string(index=False, float_format=lambda v: f'{v:.4g}'))
  print('\nwrote:')
  for name, path in outcome['paths'].items():
    print(f'  {name:>9}: {path}')
  if 'policy' in outcome['paths']:
    print('\npaper-trade what was backtested: python launch/trade_signal.py '
          f'--policy={outcome["paths"]["policy"]} --data=binance:BTCUSDT --follow')


def trades_frame(result: backtest_lib.BacktestResult, index: pd.Index) -> pd.DataFrame:
  """One row per fill (columns `TRADE_COLUMNS`) from a BacktestResult of (N,) arrays.

  Args:
    result: the backtest's per-bar record.
    index: (N,) bar times (the OHLCV frame's index).
  """
  qty = np.asarray(result.fill_qty, dtype=np.float64)
  bars = np.flatnonzero(qty != 0)
  take = lambda field: np.asarray(getattr(result, field), dtype=np.float64)[bars]
  return pd.DataFrame({
      'time': np.asarray(index)[bars],
      'side': np.where(qty[bars] > 0, 'BUY', 'SELL'),
      'price': take('fill_price'),
      'quantity': np.abs(qty[bars]),
      'commission': take('commission'),
      'slippage': take('slippage'),
      'position_after': take('position'),
      'equity_after': take('equity'),
      'confidence': take('confidence'),
  }, columns=list(TRADE_COLUMNS))


def write_reports(outdir: str | os.PathLike, result: backtest_lib.BacktestResult,
                  prices_df: pd.DataFrame, actions: Any, confidence: Any,
                  config: ml_collections.ConfigDict, *, metrics: Mapping[str, Any],
                  benchmark: backtest_lib.BacktestResult,
                  benchmark_metrics: Mapping[str, Any], plots: bool = True,
                  extra: Mapping[str, Any] | None = None, warnings: Sequence[str] = (),
                  attribution: tuple | None = None,
                  policy: Mapping[str, Any] | None = None) -> dict[str, str]:
  """Writes every output of one backtest run and returns their paths by name.

  Args:
    outdir: folder to write into (created if missing).
    result: `backtest.run_backtest(prices_df, actions, confidence, params)` with the
      settings of `config`.
    prices_df: the OHLCV frame backtested, (N,) rows indexed by bar time.
    actions, confidence: (N,) decisions given to the backtest.
    config: backtest config (configs/backtest.py).
    metrics: `metrics.compute_metrics` of `result` (scalars, or `to_python` values).
    benchmark, benchmark_metrics: buy-and-hold's record on the same bars and its metrics
      (`evaluate.metrics_vs_buy_and_hold` computes all three).
    plots: False skips the PNG plots (the HTML page then has only the table).
    extra: more JSON-able sections for `backtest_results.json` (models, calibration, and
      `significance` from `significance.significance_report`, which the HTML page summarises).
    warnings: caveats the HTML page shows first (look-ahead features, SPEC 3).
    attribution: (`metrics.attribution` dict, `attribution_intervals` or None, cost
      sensitivity frame or None) for the page's "where the returns go" section (SPEC 9).
    policy: the decision policy's summary (`evaluate.PolicyChoice.summary`) for the page.

  Returns:
    {'json': ..., 'trades': ..., 'html': ..., plus one entry per written plot}.
  """
  os.makedirs(outdir, exist_ok=True)
  params = backtest_lib.params_from_config(config)
  close = np.asarray(prices_df['close'], jnp.result_type(float))  # the backtest's dtype
  strategy_metrics, benchmark_metrics = to_python(metrics), to_python(benchmark_metrics)
  curves = _curves(result, benchmark, params.initial_capital)
  times = [t.isoformat() for t in pd.DatetimeIndex(prices_df.index)]
  actions = np.asarray(actions)
  executed = np.where((actions != HOLD) & (np.asarray(confidence) < config.confidence_threshold),
                      HOLD, actions)
  action_counts = {
      'signal': {name: int(np.sum(actions == a)) for a, name in enumerate(ACTION_NAMES)},
      'after_threshold': {name: int(np.sum(executed == a)) for a, name in enumerate(ACTION_NAMES)},
  }

  paths = {'json': os.path.join(outdir, RESULTS_JSON), 'trades': os.path.join(outdir, TRADES_CSV)}
  with open(paths['json'], 'w') as f:
    json.dump({
        'metrics': strategy_metrics,
        'benchmark': {'name': 'buy_and_hold', 'metrics': benchmark_metrics},
        'config': config.to_dict(),
        'settings': backtest_lib.params_to_dict(params),
        'action_counts': action_counts,
        **(extra or {}),
        'curves': {'time': times, **{k: v.tolist() for k, v in curves.items()}},
    }, f, indent=1)
  trades_frame(result, prices_df.index).to_csv(paths['trades'], index=False)

  images = {}
  if plots:
    images = _write_plots(outdir, pd.DatetimeIndex(prices_df.index), curves, result, close,
                          action_counts)
    paths.update(images)
  paths['html'] = os.path.join(outdir, REPORT_HTML)
  with open(paths['html'], 'w') as f:
    f.write(_html_page(strategy_metrics, benchmark_metrics, prices_df.index, params, images,
                       (extra or {}).get('significance'), warnings=warnings,
                       attribution=(attribution_html(attribution[0], attribution[2],
                                                 attribution[1], plot=plots)
                                    if attribution else ''),
                       policy=policy_lines(policy)))
  return paths


def _curves(result: backtest_lib.BacktestResult, benchmark: backtest_lib.BacktestResult,
            capital: Any) -> dict[str, np.ndarray]:
  """Equity and drawdown of the strategy and of buy-and-hold, (N,) float64 each."""
  curves = {}
  for prefix, run in (('', result), ('benchmark_', benchmark)):
    curves[prefix + 'equity'] = np.asarray(run.equity, dtype=np.float64)
    curves[prefix + 'drawdown'] = np.asarray(
        metrics_lib.drawdown_curve(run.equity, capital), dtype=np.float64)
  return curves


def _write_plots(outdir: str | os.PathLike, times: pd.DatetimeIndex,
                 curves: Mapping[str, np.ndarray], result: backtest_lib.BacktestResult,
                 close: np.ndarray, action_counts: Mapping[str, Mapping[str, int]]
                 ) -> dict[str, str]:
  """Writes the PNG plots; returns {} with a logged notice when matplotlib is missing."""
  plt = extras.pyplot('the backtest plots')
  if plt is None:
    return {}

  exposure = (np.asarray(result.position, dtype=np.float64) * close
              / np.asarray(result.equity, dtype=np.float64))
  paths = {}

  def save(fig, name):
    paths[name] = os.path.join(outdir, f'{name}.png')
    fig.tight_layout()
    fig.savefig(paths[name], dpi=110)
    plt.close(fig)

  fig, ax = plt.subplots(figsize=(10, 4))
  ax.plot(times, curves['equity'], label='strategy', lw=1.2)
  ax.plot(times, curves['benchmark_equity'], label='buy & hold', lw=1.0, alpha=0.8)
  ax.set(title='Equity', ylabel='equity')
  ax.legend()
  ax.grid(alpha=0.3)
  save(fig, 'equity')

  fig, ax = plt.subplots(figsize=(10, 3.5))
  ax.fill_between(times, 100 * curves['drawdown'], 0, label='strategy', alpha=0.6, step='post')
  ax.plot(times, 100 * curves['benchmark_drawdown'], label='buy & hold', lw=0.8, color='gray')
  ax.set(title='Drawdown', ylabel='% below running peak')
  ax.legend(loc='lower left')
  ax.grid(alpha=0.3)
  save(fig, 'drawdown')

  fig, ax = plt.subplots(figsize=(10, 3.5))
  ax.fill_between(times, 100 * exposure, 0, step='post', alpha=0.7)
  ax.axhline(0, color='black', lw=0.6)
  ax.set(title='Position over time', ylabel='position value, % of equity')
  ax.grid(alpha=0.3)
  save(fig, 'position')

  fig, ax = plt.subplots(figsize=(6, 3.5))
  names = list(ACTION_NAMES)
  width = 0.4
  for offset, (label, counts) in zip((-width / 2, width / 2), action_counts.items(),
                                     strict=True):
    bars = ax.bar(np.arange(3) + offset, [counts[n] for n in names], width,
                  label=label.replace('_', ' '))
    ax.bar_label(bars, fontsize=8)
  ax.set_xticks(np.arange(3), names)
  ax.set(title='Action distribution', ylabel='bars')
  ax.legend()
  save(fig, 'actions')
  return paths


def _html_page(strategy: Mapping[str, Any], benchmark: Mapping[str, Any], index: pd.Index,
               params: backtest_lib.BacktestParams, images: Mapping[str, str],
               significance: Mapping[str, Any] | None = None, *,
               warnings: Sequence[str] = (), attribution: str = '',
               policy: Sequence[str] = ()) -> str:
  """A self-contained one-page summary: caveats first, then period, settings, policy,
  metrics, attribution, significance, plots."""
  rows = '\n'.join(
      f'<tr><td>{name}</td><td>{format_metric(name, strategy.get(name))}</td>'
      f'<td>{format_metric(name, benchmark.get(name))}</td></tr>'
      for name in metrics_lib.METRIC_NAMES)
  settings = ', '.join(f'{k}={v}' for k, v in backtest_lib.params_to_dict(params).items())
  figures = []
  for name in PLOTS:
    if name in images:
      with open(images[name], 'rb') as f:
        data = base64.b64encode(f.read()).decode('ascii')
      figures.append(f'<img alt="{name}" src="data:image/png;base64,{data}">')
  period = f'{index[0]} to {index[-1]} ({len(index):,} bars)'
  luck = ''
  if significance:
    luck = '<h2>Is it luck?</h2><ul>' + ''.join(
        f'<li>{html.escape(line)}</li>' for line in significance_lines(significance)) + '</ul>'
  caveats = ''.join(f'<p class="warning">{html.escape(w)}</p>' for w in warnings)
  decided = ''.join(f'<p>{html.escape(line)}</p>' for line in policy)
  return f"""<!DOCTYPE html>
<html><head><meta charset="utf-8"><title>Backtest report</title>
<style>
body {{ font-family: sans-serif; max-width: 1100px; margin: 2em auto; color: #222; }}
table {{ border-collapse: collapse; }}
td, th {{ padding: 3px 12px; border-bottom: 1px solid #ddd; text-align: right; }}
td:first-child, th:first-child {{ text-align: left; }}
img {{ max-width: 100%; display: block; margin: 1em 0; }}
.small {{ color: #666; font-size: 0.9em; }}
.warning {{ color: #a00; font-weight: bold; border: 2px solid #a00; padding: 0.5em; }}
</style></head><body>
{caveats}
<h1>Backtest report</h1>
<p>{html.escape(period)}</p>
<p class="small">{html.escape(settings)}</p>
{decided}
<table><tr><th>metric</th><th>strategy</th><th>buy &amp; hold</th></tr>
{rows}
</table>
{attribution}
{luck}
{''.join(figures)}
</body></html>
"""


# Attribution (SPEC section 9): where the returns go. Rows of the gross | costs | net table.
_ATTRIBUTION_ROWS = (
    ('total return', 'gross_total_return', None, 'net_total_return', '{:+.2%}'),
    ('Sharpe ratio', 'gross_sharpe', 'cost_drag_sharpe', 'net_sharpe', '{:+.2f}'),
    ('commission (of capital)', None, 'commission_return', None, '{:.2%}'),
    ('slippage (of capital)', None, 'slippage_return', None, '{:.2%}'),
)


def attribution_intervals(result: backtest_lib.BacktestResult, initial_capital: float, *,
                          num_resamples: int = 1000, seed: int = 0,
                          periods_per_year: float = PERIODS_PER_YEAR,
                          block_length: float | None = None) -> dict[str, dict[str, Any]]:
  """Block-bootstrap confidence intervals of the gross and the net Sharpe ratio.

  Both use the same seed and block length (None: the longer Politis-White length of the
  two series), so the same resampled blocks: their intervals are comparable.

  Returns:
    {'gross_sharpe': ..., 'net_sharpe': ...}, each `significance.block_bootstrap_ci`'s dict
    without the resamples (`block_rule` says how the block length was set).
  """
  series = {name: np.asarray(metrics_lib.period_returns(jnp.asarray(equity), initial_capital))
            for name, equity in (('gross_sharpe', metrics_lib.gross_equity(result)),
                                 ('net_sharpe', result.equity))}
  rule = significance.BLOCK_RULE_GIVEN
  if block_length is None:
    block_length = significance.politis_white_block_length(*series.values())
    rule = significance.BLOCK_RULE_DATA
  out = {}
  for name, returns in series.items():
    ci = significance.block_bootstrap_ci(returns, 'sharpe', num_resamples=num_resamples,
                                         seed=seed, periods_per_year=periods_per_year,
                                         block_length=block_length)
    out[name] = {**{k: v for k, v in ci.items() if k != 'resamples'}, 'block_rule': rule}
  return out


def attribution_lines(attribution: Mapping[str, Any],
                      intervals: Mapping[str, Mapping[str, Any]] | None = None) -> list[str]:
  """Console lines: gross, costs and net side by side, then trading activity."""
  def ci(name):
    if not intervals or name not in intervals:
      return ''
    return (f' [{intervals[name]["low"]:+.2f}, {intervals[name]["high"]:+.2f}; block '
            f'{intervals[name]["block_length"]:.1f} bars, {intervals[name]["block_rule"]}]')

  a = attribution
  return [
      f'gross: return {a["gross_total_return"]:+.2%}, Sharpe {a["gross_sharpe"]:+.2f}'
      f'{ci("gross_sharpe")}',
      f'costs: commission {a["commission"]:,.0f} ({a["commission_return"]:.2%} of capital), '
      f'slippage {a["slippage"]:,.0f} ({a["slippage_return"]:.2%}); cost drag '
      f'{a["cost_drag_sharpe"]:.2f} Sharpe',
      f'net:   return {a["net_total_return"]:+.2%}, Sharpe {a["net_sharpe"]:+.2f}'
      f'{ci("net_sharpe")}',
      f'turnover {a["turnover_per_year"]:.1f}x equity a year, {a["num_trades"]} fills on '
      f'{a["trade_bar_share"]:.1%} of bars, {_holding(a)}',
  ]


def _holding(attribution: Mapping[str, Any]) -> str:
  """'mean holding 12.5 bars', or what stands in for it when no round trip was closed."""
  bars = attribution['mean_holding_bars']
  if bars is None or not math.isfinite(bars):
    return 'no round trip closed (no holding time)'
  return f'mean holding {bars:.1f} bars'


def cost_sensitivity_png(sensitivity: pd.DataFrame) -> bytes | None:
  """The net Sharpe ratio against the cost multiplier as PNG bytes (None without matplotlib).

  Args:
    sensitivity: `backtest.cost_sensitivity` / `policy.policy_cost_sensitivity` output.
  """
  plt = extras.pyplot('the cost-sensitivity plot')
  if plt is None:
    return None

  fig, ax = plt.subplots(figsize=(6, 3.5))
  ax.plot(sensitivity['cost_multiplier'], sensitivity['sharpe'], marker='o')
  ax.axhline(0, color='black', lw=0.6)
  ax.axvline(1, color='gray', lw=0.8, ls='--', label='configured costs')
  ax.set(title='Cost sensitivity', xlabel='x configured commission and slippage',
         ylabel='net Sharpe ratio')
  ax.legend()
  ax.grid(alpha=0.3)
  fig.tight_layout()
  buffer = io.BytesIO()
  fig.savefig(buffer, format='png', dpi=110)
  plt.close(fig)
  return buffer.getvalue()


def attribution_html(attribution: Mapping[str, Any], sensitivity: pd.DataFrame | None = None,
                     intervals: Mapping[str, Mapping[str, Any]] | None = None, *,
                     plot: bool = True) -> str:
  """An HTML section for the backtest page: gross | costs | net table (with the Sharpe
  intervals when given), trading activity, and the cost-sensitivity curve (a plot, or a
  table without matplotlib or with `plot=False`)."""
  def cell(key, fmt, ci_key=None):
    if key is None:
      return '<td></td>'
    text = fmt.format(attribution[key])
    if intervals and ci_key in intervals:
      text += (f' [{intervals[ci_key]["low"]:+.2f}, {intervals[ci_key]["high"]:+.2f}; block '
               f'{intervals[ci_key]["block_length"]:.1f} bars, '
               f'{intervals[ci_key]["block_rule"]}]')
    return f'<td>{html.escape(text)}</td>'

  rows = ''.join(
      f'<tr><td>{label}</td>{cell(gross, fmt, gross)}{cell(cost, fmt)}{cell(net, fmt, net)}</tr>'
      for label, gross, cost, net, fmt in _ATTRIBUTION_ROWS)
  a = attribution
  activity = (f'turnover {a["turnover_per_year"]:.1f}x equity a year; {a["num_trades"]} fills '
              f'on {a["trade_bar_share"]:.1%} of bars; {_holding(a)}')
  curve = ''
  if sensitivity is not None:
    image = cost_sensitivity_png(sensitivity) if plot else None
    if image is not None:
      curve = (f'<img alt="cost sensitivity" src="data:image/png;base64,'
               f'{base64.b64encode(image).decode("ascii")}">')
    else:
      curve = '<table><tr><th>cost multiplier</th><th>net Sharpe</th><th>net return</th></tr>'
      curve += ''.join(f'<tr><td>{m:g}x</td><td>{s:+.2f}</td><td>{r:+.2%}</td></tr>'
                       for m, s, r in sensitivity[['cost_multiplier', 'sharpe',
                                                   'total_return']].itertuples(index=False))
      curve += '</table>'
  return (f'<h2>Where the returns go</h2><table><tr><th></th><th>gross</th><th>costs</th>'
          f'<th>net</th></tr>{rows}</table><p>{html.escape(activity)}</p>{curve}')
