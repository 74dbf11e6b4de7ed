"""Tests stated with their power on a panel of coins: per-coin Sharpe ratios, the time-block
bootstrap that resamples every coin on the same bars, its size, and the Newey-West test of a
per-bar difference."""

import math

import numpy as np
import pytest

from himari_jax.stats import cross_section, panel_inference, significance


def _panel(rng, bars=1500, coins=5, mean=0.0, vol=0.01):
  returns = mean + vol * rng.standard_normal((bars, coins))
  returns[: bars // 5, 0] = np.nan  # a coin listed later
  return returns


def test_coin_sharpes_match_the_single_series_sharpe_on_each_coins_own_bars():
  rng = np.random.default_rng(0)
  returns = _panel(rng, mean=0.0005)
  got = panel_inference.coin_sharpes(returns, periods_per_year=8760)
  for a in range(returns.shape[1]):
    own = returns[np.isfinite(returns[:, a]), a]
    assert got[a] == pytest.approx(significance.sharpe_ratio(own, 8760), rel=1e-5)
  few = returns.copy()
  few[:-50, 1] = np.nan
  assert np.isnan(panel_inference.coin_sharpes(few)[1])  # under MIN_COIN_BARS


def test_a_clear_edge_is_detected_and_a_model_against_itself_differs_by_nothing():
  rng = np.random.default_rng(1)
  strong = _panel(rng, mean=0.002)  # about 18 annualised Sharpe per coin
  test = panel_inference.sharpe_panel_test(strong, num_resamples=200, alternative='greater')
  assert test['reject'] and test['low'] > 0 and test['num_coins'] == 5
  assert test['min_detectable'] == pytest.approx((1.6449 + 0.8416) * test['se'], rel=1e-3)
  same = panel_inference.sharpe_panel_test(strong, baseline=strong, num_resamples=50)
  assert same['estimate'] == 0 and same['se'] == 0 and not same['reject']
  claim = panel_inference.sharpe_panel_test(strong, h0=0.8, alternative='less',
                                            num_resamples=200)
  assert not claim['reject'] and claim['p_value'] > 0.99


def test_the_panel_bootstrap_holds_its_size_on_noise():
  """At no edge, H0 (mean coin Sharpe = 0) is rejected about 5 % of the time: 80 panels, a
  rate inside the binomial band (0 .. 12.5 %, p > 0.01 under 5 %)."""
  rng = np.random.default_rng(2)
  rejected = [panel_inference.sharpe_panel_test(_panel(rng, bars=800, coins=4),
                                                num_resamples=150, seed=i)['reject']
              for i in range(80)]
  assert np.mean(rejected) <= 0.125


def test_coins_are_resampled_on_the_same_bars():
  """The mean over coins of sharpe(a) - sharpe(b) with b = a's coins swapped is 0 in every
  resample only if every coin is drawn on the same bars; against another panel it spreads."""
  rng = np.random.default_rng(3)
  a = 0.01 * rng.standard_normal((900, 2))
  swapped = panel_inference.sharpe_panel_test(a, baseline=a[:, ::-1], num_resamples=50)
  assert swapped['se'] == pytest.approx(0, abs=1e-12)
  other = np.stack([a[:, 1], a[:, 1]], axis=1)
  assert panel_inference.sharpe_panel_test(a, baseline=other, num_resamples=50)['se'] > 0.1


def test_mean_difference_is_the_newey_west_mean_with_its_power():
  rng = np.random.default_rng(4)
  series = 0.01 + 0.1 * rng.standard_normal(2000)
  test = panel_inference.mean_difference_test(series, horizon=6)
  nw = cross_section.newey_west_mean(series, horizon=6)
  assert test['t_stat'] == pytest.approx(nw['t_stat']) and test['lags'] >= 6
  assert test['min_detectable'] == pytest.approx((1.95996 + 0.84162) * nw['se'], rel=1e-4)
  assert test['reject'] == (test['p_value'] < 0.05)


def test_required_scale_and_bad_input():
  assert panel_inference.required_scale(0.5, 1.0) == pytest.approx(4.0)
  assert math.isinf(panel_inference.required_scale(0.0, 1.0))
  with pytest.raises(ValueError, match='alternative'):
    panel_inference.sharpe_panel_test(np.zeros((900, 3)), alternative='bigger')
  with pytest.raises(ValueError, match='bars, coins'):
    panel_inference.sharpe_panel_test(np.zeros(900))
  with pytest.raises(ValueError, match='at least'):
    panel_inference.sharpe_panel_test(np.zeros((50, 3)))
