"""Benchmark: end to end on the tiny variant, resume, equal folds and labels for every model."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from himari_jax import config as config_lib
from himari_jax.research import baselines, benchmark, benchmark_folds
from himari_jax.stats import significance

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _run(config, workdir):
  lines = []
  summary = benchmark.run_benchmark(config, str(workdir), log=lines.append)
  return summary, lines


@pytest.fixture(scope='module')
def tiny_run(tmp_path_factory):
  workdir = tmp_path_factory.mktemp('bench')
  summary, lines = _run(config_lib.benchmark_config('tiny'), workdir)
  return workdir, summary, lines


def _records(workdir):
  return benchmark.read_results(str(workdir))


def test_tiny_runs_end_to_end(tiny_run):
  workdir, summary, lines = tiny_run
  records = _records(workdir)
  # momentum once per fold, logistic per seed: 2 folds x (1 + 2 seeds).
  assert sorted((r['model'], r['fold'], r['seed']) for r in records) == sorted(
      [('momentum', k, 0) for k in (0, 1)] + [('logistic', k, s) for k in (0, 1) for s in (0, 1)])
  progress = [line for line in lines if line.startswith('[')]
  assert len(progress) == 6 and all('ETA' in line for line in progress)
  report = (workdir / benchmark_folds.REPORT).read_text()
  for text in ('| momentum |', '| logistic |', 'net Sharpe (95% CI)', 'selection DSR',
               'test PSR (MDS)', '## Wall time'):
    assert text in report
  rows = {r['model']: r for r in summary['rows']}
  assert set(rows) == {'momentum', 'logistic', *benchmark_folds.MARKET_MODELS}
  # Each trial's search is deflated on its own validation bars, by every policy it tried.
  policy_config = config_lib.benchmark_config('tiny').policy
  grid_size = np.size(benchmark_folds.benchmark_policy_grid(policy_config).entry)
  assert summary['num_trials'] == grid_size * len(records)
  assert all(r['policy']['num_trials'] == grid_size for r in records)
  for r in records:
    deflated = r['policy']['selection']
    if deflated is not None:  # None: the winner never traded on validation
      assert deflated['num_trials'] == grid_size
      assert deflated['num_bars'] == r['fold_bounds']['val'][1] - r['fold_bounds']['val'][0]
  assert 0 <= rows['logistic']['test_psr']['psr'] <= 1


def test_stitched_sharpe_matches_the_trial_returns(tiny_run):
  workdir, summary, _ = tiny_run
  records = [r for r in _records(workdir) if r['model'] == 'logistic']
  per_fold = []
  for k in (0, 1):
    arrays = [np.load(os.path.join(benchmark_folds.Trial('logistic', 'btc', k, s).directory(
        str(workdir)), benchmark_folds.TEST_ARRAYS))['net_returns'] for s in (0, 1)]
    per_fold.append((arrays[0] + arrays[1]) / 2)
  returns = np.concatenate(per_fold)
  row = next(r for r in summary['rows'] if r['model'] == 'logistic')
  expected = returns.mean() / returns.std(ddof=1) * np.sqrt(8760)
  np.testing.assert_allclose(row['net_sharpe']['estimate'], expected, rtol=1e-4)
  # Each trial's own net Sharpe is the Sharpe of the returns it saved.
  for r in records:
    saved = np.load(os.path.join(benchmark_folds.Trial('logistic', 'btc', r['fold'], r['seed'])
                                 .directory(str(workdir)), benchmark_folds.TEST_ARRAYS))
    np.testing.assert_allclose(r['backtest']['net_sharpe'],
                               significance.sharpe_ratio(saved['net_returns']), rtol=1e-4)


def test_rerun_skips_finished_trials(tiny_run):
  workdir, _, _ = tiny_run
  before = (workdir / benchmark_folds.RESULTS).read_text()
  npz = os.path.join(benchmark_folds.Trial('logistic', 'btc', 0, 0).directory(str(workdir)),
                     benchmark_folds.TEST_ARRAYS)
  stamp = os.stat(npz).st_mtime_ns
  _, lines = _run(config_lib.benchmark_config('tiny'), workdir)
  assert any('6 done, 0 to run' in line for line in lines)
  assert not any(line.startswith('[') for line in lines)
  assert (workdir / benchmark_folds.RESULTS).read_text() == before
  assert os.stat(npz).st_mtime_ns == stamp


def test_rerun_with_other_folds_is_refused(tiny_run):
  workdir, _, _ = tiny_run
  config = config_lib.benchmark_config('tiny')
  config.folds.train_bars = 1000
  with pytest.raises(config_lib.ConfigError, match='another config'):
    _run(config, workdir)


def test_rerun_with_other_model_settings_is_refused(tiny_run):
  workdir, _, _ = tiny_run
  config = config_lib.benchmark_config('tiny')
  config.baselines.logistic = {'steps': 31}
  with pytest.raises(config_lib.ConfigError, match='other labels, costs, policies or logistic'):
    _run(config, workdir)
  config = config_lib.benchmark_config('tiny')
  config.backtest.commission = 0.002
  with pytest.raises(config_lib.ConfigError, match='use another --workdir'):
    _run(config, workdir)


def test_a_killed_trial_reruns_alone(tmp_path):
  config = config_lib.benchmark_config('tiny')
  config.num_seeds = 1
  _run(config, tmp_path)
  path = tmp_path / benchmark_folds.RESULTS
  lines = path.read_text().splitlines()
  # The last trial was killed while writing its line.
  path.write_text('\n'.join(lines[:-1]) + '\n' + lines[-1][:40])
  _, log = _run(config, tmp_path)
  assert any(f'{len(lines) - 1} done, 1 to run' in line for line in log)
  assert len(path.read_text().splitlines()) == len(lines)
  assert [json.loads(line)['model'] for line in path.read_text().splitlines()] == [
      json.loads(line)['model'] for line in lines]


def _same_folds_and_labels(records):
  by_fold = {}
  for r in records:
    by_fold.setdefault((r['asset'], r['fold']), []).append(r)
  for group in by_fold.values():
    assert len({r['model'] for r in group}) >= 2
    assert all(r['fold_bounds'] == group[0]['fold_bounds'] for r in group)
    assert all(r['label_hash'] == group[0]['label_hash'] for r in group)
    assert all(r['costs'] == group[0]['costs'] for r in group)
  # Different folds have different labels: the hash sees the data.
  hashes = {g[0]['label_hash']['test'] for g in by_fold.values()}
  assert len(hashes) == len(by_fold)


def test_every_model_gets_the_same_folds_and_labels(tiny_run):
  workdir, _, _ = tiny_run
  _same_folds_and_labels(_records(workdir))


def _one_fold_config(models):
  """The tiny benchmark cut to one fold and one seed of `models`."""
  config = config_lib.benchmark_config('tiny')
  config.models = models
  config.num_seeds = 1
  config.folds.test_end = '2025-06-11'  # one fold
  return config


@pytest.mark.slow
def test_flag_trader_trains_per_fold_on_the_same_labels(tmp_path):
  summary, _ = _run(_one_fold_config('label_prior,flag_trader'), tmp_path)
  records = _records(tmp_path)
  assert {r['model'] for r in records} == {'label_prior', 'flag_trader'}
  # FLAG-TRADER's hashes come from its own pipeline run on the CSV it trained on.
  _same_folds_and_labels(records)
  run = benchmark_folds.Trial('flag_trader', 'btc', 0, 0).directory(str(tmp_path))
  assert os.path.isdir(os.path.join(run, 'checkpoints'))
  assert os.path.exists(os.path.join(run, benchmark_folds.TRAIN_FILE))
  ft = next(r for r in summary['rows'] if r['model'] == 'flag_trader')
  assert ft['signal']['balanced_accuracy']['n_folds'] == 1


def test_lightgbm_missing_is_skipped_and_said(tmp_path, monkeypatch):
  reason = 'lightgbm is not installed (pip install "himari-jax[baselines]")'
  available = {name: None for name in baselines.BASELINES}
  monkeypatch.setattr(baselines, 'available_baselines',
                      lambda: {**available, 'lightgbm': reason})
  config = config_lib.benchmark_config('tiny')
  config.models = 'momentum,lightgbm'
  config.folds.test_end = '2025-06-11'
  _, lines = _run(config, tmp_path)
  assert f'lightgbm skipped: {reason}' in lines
  assert {r['model'] for r in _records(tmp_path)} == {'momentum'}
  assert f'**lightgbm skipped**: {reason}' in (tmp_path / benchmark_folds.REPORT).read_text()


def test_gpu_variant_adds_seed_sized_flag_trader_at_t1_and_t64():
  config = config_lib.benchmark_config('gpu')
  models, _ = benchmark.model_kinds(config)
  assert {'flag_trader', 'flag_trader_seed_t1', 'flag_trader_seed_t64'} <= set(models)
  for name, context in (('flag_trader_seed_t1', 1), ('flag_trader_seed_t64', 64)):
    ft = config.flag_traders[name]
    assert (ft.model.d_model, ft.model.num_layers, ft.train.context_length) == (768, 12, context)
  assert config.num_seeds == 3 and config.assets == 'btc,eth'


def test_position_model_is_decided_from_its_position(tmp_path):
  config = _one_fold_config('momentum,mlp_sharpe')
  _run(config, tmp_path)
  records = {r['model']: r for r in _records(tmp_path)}
  _same_folds_and_labels(list(records.values()))
  record = records['mlp_sharpe']
  assert record['calibration']['mode'] == 'skip'  # the classifier next to it is calibrated
  assert records['momentum']['calibration']['mode'] == config.backtest.calibration.mode
  grid_size = np.size(benchmark_folds.benchmark_policy_grid(config.policy).entry)
  assert record['policy']['num_trials'] == grid_size  # selected on validation like the rest
  # The score the policy traded on is the position of the model trained at the benchmark's
  # costs, long-only as its backtests are.
  settings = benchmark.position_settings(config, {**config.baselines.mlp_sharpe, 'seed': 0})
  assert settings['long_only'] and settings['commission'] == config.backtest.commission
  asset = benchmark_folds.load_assets(config)[0]
  data = benchmark_folds.fold_data(config, asset, asset.folds[0])
  n_file = len(data.file)
  model = baselines.make_baseline('mlp_sharpe', **settings).fit(
      data.features[:n_file], data.labels[:n_file], data.train_mask[:n_file],
      close=data.close[:n_file])
  saved = np.load(os.path.join(benchmark_folds.Trial('mlp_sharpe', 'btc', 0, 0).directory(
      str(tmp_path)), benchmark_folds.TEST_ARRAYS))
  position = model.positions(data.features)[data.test]
  np.testing.assert_allclose(saved['score'], position, atol=1e-6)
  assert (position >= 0).all() and (position <= 1).all()


def test_models_trained_on_net_returns_are_listed():
  config = config_lib.benchmark_config('cpu')
  models, _ = benchmark.model_kinds(config)
  assert {'mlp', 'mlp_sharpe', 'flag_trader', 'flag_trader_sharpe'} <= set(models)
  # REINFORCE is available, run when named.
  assert 'flag_trader_reinforce' in config.flag_traders
  assert 'flag_trader_reinforce' not in models


@pytest.mark.slow
def test_flag_traders_on_net_returns_train_on_the_benchmark_costs(tmp_path):
  config = _one_fold_config('momentum,flag_trader_sharpe,flag_trader_reinforce')
  summary, _ = _run(config, tmp_path)
  records = {r['model']: r for r in _records(tmp_path)}
  _same_folds_and_labels(list(records.values()))
  assert records['flag_trader_sharpe']['calibration']['mode'] == 'skip'
  model = baselines.make_baseline('flag_trader', path=benchmark_folds.Trial(
      'flag_trader_sharpe', 'btc', 0, 0).directory(str(tmp_path)))
  assert model.outputs_position and model.trading_objective.kind == 'sharpe'
  assert model.trading_objective.long_only  # the benchmark's backtests are long-only
  score = np.load(os.path.join(benchmark_folds.Trial('flag_trader_sharpe', 'btc', 0, 0).directory(
      str(tmp_path)), benchmark_folds.TEST_ARRAYS))['score']
  assert (score >= 0).all() and (score <= 1).all()
  assert any(r['model'] == 'flag_trader_sharpe' for r in summary['rows'])
  # REINFORCE: an action policy, read as probabilities, and not calibrated to label rates.
  assert records['flag_trader_reinforce']['calibration']['mode'] == 'skip'
  policy = baselines.make_baseline('flag_trader', path=benchmark_folds.Trial(
      'flag_trader_reinforce', 'btc', 0, 0).directory(str(tmp_path)))
  assert not policy.outputs_position and policy.trading_objective.kind == 'reinforce'
  assert policy.trading_objective.long_only
  assert any(r['model'] == 'flag_trader_reinforce' for r in summary['rows'])
  # FLAG-TRADER's trading loss charges fixed costs: other benchmark costs are refused.
  config.backtest.commission = 0.002
  with pytest.raises(config_lib.ConfigError, match='differ from those FLAG-TRADER trains on'):
    _run(config, tmp_path / 'other_costs')


def test_bad_settings_are_named(tmp_path):
  config = config_lib.benchmark_config('tiny')
  config.models = 'momentum,xgboost'
  with pytest.raises(config_lib.ConfigError, match="unknown model 'xgboost'"):
    _run(config, tmp_path)
  config = config_lib.benchmark_config('tiny')
  config.assets = 'btc,btc'
  with pytest.raises(config_lib.ConfigError, match='names an asset twice'):
    _run(config, tmp_path)
  with pytest.raises(ValueError, match='unknown benchmark variant'):
    config_lib.benchmark_config('huge')


def test_assets_accept_csv_paths(tmp_path, tiny_run):
  from himari_jax.data import binance
  from himari_jax.research import walkforward

  df = walkforward.load_series('btc_usdt_1h_2025_2026')
  path = tmp_path / 'XYZ-USDT-1h.csv'
  binance.write_canonical_csv(df, str(path))
  name, spec = benchmark_folds.asset_spec(str(path))
  assert (name, spec) == ('xyz_usdt', str(path))
  config = config_lib.benchmark_config('tiny')
  config.assets = str(path)
  config.models = 'momentum'
  config.folds.test_end = '2025-06-11'
  _run(config, tmp_path / 'run')
  csv_record = _records(tmp_path / 'run')[0]
  bundled = next(r for r in _records(tiny_run[0]) if r['model'] == 'momentum' and r['fold'] == 0)
  assert csv_record['asset'] == 'xyz_usdt'
  # The same bars from a CSV give the same test labels as the bundled files.
  assert csv_record['label_hash']['test'] == bundled['label_hash']['test']


def test_launch_prints_one_error_line(tmp_path):
  env = {**os.environ, 'PYTHONPATH': REPO}
  result = subprocess.run(
      [sys.executable, os.path.join(REPO, 'launch', 'benchmark.py'),
       '--config=' + os.path.join(REPO, 'configs', 'benchmark.py') + ':tiny',
       '--config.assets=' + str(tmp_path / 'missing.csv'), f'--workdir={tmp_path / "w"}'],
      capture_output=True, text=True, env=env, timeout=120)
  assert result.returncode != 0
  assert result.stderr.strip().splitlines()[-1].startswith('error: ')
  assert 'missing.csv' in result.stderr
  assert 'Traceback' not in result.stderr


def test_results_are_json_lines(tiny_run):
  workdir, _, _ = tiny_run
  for line in (workdir / benchmark_folds.RESULTS).read_text().splitlines():
    record = json.loads(line)
    assert {'signal', 'backtest', 'policy', 'label_hash', 'wall_seconds'} <= set(record)


def _without_timings(record):
  return {k: v for k, v in record.items() if k not in ('fit_seconds', 'wall_seconds')}


# ray.init starts its raylet with fork+exec (no Python runs in the child), which JAX warns about.
@pytest.mark.extra
@pytest.mark.filterwarnings('ignore:os.fork:RuntimeWarning')
def test_trials_on_ray_match_in_process_and_resume_the_same_way(tmp_path, tiny_run, repo_root):
  ray = pytest.importorskip('ray')
  here_dir, _, _ = tiny_run
  config = config_lib.benchmark_config('tiny')
  config.num_seeds = 1  # momentum and logistic seed 0 on both folds: 4 trials
  # Workers import this checkout's package and run JAX on the CPU, like this process.
  ray.init(num_cpus=2, log_to_driver=False, include_dashboard=False, runtime_env={
      'env_vars': {'PYTHONPATH': str(repo_root), 'JAX_PLATFORMS': 'cpu'}})
  try:
    lines = []
    benchmark.run_benchmark(config, str(tmp_path), ray_address='auto', log=lines.append)
    assert any('4 trials' in line and '0 done, 4 to run on Ray at auto' in line
               for line in lines)
    assert len([line for line in lines if line.startswith('[')]) == 4
    # A trial whose line never reached results.jsonl reruns alone, on Ray as here.
    path = tmp_path / benchmark_folds.RESULTS
    kept = path.read_text().splitlines()
    path.write_text('\n'.join(kept[:-1]) + '\n')
    lines.clear()
    benchmark.run_benchmark(config, str(tmp_path), ray_address='auto', log=lines.append)
    assert any('3 done, 1 to run on Ray' in line for line in lines)
  finally:
    ray.shutdown()
  remote = {(r['model'], r['fold']): r for r in _records(tmp_path)}
  here = {(r['model'], r['fold']): r for r in _records(here_dir) if r['seed'] == 0}
  assert remote.keys() == here.keys() and len(_records(tmp_path)) == 4
  for key, record in remote.items():
    assert _without_timings(record) == _without_timings(here[key]), key
    trial = benchmark_folds.Trial(key[0], 'btc', key[1], 0)
    with (np.load(os.path.join(trial.directory(str(tmp_path)), benchmark_folds.TEST_ARRAYS)) as a,
          np.load(os.path.join(trial.directory(str(here_dir)), benchmark_folds.TEST_ARRAYS)) as b):
      for name in b.files:
        np.testing.assert_array_equal(a[name], b[name], err_msg=f'{key} {name}')


def test_best_baseline_is_chosen_on_validation(tiny_run):
  workdir, summary, _ = tiny_run
  records = _records(workdir)
  assert all(np.isfinite(r['policy']['val_net_sharpe']) or r['backtest']['num_trades'] == 0
             for r in records)
  rows = {r['model']: r for r in summary['rows']}
  by_val = max(('momentum', 'logistic'), key=lambda m: np.nan_to_num(
      rows[m]['val_net_sharpe'], nan=-np.inf))
  assert summary['best_baseline']['btc'] == by_val
  assert 'Best baseline by validation net Sharpe' in (workdir / benchmark_folds.REPORT).read_text()


def test_market_rows_hold_the_asset_at_the_cap_and_in_full(tiny_run):
  workdir, summary, _ = tiny_run
  rows = {r['model']: r for r in summary['rows']}
  cap, full = rows['buy_and_hold_cap'], rows['buy_and_hold_full']
  market = summary['market']['btc']['total_return']
  # Held in full the gross return tracks the price (each window re-enters at its first close);
  # at a 10 % cap about a tenth of it.
  assert np.sign(full['net_total_return']) == np.sign(market) or abs(market) < 0.01
  assert abs(cap['net_total_return']) < abs(full['net_total_return'])
  assert 0.05 < cap['gross_sharpe']['estimate'] / full['gross_sharpe']['estimate'] < 2.0
  report = (workdir / benchmark_folds.REPORT).read_text()
  assert '| buy_and_hold_cap |' in report and '| buy_and_hold_full |' in report
  assert 'vs_best' in cap
  # Every model is also compared with the market held at the cap.
  assert 0.0 <= rows['logistic']['vs_market']['p_value'] <= 1.0
  assert 'net vs buy_and_hold_cap (95% CI, p)' in report


def test_ic_over_time_pools_the_folds_with_newey_west(tiny_run):
  workdir, summary, _ = tiny_run
  row = next(r for r in summary['rows'] if r['model'] == 'logistic')
  hac = row['ic_over_time']
  assert hac['ic']['lags'] >= 1 and hac['ic']['n_bars'] > 100
  # The pooled IC is a bar-weighted mean of the folds' seed-mean ICs.
  assert min(row['ic_per_fold']) - 0.05 <= hac['ic']['mean'] <= max(row['ic_per_fold']) + 0.05
  assert 0.0 <= hac['ic']['p_value'] <= 1.0
  assert hac['ic']['p_holm'] >= hac['ic']['p_value']
  report = (workdir / benchmark_folds.REPORT).read_text()
  assert 't(1)' in report and 'per-bar IC (NW t; p, Holm p)' in report
  saved = json.loads((workdir / benchmark_folds.SUMMARY).read_text())
  assert 'p_holm' in next(r for r in saved['rows'] if r['model'] == 'logistic')[
      'ic_over_time']['rank_ic']
