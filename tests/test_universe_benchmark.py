"""The universe walk-forward benchmark: folds, pooled fold data without look-ahead, trials
whose earlier decisions ignore later bars, a resumable run and its report."""

import dataclasses
import json
import os
import pathlib
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

from himari_jax import config as config_lib
from himari_jax.data import ohlcv
from himari_jax.data import universe as universe_lib
from himari_jax.research import universe_benchmark as ub
from himari_jax.research import universe_report

UNIVERSE = pathlib.Path(__file__).resolve().parents[1] / 'data' / 'universe'


def _config(**folds):
  config = config_lib.load_config('benchmark:universe_smoke')
  config.data.universe = str(UNIVERSE)
  config.data.symbols = 'BTC,ETH,BNB,ADA'
  config.models = 'buy_and_hold,reversal,momentum,logistic'
  config.baselines.logistic = {'steps': 20}
  config.folds.update({'test_start': '2019-01-01', 'test_months': 1, 'train_months': 3,
                       'max_folds': 1, **folds})
  return config


@pytest.fixture(scope='module')
def panel():
  return ub.load_panel(_config())


def test_folds_are_quarters_of_listed_coins_and_refuse_a_window_before_the_data(panel):
  config = _config(max_folds=0, test_months=3, train_months=12, test_end='2019-10-01',
                   min_listed=0.8)
  folds = ub.plan_folds(panel, config)
  assert [f.test_start.strftime('%Y-%m-%d') for f in folds] == [
      '2019-01-01', '2019-04-01', '2019-07-01']
  assert folds[0].train_start == pd.Timestamp('2018-01-01', tz='UTC')
  assert folds[0].symbols == ('BTC', 'ETH', 'BNB')  # ADA lists 2018-04-17: 71 % of the year
  assert folds[2].symbols == ('BTC', 'ETH', 'BNB', 'ADA')
  with pytest.raises(config_lib.ConfigError, match='before the panel starts'):
    ub.plan_folds(panel, _config(test_start='2017-10-01'))
  assert config_lib.load_config('configs/benchmark.py:universe_cpu').folds.test_end == (
      '2022-10-01')


def test_fold_training_rows_end_an_embargo_before_the_test_window(panel):
  config = _config()
  fold = ub.plan_folds(panel, config)[0]
  data = ub.fold_inputs(config, panel, ub._raw_features(config, panel), fold)
  embargo = pd.Timedelta(hours=config.labels.horizon)
  for f in data.prepared.summary['files']:
    assert pd.Timestamp(f['last']) < fold.test_start - embargo + pd.Timedelta(hours=1)
  assert data.prepared.summary['split'] == 'time'
  assert list(data.prepared.normalizers) == ['btc_usdt', 'eth_usdt', 'bnb_usdt', 'ada_usdt']
  for coin in data.coins.values():
    assert coin['test'].any() and np.isfinite(coin['features']).all()


def test_decisions_before_t_ignore_every_bar_after_t(tmp_path):
  """One coin's prices moved after t inside the test window: IC, timing and long-short
  returns of every bar before t are unchanged, on every coin's decisions."""
  config = _config()
  panel = universe_lib.load_universe(UNIVERSE, symbols=['BTC', 'ETH', 'BNB', 'ADA'],
                                     start='2018-09-01', end='2019-02-15')
  fold = ub.plan_folds(panel, config)[0]
  t = fold.test_start + pd.Timedelta(days=10)
  later = (panel.index > t)[:, None] & (np.arange(panel.num_assets) == 1)[None, :]
  moved = dataclasses.replace(
      panel, **{c: np.where(later, getattr(panel, c) * 1.07, getattr(panel, c))
                for c in ('open', 'high', 'low', 'close')})
  out = []
  for p in (panel, moved):
    data = ub.fold_inputs(config, p, ub._raw_features(config, p), fold)
    out.append({m: ub.run_universe_trial(config, p, fold, data, m, 0, str(tmp_path))[1]
                for m in ('logistic', 'reversal')})
  bars = pd.date_range(fold.test_start, fold.test_end, freq='h', inclusive='left')
  before = np.flatnonzero(bars <= t)
  known = np.flatnonzero(bars + pd.Timedelta(hours=config.labels.horizon) <= t)
  for model in out[0]:
    a, b = out[0][model], out[1][model]
    np.testing.assert_array_equal(a['rank_ic'][known], b['rank_ic'][known])
    for name in ('timing_returns', 'long_short_returns'):
      np.testing.assert_array_equal(a[name][before], b[name][before])
    assert not np.array_equal(a['timing_returns'], b['timing_returns'])


def test_a_run_writes_the_table_resumes_and_refuses_other_settings(tmp_path):
  config = _config()
  lines = []
  result = ub.run_universe_benchmark(config, str(tmp_path), log=lines.append)
  records = [json.loads(x) for x in (tmp_path / ub.RESULTS).read_text().splitlines()]
  assert [(r['model'], r['fold'], r['seed']) for r in records] == [
      ('buy_and_hold', 0, 0), ('reversal', 0, 0), ('momentum', 0, 0), ('logistic', 0, 0)]
  assert any('ETA' in line for line in lines)
  by_model = {r['model']: r for r in records}
  assert by_model['buy_and_hold']['rank_ic'] is None  # one score for every coin
  assert by_model['reversal']['rank_ic']['mean'] == pytest.approx(
      -by_model['momentum']['rank_ic']['mean'])
  assert set(by_model['logistic']['per_coin_ic']) == {'BTC', 'ETH', 'BNB', 'ADA'}
  assert by_model['logistic']['long_short']['num_fills'] > 0
  # The same book without shorting cost pays no borrow and ends no lower; long-only borrows
  # nothing.
  assert by_model['logistic']['long_short_free']['borrow'] == 0
  assert by_model['logistic']['long_short']['borrow'] > 0
  assert (by_model['logistic']['long_short_free']['net_total_return']
          >= by_model['logistic']['long_short']['net_total_return'])
  assert by_model['logistic']['top_k']['borrow'] == 0 and by_model['logistic']['top_k'][
      'num_fills'] > 0
  table = (tmp_path / universe_report.REPORT).read_text()
  assert table.startswith('| model | seeds | rank IC | NW t | p (Holm) | top-bottom quintile',
                          table.index('| model |'))
  assert '## Answers, stated as tests' in table and 'placebo' in table
  assert [r['model'] for r in result['rows']] == [
      'buy_and_hold', 'reversal', 'momentum', 'logistic', 'equal_weight (benchmark)',
      'btc_hold (benchmark)']
  assert '| equal_weight (benchmark) | 0 | n/a | n/a | n/a |' in table
  tests = json.loads((tmp_path / 'universe_tests.json').read_text())
  assert set(tests['long_short']) == {'buy_and_hold', 'reversal', 'momentum', 'logistic'}
  assert tests['long_short']['buy_and_hold'] is None  # nothing to rank
  assert tests['long_short']['reversal']['placebo_runs'] == config.tests.null_rotations
  again = []
  ub.run_universe_benchmark(config, str(tmp_path), log=again.append)
  assert '4 trials; 4 done, 0 to run' in again
  config.portfolio.k = 2
  with pytest.raises(config_lib.ConfigError, match='another --workdir'):
    ub.run_universe_benchmark(config, str(tmp_path), log=again.append)


def test_unknown_models_are_refused_and_missing_extras_skipped_with_the_reason():
  config = _config()
  config.models = 'reversal,nope'
  with pytest.raises(config_lib.ConfigError, match='unknown nope'):
    ub.model_names(config)
  config.models = 'reversal,lightgbm'
  lines = []
  names = ub.model_names(config, lines.append)
  assert names[0] == 'reversal'
  assert names == ['reversal', 'lightgbm'] or lines[0].startswith('lightgbm skipped: ')


def test_models_name_their_feature_set_and_the_report_tests_the_market_context(tmp_path):
  config = _config()
  config.models = 'reversal@himari'
  with pytest.raises(config_lib.ConfigError, match='reads no features'):
    ub.model_names(config)
  config.models = 'logistic@nope'
  with pytest.raises(config_lib.ConfigError, match='unknown feature set'):
    ub.model_names(config)
  config.models = 'logistic,logistic@himari'
  config.tests.compare = 'logistic:logistic@himari,logistic:lightgbm_x'
  config.tests.num_resamples = 100
  result = ub.run_universe_benchmark(config, str(tmp_path), log=lambda line: None)
  records = [json.loads(x) for x in (tmp_path / ub.RESULTS).read_text().splitlines()]
  assert records[0]['settings'] != records[1]['settings']  # the feature set is a setting
  assert records[0]['ic']['mean'] != records[1]['ic']['mean']
  context = result['tests']['context']
  assert [(c['a'], c['b']) for c in context] == [('logistic', 'logistic@himari')]
  assert context[0]['rank_ic']['estimate'] == pytest.approx(
      context[0]['rank_ic']['mean'])  # the Newey-West mean of the per-bar difference
  assert np.isfinite(context[0]['coin_sharpe']['min_detectable'])
  compare = result['tests']['compare']
  assert 'not_run' in compare[1] and 'lightgbm_x' in compare[1]['not_run']
  table = (tmp_path / universe_report.REPORT).read_text()
  assert '### 4. Market context' in table and 'logistic minus logistic@himari' in table
  assert 'detects only effects of' in table or '**decided**' in table


def test_any_folder_of_coin_files_is_a_universe(tmp_path):
  """`--config.data.universe=<folder>` with every file's coin: here three coins copied."""
  import shutil
  folder = tmp_path / 'coins'
  folder.mkdir()
  for name in ('btc', 'eth', 'xrp'):
    shutil.copy(next(UNIVERSE.glob(f'{name}_usdt_1h_*.csv.gz')), folder)
  config = _config()
  config.data.universe = str(folder)
  config.data.symbols = ''
  config.models = 'reversal'
  result = ub.run_universe_benchmark(config, str(tmp_path / 'run'), log=lambda line: None)
  record = json.loads((tmp_path / 'run' / ub.RESULTS).read_text().splitlines()[0])
  assert sorted(record['fold_bounds']['symbols']) == ['BTC', 'ETH', 'XRP']
  assert result['rows'][0]['model'] == 'reversal'


def test_a_fold_runner_ships_without_its_caches():
  """With --ray_address each fold is one Ray task: the runner pickles without the panel it
  loaded, and a worker loads its own."""
  import pickle
  runner = ub.FoldRunner(_config(), '/nonexistent')
  assert runner.panel.num_assets == 4
  clone = pickle.loads(pickle.dumps(runner))
  assert clone._panel is None and clone._raw == {} and clone.config == runner.config


def test_bar_spacing_is_read_in_any_index_unit():
  """A panel cut by dates has a second-resolution index; its spacing is still one hour."""
  index = pd.date_range(pd.Timestamp('2019-01-01', tz='UTC'), periods=5, freq='h').as_unit('s')
  assert ohlcv.infer_freq(index) == pd.Timedelta(hours=1)
  frame = pd.DataFrame({'close': np.ones(4)}, index=index.delete(2))
  assert ohlcv.find_gaps(frame).to_dict()['count'] == 1


@pytest.mark.slow
def test_a_pooled_flag_trader_trains_per_fold_and_scores_every_coin(tmp_path):
  config = _config()
  tiny = config_lib.load_config('flag_trader:tiny')
  tiny.train.update(num_epochs=1, steps_per_epoch=4, checkpoint_every_steps=0, keep_latest=1)
  config.flag_traders.flag_trader = tiny
  config.models = 'flag_trader'
  result = ub.run_universe_benchmark(config, str(tmp_path), log=lambda line: None)
  record = json.loads((tmp_path / ub.RESULTS).read_text().splitlines()[0])
  assert record['model'] == 'flag_trader' and np.isfinite(record['rank_ic']['mean'])
  assert set(record['per_coin_ic']) == {'BTC', 'ETH', 'BNB', 'ADA'}
  run = tmp_path / 'trials' / 'flag_trader' / 'fold_000' / 'seed_0' / 'run'
  saved = json.loads(next(run.glob('checkpoints/*/meta/metadata')).read_text())
  assert list(saved['normalizers']) == ['btc_usdt', 'eth_usdt', 'bnb_usdt', 'ada_usdt']
  assert result['rows'][0]['model'] == 'flag_trader'


@pytest.mark.slow
def test_launch_benchmark_runs_a_universe_variant(tmp_path, repo_root):
  """`launch/benchmark.py --config=configs/benchmark.py:universe_smoke` takes the universe
  branch (here with one rule model and one fold to stay quick)."""
  env = {**os.environ, 'PYTHONPATH': str(repo_root)}
  done = subprocess.run(
      [sys.executable, 'launch/benchmark.py', '--config=configs/benchmark.py:universe_smoke',
       f'--workdir={tmp_path}', '--config.models=reversal', '--config.folds.max_folds=1'],
      cwd=repo_root, env=env, capture_output=True, text=True, timeout=300)
  assert done.returncode == 0, done.stderr[-2000:]
  assert '| reversal | 1 |' in (tmp_path / universe_report.REPORT).read_text()


# ray.init starts its raylet with fork+exec (no Python runs in the child), which JAX warns about.
@pytest.mark.extra
@pytest.mark.filterwarnings('ignore:os.fork:RuntimeWarning')
def test_folds_as_ray_tasks_give_the_in_process_results(tmp_path):
  ray = pytest.importorskip('ray')
  config = _config(max_folds=2)
  config.models = 'reversal,logistic'
  local = ub.run_universe_benchmark(config, str(tmp_path / 'local'), log=lambda line: None)
  ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
  try:
    remote = ub.run_universe_benchmark(config, str(tmp_path / 'ray'), ray_address='local',
                                       log=lambda line: None)
  finally:
    ray.shutdown()
  keys = ('rank_ic', 'long_short_sharpe', 'timing_sharpe')
  for here, there in zip(local['rows'], remote['rows'], strict=True):
    for key in keys:
      assert here.get(key) == pytest.approx(there.get(key), nan_ok=True)
  lines = (tmp_path / 'ray' / ub.RESULTS).read_text().splitlines()
  assert len(lines) == 4
