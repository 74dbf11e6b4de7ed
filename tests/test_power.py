"""Size and power of the test Sharpe: planted signals through the real decision path."""

import functools
import os
import subprocess
import sys

import numpy as np
import pytest
import scipy.stats

from himari_jax import config as config_lib
from himari_jax.research import power, walkforward

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_planted_score_has_the_chosen_ic():
  rng = np.random.default_rng(0)
  returns = rng.standard_t(3, size=20_000) * 0.01
  returns[-1] = np.nan
  for ic in (0.0, 0.05, 0.3):
    score = power.planted_score(returns, ic, np.random.default_rng(1))
    assert abs(np.corrcoef(score[:-1], returns[:-1])[0, 1] - ic) < 0.02
  with pytest.raises(ValueError, match='ic must be'):
    power.planted_score(returns, 1.5, rng)


def test_binomial_band_is_the_binomial_quantiles():
  for n in (20, 100, 600):
    expected = scipy.stats.binom.ppf([0.025, 0.975], n, 0.05) / n
    np.testing.assert_allclose(power.binomial_band(0.05, n), expected)


def test_placebo_markets_differ_by_draw_and_have_no_drift():
  bars = walkforward.load_series('btc_usdt_1h_2025_2026')
  draws = [power.random_market([bars], np.random.default_rng(d), test_bars=2000, val_bars=500)
           for d in range(40)]
  val, test = draws[0]
  assert (len(val), len(test)) == (500, 2000) and val.index[-1] < test.index[0]
  assert len({str(t.index[0]) for _, t in draws}) > 30  # windows start at random bars
  sharpe = [np.mean(r) / np.std(r) * np.sqrt(8760)
            for r in (t['close'].pct_change().dropna().to_numpy() for _, t in draws)]
  assert abs(np.mean(sharpe)) < 3 * np.std(sharpe) / np.sqrt(len(sharpe))  # buy-and-hold: 0
  real_val, real_test = power.random_market([bars], np.random.default_rng(0), test_bars=2000,
                                            val_bars=500, placebo=False)
  window = bars.loc[real_val.index[0]:real_test.index[-1]]
  assert len(window) == 2500 and (window['close'].to_numpy() == np.concatenate(
      [real_val['close'], real_test['close']])).all()
  with pytest.raises(ValueError, match='no series has'):
    power.random_market([bars.iloc[:100]], np.random.default_rng(0))


def test_size_is_plausible_and_power_rises_with_ic():
  bars = walkforward.load_series('btc_usdt_1h_2020_2024,btc_usdt_1h_2025_2026')
  summary = power.measure_power(
      functools.partial(power.random_market, [bars], test_bars=2000, val_bars=720), ics=[0.0, 0.3],
      num_draws=4, costs={'zero': {'commission': 0.0, 'slippage': 0.0}},
      backtest=config_lib.backtest_config(), labels=config_lib.default_config().labels,
      log=lambda _: None)
  rates = {r['ic']: r['rate'] for r in summary['rows']}
  assert rates[0.0] <= 0.5  # four draws: at most two by chance at a 5 % level is generous
  assert rates[0.3] > rates[0.0] and rates[0.3] == 1.0
  realised = {r['ic']: r['mean_realised_ic'] for r in summary['rows']}
  assert abs(realised[0.3] - 0.3) < 0.03
  assert summary['rows'][0]['band'] is not None and summary['rows'][1]['band'] is None
  assert '| 0.30 | zero | 4 | 4 |' in power.power_table(summary)
  assert len({first for first, _ in summary['test']}) == 4  # each draw its own market


def test_fixed_market_is_the_window_and_its_validation_bars():
  bars = walkforward.load_series('btc_usdt_1h_2025_2026')
  val, test = power.fixed_market(bars, '2025-03-01', '2025-04-01', val_bars=500)
  assert len(val) == 500 and val.index[-1] < test.index[0]
  assert str(test.index[0]).startswith('2025-03-01') and len(test) == 31 * 24
  with pytest.raises(ValueError, match='need 5000 bars before'):
    power.fixed_market(bars, '2025-01-10', '2025-02-01', val_bars=5000)


@pytest.mark.slow
def test_launcher_writes_the_table(tmp_path):
  out = subprocess.run(
      [sys.executable, os.path.join(REPO, 'launch', 'power.py'), '--ics=0.2', '--draws=1',
       '--test_start=2025-01-01', '--test_end=2025-02-01', '--val_bars=500',
       f'--outdir={tmp_path}'], capture_output=True, text=True, env={**os.environ,
       'PYTHONPATH': REPO}, timeout=300, check=False)
  assert out.returncode == 0, out.stderr[-2000:]
  assert '| 0.20 | seed | 1 |' in out.stdout and (tmp_path / 'power.json').exists()
