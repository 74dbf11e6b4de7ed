"""Walk-forward: fold index arithmetic, series loading, and a resumed two-fold run."""

import json
import os
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
from conftest import load_config_file

from himari_jax.backtest import policy_search
from himari_jax.data import ohlcv as data
from himari_jax.data import windows
from himari_jax.data.features import WARMUP_BARS
from himari_jax.inference import members
from himari_jax.research import walkforward
from himari_jax.stats import metrics, significance

H = 6  # label horizon of the threshold rule, the default embargo


def _check_fold_invariants(fold, *, embargo, val_fraction):
  # Bars in the fold's file: warm-up history, train, embargo, validation; none at or after
  # the test window, and a label read `H` bars ahead from any of them stays before it.
  assert 0 <= fold.data.start and fold.train.start == fold.data.start + WARMUP_BARS
  assert fold.train.start < fold.train.stop <= fold.val.start < fold.val.stop == fold.data.stop
  assert fold.train.stop + embargo == fold.val.start
  assert fold.data.stop + embargo == fold.test.start < fold.test.stop
  assert fold.train.stop - 1 + H < fold.val.start
  assert fold.val.stop - 1 + H < fold.test.start
  # The same split input_pipeline.prepare_data makes of the fold's file.
  split = windows.chronological_split(fold.data.stop - fold.data.start, val=val_fraction,
                                      embargo=embargo)
  assert fold.data.start + split.train.stop == fold.train.stop
  assert fold.data.start + split.val.start == fold.val.start


def test_rolling_folds_tile_the_test_range_after_an_embargo():
  folds = walkforward.make_folds(10_000, train_bars=2000, test_bars=500, embargo=H,
                                 val_fraction=0.2)
  assert folds[0].test.start == WARMUP_BARS + 2000 + H
  assert [f.index for f in folds] == list(range(len(folds)))
  for fold in folds:
    _check_fold_invariants(fold, embargo=H, val_fraction=0.2)
    assert fold.val.stop - fold.train.start == 2000  # every window the same length
  # Test windows never overlap and cover every bar from the first test bar to the end.
  tested = np.concatenate([np.arange(f.test.start, f.test.stop) for f in folds])
  np.testing.assert_array_equal(tested, np.arange(folds[0].test.start, 10_000))
  assert [f.test.stop - f.test.start for f in folds] == [500] * (len(folds) - 1) + [
      (10_000 - folds[0].test.start) % 500 or 500]
  # Each window rolls forward by the test length.
  starts = np.array([f.train.start for f in folds])
  assert (np.diff(starts) == 500).all()


def test_expanding_folds_keep_their_start_and_grow():
  kwargs = dict(train_bars=1000, test_bars=300, embargo=24, first_test=3000, end=4200)
  expanding = walkforward.make_folds(5000, mode='expanding', **kwargs)
  rolling = walkforward.make_folds(5000, mode='rolling', **kwargs)
  assert expanding[0] == rolling[0]
  assert [f.test.start for f in expanding] == [3000, 3300, 3600, 3900]
  assert expanding[-1].test.stop == 4200
  for fold in expanding:
    _check_fold_invariants(fold, embargo=24, val_fraction=0.15)
    assert fold.train.start == 3000 - 24 - 1000
    assert fold.val.stop - fold.train.start == 1000 + fold.test.start - 3000


def test_step_longer_than_test_leaves_untested_bars():
  folds = walkforward.make_folds(6000, train_bars=1000, test_bars=200, step_bars=500,
                                 embargo=H)
  assert [(f.test.start, f.test.stop) for f in folds][:2] == [(1174, 1374), (1674, 1874)]
  for fold in folds:
    _check_fold_invariants(fold, embargo=H, val_fraction=0.15)


@pytest.mark.parametrize('kwargs, message', [
    (dict(step_bars=100), 'test bars twice'),
    (dict(first_test=1000), 'start testing later'),
    (dict(first_test=5900, end=5000), 'no test window'),
    (dict(mode='anchored'), 'mode'),
    (dict(train_bars=20), 'no training or validation'),
])
def test_make_folds_rejects_impossible_settings(kwargs, message):
  args = {'train_bars': 1000, 'test_bars': 200, 'embargo': H, **kwargs}
  with pytest.raises(ValueError, match=message):
    walkforward.make_folds(6000, **args)


def test_asset_series_spans_every_era_without_gaps():
  names = walkforward.asset_datasets('btc')
  assert names == ['btc_usdt_1h_2017_2019', 'btc_usdt_1h_2020_2024', 'btc_usdt_1h_2025_2026']
  df = walkforward.load_series(names)
  assert df.index[0] == pd.Timestamp('2017-08-17 04:00', tz='UTC')
  assert df.index[-1] == pd.Timestamp('2026-04-15 23:00', tz='UTC')
  assert (np.diff(df.index.asi8) == 3600 * 10**9).all()
  with pytest.raises(data.DataError, match='oldest first'):
    walkforward.load_series('btc_usdt_1h_2025_2026,btc_usdt_1h_2020_2024')
  with pytest.raises(data.DataError, match='bundled assets: btc, eth'):
    walkforward.asset_datasets('doge')


def test_finetune_starts_each_fold_from_the_previous_run():
  config = load_config_file('walk_forward', 'tiny')
  config.embargo = 12
  fold_config = walkforward.fold_training_config(config, 'wf/fold_001/train.csv',
                                                 'wf/fold_000')
  assert fold_config.data.train == 'wf/fold_001/train.csv'
  assert fold_config.train.init_from == 'wf/fold_000'
  assert fold_config.data.embargo == 12 and fold_config.data.max_bars is None
  assert config.data.train == '' and config.train.init_from == ''


def test_auto_track_record_says_when_the_selection_trailed():
  record = policy_search.auto_track_record([0.5, -1.0, np.nan, -0.2])
  assert record['trails'] and record['folds'] == 3 and record['trailing_folds'] == 2
  assert record['mean_difference'] == pytest.approx(-0.7 / 3)
  assert record['line'] == ('auto falls back to the seed rule: the selected policy trailed it '
                            'on 2 of 3 folds (mean difference -0.23 net Sharpe)')
  ahead = policy_search.auto_track_record([0.3, -0.1])
  assert not ahead['trails'] and ahead['trailing_folds'] == 1
  assert ahead['line'].startswith('the selected policy did not trail the seed rule')
  for empty in ([], [np.nan]):
    none = policy_search.auto_track_record(empty)
    assert not none['trails'] and none['folds'] == 0 and none['mean_difference'] is None


def _fake_folds(df, policies):
  """Folds testing consecutive 300-bar windows of `df`, each with a search record: `policies`
  gives (mode, selected policy) per fold, probabilities from a trailing momentum."""
  closes = df['close'].to_numpy()
  momentum = np.concatenate([np.zeros(24), closes[24:] / closes[:-24] - 1])
  logits = np.stack([-60 * momentum, np.full(len(closes), 0.3), 60 * momentum], axis=1)
  probs = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
  results = []
  for k, (mode, policy) in enumerate(policies):
    test = slice(300 * (k + 1), 300 * (k + 2))
    summary = {'mode': mode, 'num_trials': 9}
    if mode == 'select':
      summary['policy'] = policy
    elif policy is not None:
      summary.update(policy='argmax + confidence_threshold 0, sizing confidence',
                     selected_policy=policy)
    results.append(walkforward.FoldResult(
        fold=walkforward.Fold(k, slice(0, 1), slice(0, 1), slice(0, 1), test),
        record={'policy': summary}, actions=np.argmax(probs[test], axis=1),
        confidence=np.max(probs[test], axis=1), available=np.ones(300, bool),
        probs=probs[test]))
  return results


def test_selected_policy_and_seed_rule_side_by_side_and_auto_falls_back_causally():
  from himari_jax.backtest import engine, policy

  df = data.builtin_dataset('btc_usdt_1h_2025_2026').iloc[:1500]
  config = load_config_file('walk_forward', 'tiny').backtest
  chosen = policy.policy_to_dict(policy.make_policy(entry=0.1, sizing='fixed'))
  results = _fake_folds(df, [('select', chosen), ('seed', chosen), ('seed', None),
                             ('select', chosen)])
  versus = walkforward.selection_vs_seed(df, results, config)
  rows = versus['folds']
  assert [row['fold'] for row in rows] == [0, 1, 2, 3]
  params = engine.params_from_config(config)
  for row, result in zip(rows, results, strict=True):
    test_df = df.iloc[result.fold.test]
    seed = engine.run_backtest(test_df, result.actions, result.confidence, params)
    returns = metrics.period_returns(seed.equity, params.initial_capital)
    assert row['seed_sharpe'] == pytest.approx(significance.sharpe_ratio(returns), rel=1e-6)
  assert np.isnan(rows[2]['selected_sharpe']) and np.isnan(rows[2]['difference'])
  run = policy.run_policy(df.iloc[results[1].fold.test], results[1].probs,
                          policy.make_policy(**chosen), params)
  assert rows[1]['selected_sharpe'] == pytest.approx(significance.sharpe_ratio(
      metrics.period_returns(run.equity, params.initial_capital)), rel=1e-6)
  differences = [rows[k]['difference'] for k in (0, 1, 3)]
  assert versus['mean_difference'] == pytest.approx(np.mean(differences))
  assert versus['pooled']['folds'] == 3 and versus['pooled']['bars'] == 900
  assert versus['track_record']['folds'] == 3
  lines = walkforward.selection_vs_seed_lines(versus)
  assert lines[-1] == f'  {versus["track_record"]["line"]}'
  assert lines[1].startswith('  fold 0: seed rule ') and 'selected - seed' in lines[1]

  # 'auto': fold k reads the record of folds 0..k-1 only.
  config.policy.mode = 'auto'
  select = [('select', chosen)] * 4
  decided, records = walkforward.apply_track_record(_fake_folds(df, select),
                                                    [-0.5, 0.2, 0.9, np.nan], config)
  assert [r['trails'] for r in records] == [False, True, True, False]  # means -0.5, -0.15, 0.2
  assert [r.policy is None for r in decided] == [False, True, True, False]
  overruled = decided[1].record['policy']
  assert overruled['mode'] == 'seed' and overruled['selected_policy'] == chosen
  assert overruled['track_record'] == records[1]['line'] == (
      'auto falls back to the seed rule: the selected policy trailed it on 1 of 1 folds (mean '
      'difference -0.50 net Sharpe)')
  config.policy.mode = 'select'  # only 'auto' falls back
  decided, _ = walkforward.apply_track_record(_fake_folds(df, select), [-0.5] * 4, config)
  assert all(r.policy is not None for r in decided)


@pytest.fixture
def workdir(tmp_path):
  """A run folder. The launcher and the in-process run below share the suite's compilation
  cache (tests/conftest.py), so the in-process run reuses the steps the launcher compiled."""
  return tmp_path / 'wf'


def _mtimes(folder):
  return {os.path.join(root, name): os.stat(os.path.join(root, name)).st_mtime_ns
          for root, _, files in os.walk(folder) for name in files}


# Each fold picks its policy from a small grid on its own validation bars (the tiny model
# trades too rarely for 20 round trips there, and too rarely for a round trip in each of 3
# windows of its 180 validation bars: flat selection).
SELECT_FLAGS = ('--config.policy.mode=select', '--config.policy.grid.entry=0.1,0.3',
                '--config.policy.grid.min_hold=0,6', '--config.policy.grid.sizing=fixed',
                '--config.policy.min_round_trips=1', '--config.policy.nested_windows=1')


@pytest.mark.slow
def test_two_folds_train_before_their_test_windows_and_resume(workdir, repo_root):
  done = subprocess.run(
      [sys.executable, str(repo_root / 'launch' / 'walk_forward.py'),
       '--config=configs/walk_forward.py:tiny', f'--workdir={workdir}', *SELECT_FLAGS],
      capture_output=True, text=True, cwd=repo_root, timeout=600,
      env={**os.environ, 'JAX_PLATFORMS': 'cpu'})
  assert done.returncode == 0, done.stderr[-3000:]
  assert 'fold 2/2' in done.stderr
  for heading in ('per fold', 'stitched out-of-sample backtest', 'block-bootstrap CI'):
    assert heading in done.stdout

  config = load_config_file('walk_forward', 'tiny')
  config.policy.update(mode='select', min_round_trips=1, nested_windows=1)
  config.policy.grid.update(entry='0.1,0.3', min_hold='0,6', sizing='fixed')
  df = walkforward.load_series(walkforward.asset_datasets('btc'))
  folds = walkforward.folds_for(config, df)
  assert len(folds) == 2
  assert df.index[folds[0].test.start] == pd.Timestamp('2025-06-01', tz='UTC')
  for fold in folds:
    fold_dir = workdir / f'fold_{fold.index:03d}'
    # What the fold really trained on: its file and the split its run recorded.
    trained = data.load_ohlcv(fold_dir / walkforward.TRAIN_FILE)
    assert trained.index[0] == df.index[fold.data.start]
    assert trained.index[-1] == df.index[fold.data.stop - 1]
    assert trained.index[-1] + pd.Timedelta(hours=H) < df.index[fold.test.start]
    summary = members.load_member(str(fold_dir)).meta['data']
    assert summary['embargo'] == H
    assert summary['files'][0]['bars'] == fold.data.stop - fold.data.start
    assert summary['files'][0]['train_bars'] == fold.train.stop - fold.data.start
    assert summary['files'][0]['val_bars'] == fold.val.stop - fold.val.start
    with np.load(fold_dir / walkforward.PREDICTIONS) as saved:
      np.testing.assert_array_equal(saved['time'], df.index[fold.test].asi8)
      assert saved['available'].all()
    record = json.loads((fold_dir / walkforward.FOLD_JSON).read_text())
    chosen = record['policy']  # on the fold's validation bars, which end before its test
    assert chosen['mode'] == 'select' and chosen['num_trials'] == 2 * 4 * 2 * 2 + 4
    assert chosen['validation']['last'] == str(df.index[fold.val.stop - 1])
    # Deflated on the fold's own validation bars, by the policies tried there.
    assert chosen['selection']['num_trials'] == chosen['num_trials']
    assert chosen['selection']['num_bars'] == fold.val.stop - fold.val.start

  results = json.loads((workdir / 'backtest_results.json').read_text())
  assert len(results['curves']['time']) == 480 and len(results['folds']) == 2
  assert results['curves']['time'][0] == df.index[folds[0].test.start].isoformat()
  assert results['available_bars'] == 480
  assert results['significance']['test_psr']['num_observations'] == 480
  assert set(results['policy']['folds']) == {'0', '1'}
  assert all('selection' in f and 'null' in f for f in results['policy']['folds'].values())
  assert 'attribution' in results and 'decision policy' in done.stdout
  table = (workdir / walkforward.FOLDS_CSV).read_text()
  folds_csv = pd.read_csv(workdir / walkforward.FOLDS_CSV)
  assert list(folds_csv['test_bars']) == [240, 240]
  # Each fold's selected policy against the seed rule on its test window, and the record.
  assert list(folds_csv['traded']) == ['select', 'select']
  np.testing.assert_allclose(folds_csv['selected_minus_seed'],
                             folds_csv['selected_sharpe'] - folds_csv['seed_sharpe'])
  versus = results['selection_vs_seed']
  assert [row['fold'] for row in versus['folds']] == [0, 1]
  assert versus['pooled']['bars'] == 480 and 'line' in versus['track_record']
  assert "selected policy vs seed rule on each fold's test window" in done.stdout
  assert versus['track_record']['line'] in done.stdout
  assert 'fold 1: selection: flat over the validation bars, sharpe_lcb: selected policy ' in (
      done.stdout)

  # A run stopped after fold 1: fold 0 is read back, not retrained; fold 1 is redone.
  kept = _mtimes(workdir / 'fold_000')
  os.remove(workdir / 'fold_001' / walkforward.PREDICTIONS)
  second = walkforward.run_walk_forward(config, str(workdir), log=lambda _: None)
  assert _mtimes(workdir / 'fold_000') == kept
  assert (workdir / walkforward.FOLDS_CSV).read_text() == table
  again = json.loads((workdir / 'backtest_results.json').read_text())
  for key in ('metrics', 'benchmark', 'significance', 'action_counts', 'curves'):
    assert again[key] == results[key], key
  assert second['metrics'] == results['metrics']

  # Other policy settings: each fold's policy is chosen again; no model is retrained.
  models = {k: v for k, v in _mtimes(workdir / 'fold_000').items() if 'checkpoints' in k}
  config.policy.mode = 'seed'
  seeded = walkforward.run_walk_forward(config, str(workdir), log=lambda _: None)
  assert seeded['policy']['num_trials'] == 1 and 'seed' in seeded['policy']['mode']
  record = json.loads((workdir / 'fold_000' / walkforward.FOLD_JSON).read_text())
  assert record['policy']['mode'] == 'seed' and 'selection' not in record['policy']
  assert {k: v for k, v in _mtimes(workdir / 'fold_000').items()
          if 'checkpoints' in k} == models

  # Another fold layout in the same workdir is refused, not mixed in.
  config.test_bars = 120
  with pytest.raises(ValueError, match='other walk-forward settings'):
    walkforward.run_walk_forward(config, str(workdir), log=lambda _: None)


# ray.init starts its raylet with fork+exec (no Python runs in the child), which JAX warns about.
@pytest.mark.extra
@pytest.mark.filterwarnings('ignore:os.fork:RuntimeWarning')
def test_folds_trained_on_ray_match_in_process(tmp_path, repo_root):
  ray = pytest.importorskip('ray')
  config = load_config_file('walk_forward', 'tiny')
  here = walkforward.run_walk_forward(config, str(tmp_path / 'here'), log=lambda _: None)
  # Workers import this checkout's package and run JAX on the CPU, like this process.
  ray.init(num_cpus=2, log_to_driver=False, include_dashboard=False, runtime_env={
      'env_vars': {'PYTHONPATH': str(repo_root), 'JAX_PLATFORMS': 'cpu'}})
  try:
    lines = []
    remote = walkforward.run_walk_forward(config, str(tmp_path / 'ray'), ray_address='auto',
                                          log=lines.append)
    assert 'training 2 of 2 folds on Ray at auto' in lines
    # Resumed with Ray: nothing left to train, every fold is read back.
    kept = _mtimes(tmp_path / 'ray' / 'fold_000')
    lines.clear()
    walkforward.run_walk_forward(config, str(tmp_path / 'ray'), ray_address='auto',
                                 log=lines.append)
    assert 'training 0 of 2 folds on Ray at auto' in lines
    assert _mtimes(tmp_path / 'ray' / 'fold_000') == kept
  finally:
    ray.shutdown()
  for k in range(2):
    with (np.load(tmp_path / 'here' / f'fold_{k:03d}' / walkforward.PREDICTIONS) as a,
          np.load(tmp_path / 'ray' / f'fold_{k:03d}' / walkforward.PREDICTIONS) as b):
      for name in ('actions', 'confidence', 'available', 'probs', 'time'):
        np.testing.assert_array_equal(a[name], b[name], err_msg=f'fold {k} {name}')
  pd.testing.assert_frame_equal(remote['folds'], here['folds'])
  assert remote['metrics'] == here['metrics']


def test_ray_refuses_chained_finetune_folds(tmp_path):
  config = load_config_file('walk_forward', 'tiny')
  config.per_fold = 'finetune'
  with pytest.raises(ValueError, match='per_fold=retrain'):
    walkforward.run_walk_forward(config, str(tmp_path), ray_address='auto', log=lambda _: None)
