"""Backtest reports: files, their contents, and plots skipped cleanly without matplotlib."""

import json
import logging
import math
import sys

import numpy as np
import pandas as pd
import pytest
from conftest import load_config_file

from himari_jax.backtest import engine as backtest
from himari_jax.backtest import evaluate, report
from himari_jax.constants import BUY, HOLD, SELL
from himari_jax.stats import metrics


@pytest.fixture(scope='module')
def run():
  """A small backtest on a synthetic hourly frame: (frame, result, actions, confidence, config)."""
  rng = np.random.default_rng(0)
  num_bars = 200
  closes = 100 * np.exp(np.cumsum(rng.normal(0, 0.01, num_bars)))
  index = pd.date_range('2025-01-01', periods=num_bars, freq='h', tz='UTC', name='timestamp')
  frame = pd.DataFrame({'open': closes, 'high': closes, 'low': closes, 'close': closes,
                        'volume': 1.0}, index=index)
  actions = rng.choice([SELL, HOLD, BUY], num_bars, p=[0.2, 0.5, 0.3])
  confidence = rng.uniform(0.4, 1.0, num_bars)
  config = load_config_file('backtest')
  config.confidence_threshold = 0.5
  result = backtest.run_backtest(frame, actions, confidence, config)
  return frame, result, actions, confidence, config


def write_reports(outdir, run):
  """`report.write_reports` of the run with its metrics and buy-and-hold's."""
  frame, result, actions, confidence, config = run
  strategy, benchmark, benchmark_metrics = evaluate.metrics_vs_buy_and_hold(frame, result, config)
  return report.write_reports(outdir, result, frame, actions, confidence, config,
                              metrics=strategy, benchmark=benchmark,
                              benchmark_metrics=benchmark_metrics)


def test_write_reports_files_and_contents(tmp_path, run):
  frame, result, actions, confidence, config = run
  paths = write_reports(tmp_path, run)
  assert set(paths) == {'json', 'trades', 'html', *report.PLOTS}

  with open(paths['json']) as f:
    results = json.load(f)
  assert set(results['metrics']) == set(metrics.METRIC_NAMES)
  assert results['benchmark']['metrics']['num_trades'] == 1
  assert results['config']['confidence_threshold'] == 0.5
  assert results['settings']['fill'] == 'close' and results['settings']['sizing'] == 'confidence'
  curves = results['curves']
  assert {len(v) for v in curves.values()} == {len(frame)}
  np.testing.assert_allclose(curves['equity'], result.equity, rtol=1e-7)
  assert max(curves['drawdown']) <= 0 and curves['time'][0].startswith('2025-01-01T00:00')
  counts = results['action_counts']
  assert counts['signal']['BUY'] == np.sum(actions == BUY)
  assert counts['after_threshold']['BUY'] == np.sum((actions == BUY) & (confidence >= 0.5))

  trades = pd.read_csv(paths['trades'])
  fills = np.flatnonzero(np.asarray(result.fill_qty))
  assert list(trades.columns) == list(report.TRADE_COLUMNS) and len(trades) == len(fills) > 5
  np.testing.assert_array_equal(trades['side'], np.where(
      np.asarray(result.fill_qty)[fills] > 0, 'BUY', 'SELL'))
  np.testing.assert_allclose(trades['quantity'], np.abs(result.fill_qty[fills]), rtol=1e-6)
  np.testing.assert_allclose(trades['position_after'], result.position[fills], rtol=1e-6,
                             atol=1e-9)
  assert pd.Timestamp(trades['time'][0]) == frame.index[fills[0]]

  for name in report.PLOTS:
    with open(paths[name], 'rb') as f:
      assert f.read(8) == b'\x89PNG\r\n\x1a\n'
  with open(paths['html']) as f:
    page = f.read()
  assert page.count('<tr>') == len(metrics.METRIC_NAMES) + 1
  assert page.count('data:image/png;base64,') == len(report.PLOTS)


def test_plots_are_skipped_without_matplotlib(tmp_path, run, monkeypatch, caplog):
  monkeypatch.setitem(sys.modules, 'matplotlib', None)  # makes `import matplotlib` fail
  with caplog.at_level(logging.WARNING):
    paths = write_reports(tmp_path, run)
  assert set(paths) == {'json', 'trades', 'html'}
  assert 'matplotlib is not installed' in caplog.text
  with open(paths['html']) as f:
    assert 'data:image/png' not in f.read()


def test_metrics_table_and_json_values():
  strategy = {name: 0.0 for name in metrics.METRIC_NAMES}
  strategy.update(total_return=0.1234, sharpe=float('nan'), profit_factor=float('inf'),
                  num_trades=np.int32(7), final_equity=112_340.0)
  benchmark = dict(strategy, total_return=-0.05)
  values = report.to_python(strategy)
  assert values['sharpe'] is None and values['profit_factor'] == 'inf'
  assert isinstance(values['num_trades'], int)
  table = report.format_metrics_table(strategy, benchmark).splitlines()
  assert table[0].split() == ['metric', 'strategy', 'buy', '&', 'hold']
  assert len(table) == len(metrics.METRIC_NAMES) + 2
  row = {line.split()[0]: line.split()[1:] for line in table[2:]}
  assert row['total_return'] == ['12.34%', '-5.00%']
  assert row['sharpe'] == ['n/a', 'n/a'] and row['profit_factor'] == ['inf', 'inf']
  assert row['final_equity'] == ['112,340.00', '112,340.00'] and row['num_trades'] == ['7', '7']
  assert report.format_metric('calmar', 1.23456) == '1.235'
  assert math.isclose(json.loads(json.dumps(values))['total_return'], 0.1234)


def test_lookahead_features_are_flagged_first_everywhere(tmp_path, run, capsys):
  import types

  from himari_jax import config as config_lib
  from himari_jax.backtest import evaluate
  from himari_jax.data import features

  frame, _, actions, confidence, config = run
  config = config.copy_and_resolve_references()
  config.significance.update(num_resamples=50, num_shuffles=20)
  seed_exact = config_lib.load_config('flag_trader:tiny')
  seed_exact.data.feature_set = 'seed_exact'
  causal = config_lib.load_config('flag_trader:tiny')
  members = [types.SimpleNamespace(config=c) for c in (causal, seed_exact, seed_exact)]
  warnings = evaluate.lookahead_warnings(members)
  assert warnings == [features.lookahead_warning('seed_exact')]
  assert evaluate.lookahead_warnings(members[:1]) == []
  outcome = evaluate.backtest_and_report(frame, actions, confidence, config, str(tmp_path),
                                         warnings=warnings)
  results = json.loads((tmp_path / report.RESULTS_JSON).read_text())
  # What is returned is what was written, computed once.
  assert outcome['metrics'] == results['metrics'] and set(outcome['metrics']) == set(
      metrics.METRIC_NAMES)
  assert outcome['benchmark'] == results['benchmark']['metrics']
  assert results['lookahead_warning'] == warnings[0] and 'not evidence' in warnings[0]
  body = (tmp_path / report.REPORT_HTML).read_text().split('<body>', 1)[1]
  assert body.lstrip().startswith('<p class="warning">LOOK-AHEAD')
  report.print_backtest_summary({**outcome, 'sweep': None})
  assert capsys.readouterr().out.splitlines()[0] == warnings[0]
  # The seed policy's attribution: gross minus costs is net, side by side in every output.
  values = results['attribution']['values']
  assert values['cost_drag_sharpe'] == pytest.approx(values['gross_sharpe']
                                                     - values['net_sharpe'])
  assert results['policy']['mode'] == 'seed' and len(results['cost_sensitivity']) == 9


def test_attribution_intervals_share_one_block_length_and_say_how_it_was_set(run):
  _, result, _, _, config = run
  chosen = report.attribution_intervals(result, config.initial_capital, num_resamples=50)
  assert chosen['gross_sharpe']['block_length'] == chosen['net_sharpe']['block_length'] >= 1
  assert chosen['net_sharpe']['block_rule'] == 'Politis-White'
  given = report.attribution_intervals(result, config.initial_capital, num_resamples=50,
                                       block_length=12.0)
  assert given['net_sharpe']['block_length'] == 12.0 and given['net_sharpe']['block_rule'] == 'set'
  line = report.attribution_lines(metrics.attribution(result, config.initial_capital), given)[2]
  assert 'block 12.0 bars, set]' in line


def test_window_line_names_the_rule_and_both_policies_per_window():
  windows = {'label': 'selection: nested over 3 validation windows, worst-window sharpe_lcb',
             'windows': 3, 'selected': [0.91, 1.2, 0.75], 'seed_rule': [-0.4, 0.1, None],
             'selected_score': 0.75, 'seed_rule_score': -0.4}
  line = report.window_line(windows)
  assert line == ('selection: nested over 3 validation windows, worst-window sharpe_lcb: '
                  'selected policy 0.91 / 1.20 / 0.75 (ranked by 0.75), seed rule -0.40 / 0.10 '
                  '/ n/a (ranked by -0.40)')
  lines = report.policy_lines({'mode': 'select', 'policy': 'p', 'windows': windows,
                               'folds': {'1': {'windows': windows}}})
  assert line in lines and f'fold 1: {line}' in lines
  flat = {**windows, 'label': 'selection: flat over the validation bars, sharpe_lcb',
          'windows': 1, 'selected': [0.5], 'seed_rule': [0.25]}
  assert report.window_line(flat) == ('selection: flat over the validation bars, sharpe_lcb: '
                                      'selected policy 0.50, seed rule 0.25')
