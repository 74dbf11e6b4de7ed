"""launch/placebo.py end to end on the `tiny` config: the real run and two placebo runs, the
outputs, resuming without re-running, and a bad setting failing with one line; and the gross
(zero-cost) numbers `pipeline` reports: the backtest's own attribution."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from himari_jax import config
from himari_jax.backtest import engine as backtest
from himari_jax.backtest import evaluate
from himari_jax.data import ohlcv as data
from himari_jax.research import pipeline
from himari_jax.stats import metrics

RUNS = 2


def run(repo_root, *flags):
  env = {**os.environ, 'PYTHONUNBUFFERED': '1', 'JAX_PLATFORMS': 'cpu',
         'XLA_FLAGS': '--xla_backend_optimization_level=0'}
  return subprocess.run(
      [sys.executable, str(repo_root / 'launch' / 'placebo.py'),
       '--config=' + str(repo_root / 'configs' / 'placebo.py') + ':tiny', *flags],
      capture_output=True, text=True, cwd=repo_root, env=env, timeout=900)


@pytest.mark.slow
def test_tiny_placebo_runs_resumes_and_writes_outputs(repo_root, tmp_path):
  workdir = tmp_path / 'placebo'
  done = run(repo_root, f'--workdir={workdir}', f'--runs={RUNS}')
  assert done.returncode == 0, f'{done.stdout[-3000:]}\n{done.stderr[-3000:]}'
  assert f'0 of {RUNS} runs stored' in done.stdout and 'ETA' in done.stdout

  real = json.loads((workdir / 'real.json').read_text())['result']
  assert set(real) == set(pipeline.RESULT_NAMES)
  assert real['num_bars'] == 1000  # the tiny variant's cut of the test file
  runs = [workdir / 'placebo' / f'run_{i:03d}.json' for i in range(RUNS)]
  stored = [json.loads(p.read_text()) for p in runs]
  assert [s['market_seed'] for s in stored] == list(range(RUNS))
  # Each placebo run trained and backtested on its own synthetic market.
  for i in range(RUNS):
    run_dir = workdir / 'placebo' / f'run_{i:03d}'
    assert (run_dir / 'train' / 'metrics.jsonl').exists()
    assert (run_dir / 'backtest' / 'backtest_results.json').exists()
  assert stored[0]['result']['benchmark_sharpe'] != stored[1]['result']['benchmark_sharpe']
  assert stored[0]['result']['benchmark_sharpe'] != real['benchmark_sharpe']

  summary = json.loads((workdir / 'placebo_summary.json').read_text())
  assert summary['num_runs'] == RUNS
  sharpe = summary['metrics']['net_sharpe']
  assert sharpe['real'] == pytest.approx(real['net_sharpe'])
  assert sharpe['values'] == pytest.approx([s['result']['net_sharpe'] for s in stored])
  null = np.array(sharpe['values'])
  assert sharpe['p_value'] == pytest.approx((1 + np.sum(null >= real['net_sharpe'])) / (1 + RUNS))
  assert {'gross_sharpe', 'total_return', 'test_psr', 'ic', 'turnover',
          'num_trades'} <= set(summary['metrics'])
  table = (workdir / 'placebo_table.md').read_text()
  assert table.startswith('| metric | real | p-value') and '| gross Sharpe (zero cost) |' in table
  assert '<h2>Placebo runs</h2>' in (workdir / 'placebo_section.html').read_text()
  assert (workdir / 'placebo_hist.png').stat().st_size > 1000
  # The real run's report carries the null: one page for the result and its placebo runs.
  report = workdir / 'real' / 'backtest' / 'backtest_report.html'
  assert report.read_text().count('<h2>Placebo runs</h2>') == 1

  mtimes = [p.stat().st_mtime_ns for p in [workdir / 'real.json', *runs]]
  again = run(repo_root, f'--workdir={workdir}', f'--runs={RUNS}')
  assert again.returncode == 0, again.stderr[-3000:]
  assert f'{RUNS} of {RUNS} runs stored' in again.stdout and 'real result: stored' in again.stdout
  assert 'training' not in again.stdout  # nothing trained again
  assert [p.stat().st_mtime_ns for p in [workdir / 'real.json', *runs]] == mtimes
  assert report.read_text().count('<h2>Placebo runs</h2>') == 1  # replaced, not added

  # Stored runs are of one config: another one in the same workdir is refused, not mixed in.
  other = run(repo_root, f'--workdir={workdir}', f'--runs={RUNS}', '--config.placebo.first_seed=5')
  assert other.returncode != 0 and 'placebo.first_seed' in other.stderr.strip().splitlines()[-1]


def test_bad_setting_is_one_error_line(repo_root, tmp_path):
  done = run(repo_root, f'--workdir={tmp_path}', '--config.placebo.method=shuffle')
  assert done.returncode != 0
  assert done.stderr.strip().splitlines()[-1].startswith("error: config.placebo.method='shuffle'")


def test_pipeline_gross_numbers_are_the_backtests_attribution(tmp_path):
  bt = config.backtest_config()
  bt.significance.num_resamples, bt.significance.num_shuffles = 20, 10
  df = data.load_dataset('btc_usdt_1h_2025_2026', fill_gaps=True).iloc[:400]
  rng = np.random.default_rng(0)
  actions = rng.integers(0, 3, len(df)).astype(np.int32)
  confidence = rng.uniform(0.3, 1.0, len(df)).astype(np.float32)
  outcome = evaluate.backtest_and_report(df, actions, confidence, bt, str(tmp_path))
  params = backtest.params_from_config(bt)
  direct = backtest.run_backtest(df, actions, confidence, params)
  want = metrics.attribution(direct, params.initial_capital,
                             periods_per_year=bt.periods_per_year,
                             risk_free_rate=bt.risk_free_rate)
  got = outcome['attribution']['values']  # what `pipeline.run_pipeline` reports as gross
  assert got == want and got['num_trades'] > 10
  assert got['gross_sharpe'] > got['net_sharpe']  # costs were paid
