"""Tests of research.placebo: the null summary, the empirical p-value, the resumable runner,
and a planted edge against placebo markets through the real backtester."""

import json
import math
import os
import shutil
import sys

import numpy as np
import pytest

from himari_jax.backtest import engine as backtest
from himari_jax.constants import BUY, SELL
from himari_jax.data import ohlcv as data
from himari_jax.data import synthetic
from himari_jax.research import placebo
from himari_jax.stats import metrics, significance

NUM_BARS = 2_000
NUM_RUNS = 20


# --- statistics ------------------------------------------------------------------------------


def test_p_value_counts_ties_and_adds_one():
  null = [1.0, 2.0, 3.0, 4.0]
  assert placebo.empirical_p_value(3.5, null) == pytest.approx(2 / 5)
  assert placebo.empirical_p_value(3.0, null) == pytest.approx(3 / 5)  # a tie counts as >=
  assert placebo.empirical_p_value(10.0, null) == pytest.approx(1 / 5)  # never 0
  assert placebo.empirical_p_value(0.0, null) == 1.0
  assert placebo.empirical_p_value(3.5, [1.0, np.nan, 4.0]) == pytest.approx(2 / 3)
  assert math.isnan(placebo.empirical_p_value(np.nan, null))
  assert math.isnan(placebo.empirical_p_value(1.0, [np.nan]))


def test_p_value_is_uniform_for_a_result_drawn_from_the_null():
  # Each of 20 exchangeable runs read against the other 19: p takes every value k / 20 once.
  values = np.random.default_rng(0).normal(size=20)
  p = [placebo.empirical_p_value(v, np.delete(values, i)) for i, v in enumerate(values)]
  np.testing.assert_allclose(np.sort(p), np.arange(1, 21) / 20)


def test_summary_statistics_nested_names_and_json():
  runs = [{'net_sharpe': s, 'sig': {'dsr': d}} for s, d in
          zip([0.5, -1.0, 2.0, None, np.float32(1.0)], [0.1, 0.2, 0.3, 0.4, 0.5], strict=True)]
  summary = placebo.summarize_placebos({'net_sharpe': 1.5, 'sig': {'dsr': 0.45}}, runs,
                                       metrics=('net_sharpe', 'sig.dsr', 'ic'))
  sharpe = summary['metrics']['net_sharpe']
  defined = np.array([0.5, -1.0, 2.0, 1.0])
  assert summary['num_runs'] == 5
  assert (sharpe['num_runs'], sharpe['num_defined']) == (5, 4)
  assert sharpe['mean'] == pytest.approx(defined.mean())
  assert sharpe['std'] == pytest.approx(defined.std(ddof=1))
  assert sharpe['quantiles']['q50'] == pytest.approx(np.median(defined))
  assert sharpe['p_value'] == pytest.approx((1 + 1) / (1 + 4))
  assert sharpe['percentile'] == pytest.approx(3 / 4)
  assert sharpe['values'] == [0.5, -1.0, 2.0, None, 1.0]
  assert summary['metrics']['sig.dsr']['p_value'] == pytest.approx(2 / 6)
  ic = summary['metrics']['ic']
  assert ic['num_defined'] == 0 and ic['p_value'] is None and ic['mean'] is None
  assert json.loads(json.dumps(summary, allow_nan=False)) == summary
  table = placebo.markdown_table(summary).splitlines()
  assert len(table) == 2 + 3 and table[0].startswith('| metric | real | p-value')
  assert '| net Sharpe | 1.500 | 0.400 |' in table[2]
  with pytest.raises(ValueError, match='no placebo results'):
    placebo.summarize_placebos(None, [])
  with pytest.raises(ValueError, match='metric net_sharpe is an array of shape'):
    placebo.summarize_placebos(None, [{'net_sharpe': np.zeros(3)}])


def test_outputs_with_and_without_matplotlib(tmp_path, monkeypatch):
  summary = placebo.summarize_placebos({'net_sharpe': 2.0, 'turnover': 3.0},
                                       [{'net_sharpe': v, 'turnover': 2 * v} for v in range(6)],
                                       metrics=('net_sharpe', 'turnover'))
  paths = placebo.write_outputs(summary, tmp_path / 'with')
  with open(paths['json']) as f:
    assert json.load(f) == summary
  assert os.path.getsize(paths['histogram']) > 1000
  with open(paths['html']) as f:
    section = f.read()
  assert '<h2>Placebo runs</h2>' in section and 'data:image/png;base64,' in section
  monkeypatch.setitem(sys.modules, 'matplotlib', None)  # `import matplotlib` now fails
  paths = placebo.write_outputs(summary, tmp_path / 'without')
  assert 'histogram' not in paths and not os.path.exists(tmp_path / 'without' / 'placebo_hist.png')
  with open(paths['html']) as f:
    assert '<img' not in f.read()


def test_section_is_embedded_in_a_report_once(tmp_path):
  page = tmp_path / 'backtest_report.html'
  page.write_text('<html><body><h1>Backtest report</h1>\n</body></html>\n')
  placebo.embed_in_report(page, '<h2>Placebo runs</h2><p>first</p>\n')
  placebo.embed_in_report(page, '<h2>Placebo runs</h2><p>second</p>\n')
  text = page.read_text()
  assert text.count('<h2>Placebo runs</h2>') == 1 and 'second' in text and 'first' not in text
  assert text.index('<h1>Backtest report</h1>') < text.index('second') < text.index('</body>')
  (tmp_path / 'notes.txt').write_text('not a page')
  with pytest.raises(ValueError, match='no </body>'):
    placebo.embed_in_report(tmp_path / 'notes.txt', '<h2>Placebo runs</h2>')


# --- runner ----------------------------------------------------------------------------------


def test_runner_stores_resumes_and_extends(tmp_path):
  calls = []

  def run_one(seed):
    calls.append(seed)
    return {'net_sharpe': np.float64(seed / 10), 'gross_sharpe': math.nan}

  lines = []
  first = placebo.run_placebos(run_one, 3, tmp_path, first_seed=100, log=lines.append)
  assert calls == [100, 101, 102]
  assert first == [{'net_sharpe': s / 10, 'gross_sharpe': None} for s in (100, 101, 102)]
  assert 'ETA' in lines[-1] and 'run 3/3 (market seed 102)' in lines[-1]
  with open(placebo.run_path(tmp_path, 1)) as f:
    stored = json.load(f)
  assert (stored['run'], stored['market_seed'], stored['result']) == (1, 101, first[1])

  again = placebo.run_placebos(run_one, 3, tmp_path, first_seed=100, log=lines.append)
  assert calls == [100, 101, 102] and again == first  # nothing ran a second time
  more = placebo.run_placebos(run_one, 5, tmp_path, first_seed=100, log=lines.append)
  assert calls == [100, 101, 102, 103, 104] and more[:3] == first
  assert sorted(os.listdir(tmp_path / 'placebo')) == [f'run_{i:03d}.json' for i in range(5)]
  with pytest.raises(ValueError, match='market seed 100, this call expects 0'):
    placebo.run_placebos(run_one, 3, tmp_path, log=lines.append)
  with pytest.raises(TypeError, match=r'run_one\(0\) returned a value JSON cannot hold'):
    placebo.run_placebos(lambda seed: {'curve': object()}, 1, tmp_path / 'other', log=print)
  assert os.listdir(tmp_path / 'other' / 'placebo') == []  # nothing half-written


# ray.init starts its raylet with fork+exec (no Python runs in the child), which JAX warns about.
@pytest.mark.extra
@pytest.mark.filterwarnings('ignore:os.fork:RuntimeWarning')
def test_runs_on_ray_are_stored_as_here(tmp_path):
  ray = pytest.importorskip('ray')

  def _seeded_run(seed):
    """A run that depends on nothing but its seed, and says where it ran (defined here so
    that it is pickled by value: Ray workers cannot import this test module)."""
    returns = np.random.default_rng(seed).normal(0.0, 0.01, 500)
    return {'net_sharpe': float(returns.mean() / returns.std() * np.sqrt(8760)),
            'pid': os.getpid()}

  here = placebo.run_placebos(_seeded_run, 3, tmp_path / 'here', first_seed=7, log=print)
  ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
  try:
    lines = []
    # Run 1 is stored already: only runs 0 and 2 go to Ray.
    os.makedirs(tmp_path / 'ray' / 'placebo')
    shutil.copy(placebo.run_path(tmp_path / 'here', 1), placebo.run_path(tmp_path / 'ray', 1))
    remote = placebo.run_placebos(_seeded_run, 3, tmp_path / 'ray', first_seed=7,
                                  ray_address='local', log=lines.append)
  finally:
    ray.shutdown()
  assert any('1 of 3 runs stored' in line and '2 to run on Ray at local' in line
             for line in lines)
  assert sum(line.startswith('placebo run ') for line in lines) == 2
  assert [r['net_sharpe'] for r in remote] == [r['net_sharpe'] for r in here]
  assert remote[1]['pid'] == here[1]['pid'] == os.getpid()  # read back, not rerun
  assert remote[0]['pid'] != os.getpid() and remote[2]['pid'] != os.getpid()
  for i in (0, 2):
    with open(placebo.run_path(tmp_path / 'ray', i)) as f:
      assert json.load(f)['result'] == remote[i]


# --- a planted edge against placebo markets -------------------------------------------------

# The "pipeline" of this test reads a rule off the bars: BUY when volume is high, SELL
# otherwise. In the "real" market below, volume is set to announce the next bar's direction
# (a peek one bar ahead, planted). Resampled markets carry each bar's volume with its own
# return, so there the same rule has nothing to find.


@pytest.fixture(scope='module')
def planted_market():
  df = data.load_dataset('btc_usdt_1h_2020_2024').iloc[-NUM_BARS:].copy()
  close = df['close'].to_numpy()
  rises = np.r_[close[1:] > close[:-1], False]
  noise = np.random.default_rng(0).uniform(0.0, 0.5, NUM_BARS)
  df['volume'] = np.where(rises, 2.0, 1.0) + noise
  return df


def _pipeline(df):
  """Result dict of the volume rule on `df`: net and gross backtests, DSR (1 trial), IC."""
  score = np.where(df['volume'].to_numpy() > 1.75, 1.0, -1.0)
  actions = np.where(score > 0, BUY, SELL).astype(np.int32)
  confidence = np.ones(len(df))
  close = df['close'].to_numpy()
  market = metrics.market_returns(close)
  out = {}
  for name, costs in (('net', {}), ('gross', dict(commission=0.0, slippage=0.0))):
    params = backtest.make_params(**costs)
    result = backtest.run_backtest(df, actions, confidence, params)
    out[name] = metrics.compute_metrics(result, market, params.initial_capital)
    if name == 'net':
      moments = significance.return_moments(
          np.asarray(metrics.period_returns(result.equity, params.initial_capital)))
  forward = close[1:] / close[:-1] - 1
  return {
      'net_sharpe': out['net']['sharpe'], 'gross_sharpe': out['gross']['sharpe'],
      'total_return': out['net']['total_return'], 'turnover': out['net']['turnover'],
      'test_psr': significance.probabilistic_sharpe_ratio(
          moments['sharpe'], moments['num_observations'], moments['skewness'],
          moments['kurtosis']),
      'ic': np.corrcoef(score[:-1], forward)[0, 1],
  }


def _placebo_runner(real_df):
  def run_one(seed):
    return _pipeline(synthetic.make_market(real_df, seed=seed, method='block'))
  return run_one


def test_planted_edge_is_far_out_in_the_null_and_noise_is_not(planted_market, tmp_path):
  run_one = _placebo_runner(planted_market)
  null = placebo.run_placebos(run_one, NUM_RUNS, tmp_path, log=lambda line: None)
  edge = placebo.summarize_placebos(_pipeline(planted_market), null)
  for name in ('net_sharpe', 'gross_sharpe', 'total_return', 'test_psr', 'ic'):
    assert edge['metrics'][name]['p_value'] == pytest.approx(1 / (NUM_RUNS + 1)), name
  assert edge['metrics']['ic']['real'] > 0.5  # the rule does peek in the real market
  assert abs(edge['metrics']['ic']['mean']) < 0.05  # and finds nothing in the placebos
  # Markets with nothing to find read against the same null are draws of it: their p-values
  # are uniform, mean 0.52 with a standard error of 0.13 over 5 (so > 0.2 fails by chance
  # with probability under 1 %; the seeds are fixed, so the test is deterministic).
  noise = [placebo.summarize_placebos(run_one(seed), null)['metrics']
           for seed in range(10_000, 10_005)]
  for name in ('net_sharpe', 'gross_sharpe', 'ic'):
    assert np.mean([n[name]['p_value'] for n in noise]) > 0.2, name
