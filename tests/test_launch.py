"""Every evaluation entry point end to end, as a user runs it: subprocess, real flags, tiny
model, bundled data; outputs exist and parse; wrong flags fail with one clear line.

(launch/train.py is exercised by test_train.py's kill-and-resume test, convert_checkpoint.py by
test_convert.py, download_data.py by test_binance.py, pretrain_compare.py by test_pretrain.py,
walk_forward.py by test_walkforward.py.)
"""

import json
import os
import subprocess
import sys

import pandas as pd
import pytest

from himari_jax.data import ohlcv as data

# Few resamples: these tests check plumbing; significance figures are tested elsewhere.
FAST_STATS = ['--config.significance.num_resamples=100', '--config.significance.num_shuffles=50']


def run(repo_root, script, *flags, check=True):
  env = {**os.environ, 'PYTHONUNBUFFERED': '1', 'JAX_PLATFORMS': 'cpu',
         'XLA_FLAGS': '--xla_backend_optimization_level=0'}
  done = subprocess.run([sys.executable, str(repo_root / 'launch' / script), *flags],
                        capture_output=True, text=True, cwd=repo_root, env=env, timeout=900)
  if check:
    assert done.returncode == 0, f'{script} failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}'
  return done


@pytest.fixture(scope='module')
def quickstart(tmp_path_factory, request):
  repo_root = request.config.rootpath
  workdir = tmp_path_factory.mktemp('quickstart')
  done = run(repo_root, 'quickstart.py', f'--workdir={workdir}', '--fast')
  return workdir, done.stdout


def check_reports(outdir):
  results = json.loads((outdir / 'backtest_results.json').read_text())
  assert {'metrics', 'benchmark', 'config', 'significance', 'curves'} <= set(results)
  assert results['benchmark']['name'] == 'buy_and_hold'
  assert len(results['curves']['equity']) == len(results['curves']['time'])
  trades = pd.read_csv(outdir / 'backtest_trades.csv')
  assert {'time', 'side', 'price', 'quantity', 'commission', 'slippage', 'confidence'} <= set(
      trades.columns)
  assert (outdir / 'backtest_report.html').read_text().startswith('<!DOCTYPE html>')
  for plot in ('equity', 'drawdown', 'position', 'actions'):
    assert (outdir / f'{plot}.png').stat().st_size > 1000
  return results


def test_quickstart_trains_backtests_and_reports(quickstart):
  workdir, stdout = quickstart
  assert (workdir / 'train' / 'metrics.jsonl').exists()
  results = check_reports(workdir / 'backtest')
  assert results['metrics']['final_equity'] > 0
  assert 'buy & hold' in stdout and 'block-bootstrap CI' in stdout
  # --policy=auto: selected on validation, used only if it beats the seed's policy there by
  # more than the search finds in its own null.
  assert results['policy']['num_trials'] == 484 and 'auto' in results['policy']
  assert 'policy auto: the selected policy' in stdout and 'gross: return' in stdout
  # What each figure may claim, named for what it is (SPEC 11).
  for text in ('selection: DSR of the validation winner (484 trials, ',
               'P(null winner >= real winner) = ', 'test: PSR(0), HAC s.e. = ',
               'bars (Politis-White)', 'minimum detectable Sharpe at 80% power'):
    assert text in stdout, text


@pytest.mark.slow
def test_backtest_with_sweep(quickstart, repo_root, tmp_path):
  workdir, _ = quickstart
  out = tmp_path / 'bt'
  done = run(repo_root, 'backtest.py', f'--checkpoints={workdir / "train"}', f'--outdir={out}',
             '--sweep', '--config.sweep.confidence_thresholds=(0.0,0.6)',
             '--config.sweep.metrics=core', *FAST_STATS)
  check_reports(out)
  sweep = pd.read_csv(out / 'sweep.csv')
  assert len(sweep) == 3 * 2 and {'signal', 'confidence_threshold', 'sharpe'} <= set(sweep)
  assert 'var_95' not in sweep  # the screening metrics only
  assert 'sweep: best' in done.stdout


@pytest.mark.slow
def test_ensemble_backtest_of_two_members_with_seed_flags(quickstart, repo_root, tmp_path):
  workdir, _ = quickstart
  run_dir = workdir / 'train'
  out = tmp_path / 'ens'
  run(repo_root, 'ensemble_backtest.py', '--strategy=disagreement', '--confidence_threshold=0.4',
      f'--checkpoints={run_dir},{run_dir}', f'--outdir={out}', *FAST_STATS)
  results = check_reports(out)
  assert results['config']['strategy'] == 'disagreement'
  assert results['config']['confidence_threshold'] == 0.4
  assert len(results['models']) == 2


@pytest.mark.slow
def test_ensemble_backtest_works_out_of_the_box_with_shipped_checkpoints(repo_root, tmp_path):
  out = tmp_path / 'shipped'
  done = run(repo_root, 'ensemble_backtest.py', '--confidence_threshold=0.5', '--strategy=voting',
             f'--outdir={out}', *FAST_STATS)
  results = check_reports(out)
  assert [os.path.basename(m) for m in results['models']] == ['small_a', 'small_b']
  assert 'sharpe' in done.stdout


def test_diagnose(quickstart, repo_root, tmp_path):
  workdir, _ = quickstart
  out = tmp_path / 'diag.json'
  done = run(repo_root, 'diagnose.py', f'--checkpoints={workdir / "train"}', f'--output={out}')
  report = json.loads(out.read_text())
  (model,) = report['models'].values()
  assert sum(sum(row) for row in model['confusion']) == model['bars'] > 10_000
  assert set(model['predicted_share']) == {'SELL', 'HOLD', 'BUY'}
  assert 'confusion' in done.stdout


@pytest.mark.slow
def test_backtest_selects_a_policy_on_validation_with_the_config_flag(repo_root, tmp_path):
  out = tmp_path / 'select'
  done = run(repo_root, 'backtest.py', '--checkpoints=checkpoints/small_a', f'--outdir={out}',
             '--config.policy.mode=select', '--config.policy.grid.entry=0.2,0.4',
             '--config.policy.grid.min_hold=0,24', '--config.policy.grid.sizing=fixed',
             *FAST_STATS)
  results = check_reports(out)
  policy = results['policy']  # entries x exits x min_holds x cooldowns, plus 4 seed policies
  assert policy['mode'] == 'select' and policy['num_trials'] == 2 * 4 * 2 * 2 + 4
  assert results['config']['policy']['mode'] == 'select'
  assert 'decision policy: select' in done.stdout and 'cost drag' in done.stdout
  assert (out / 'policy_selection.csv').exists()


@pytest.mark.parametrize('flags, message', [
    (['--config.policy.mode=best'], "policy.mode='best'"),
    (['--strategy=majority'], "unknown strategy 'majority'"),
    (['--confidence_threshold=1.5'], 'must be in [0, 1]'),
    (['--checkpoints=no/such/run'], 'no such checkpoint directory'),
    (['--config.dataset=btc_usdt_1h_2020_2024'],
     'in-sample backtest refused: checkpoints/small_a used 43,848 of the backtest bars'),
])
def test_wrong_flags_fail_with_one_clear_line(repo_root, tmp_path, flags, message):
  done = run(repo_root, 'ensemble_backtest.py', *flags, f'--outdir={tmp_path}', check=False)
  assert done.returncode != 0
  last = done.stderr.strip().splitlines()[-1]
  assert last.startswith('error: ') and message in last
  assert 'Traceback' not in done.stderr


def test_backtest_reports_filled_gaps_and_large_moves(repo_root, tmp_path):
  bars = data.builtin_dataset('btc_usdt_1h_2025_2026').iloc[:600].copy()
  bars.iloc[500:, :4] *= 1000  # a unit error from bar 500 on
  bars.drop(bars.index[100:172]).to_csv(tmp_path / 'bars.csv')  # three days missing
  out = tmp_path / 'bt'
  done = run(repo_root, 'backtest.py', '--checkpoints=checkpoints/small_a', f'--outdir={out}',
             f'--config.dataset={tmp_path / "bars.csv"}', '--config.calibration.mode=fixed',
             *FAST_STATS)
  assert (f'{tmp_path / "bars.csv"}: 72 missing bar(s) in 1 gap(s), filled with 72 flat '
          'zero-volume bars; the longest, 72 bars, from 2025-01-05 04:00 UTC') in done.stdout
  assert (f'{tmp_path / "bars.csv"}: 1 bar(s) move more than 50% from the previous close; '
          'the largest, ') in done.stdout and 'at bar 2025-01-21 20:00 UTC' in done.stdout
  checks = json.loads((out / 'backtest_results.json').read_text())['data']
  assert checks['interval'] == '1h' and checks['gaps']['filled_bars'] == 72
  assert [t for t, _ in checks['large_moves']] == ['2025-01-21T20:00:00+00:00']
