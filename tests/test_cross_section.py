"""Cross-sectional signal metrics against per-bar loops, and the Newey-West t (SPEC 11-12)."""

import math

import numpy as np
import pytest

from himari_jax.stats import cross_section as xs


def _panel(seed=0, bars=60, assets=8):
  """A score with ties, forward returns with a planted link, and a mask with bars of 0-2
  coins, one coin listed late and one halted."""
  rng = np.random.default_rng(seed)
  score = np.round(rng.normal(size=(bars, assets)), 1)  # rounding makes ties
  forward = 0.3 * score + rng.normal(size=(bars, assets))
  available = rng.random((bars, assets)) > 0.2
  available[:20, 0] = False  # listed late
  available[5] = False
  available[6, :2] = True
  available[6, 2:] = False  # two coins: too few
  forward[-3:] = np.nan  # the last bars have no forward return
  score[10, 3] = np.nan  # no score for one coin
  forward[11] = 0.5  # constant across coins: IC undefined
  return score, forward, available


def _loop_ic(score, forward, available, correlation):
  out = np.full(score.shape[0], np.nan)
  for t in range(score.shape[0]):
    keep = available[t] & np.isfinite(score[t]) & np.isfinite(forward[t])
    x, y = score[t, keep], forward[t, keep]
    if keep.sum() >= 3 and np.ptp(x) > 0 and np.ptp(y) > 0:
      out[t] = correlation(x, y)[0]
  return out


def test_cross_sectional_ic_matches_scipy_per_bar():
  stats = pytest.importorskip('scipy.stats')
  score, forward, available = _panel()
  series = xs.cross_sectional_ic(score, forward, available)
  expected_ic = _loop_ic(score, forward, available, stats.pearsonr)
  expected_rank = _loop_ic(score, forward, available, stats.spearmanr)
  np.testing.assert_allclose(series['ic'], expected_ic, rtol=1e-12, atol=1e-12)
  np.testing.assert_allclose(series['rank_ic'], expected_rank, rtol=1e-12, atol=1e-12)
  assert np.isnan(series['ic'][[5, 6, 11, -1]]).all()
  assert np.isfinite(series['ic']).sum() > 40
  assert series['n_assets'][6] == 2 and series['n_assets'][5] == 0
  # Per coin over time, the same correlations.
  table = xs.time_series_ic(score, forward, available)
  for a in range(score.shape[1]):
    keep = available[:, a] & np.isfinite(score[:, a]) & np.isfinite(forward[:, a])
    assert table['n_bars'][a] == keep.sum()
    assert table['ic'][a] == pytest.approx(stats.pearsonr(score[keep, a], forward[keep, a])[0],
                                           abs=1e-12)
    assert table['rank_ic'][a] == pytest.approx(
        stats.spearmanr(score[keep, a], forward[keep, a])[0], abs=1e-12)


def test_average_ranks_share_ties_and_skip_masked():
  values = np.array([[3.0, 1.0, 3.0, 2.0, 9.0], [5.0, 5.0, 5.0, np.nan, 1.0]])
  mask = np.array([[True, True, True, True, False], [True, True, True, False, True]])
  np.testing.assert_array_equal(xs.average_ranks(values, mask),
                                [[3.5, 1.0, 3.5, 2.0, np.nan], [3.0, 3.0, 3.0, np.nan, 1.0]])


def _hand_long_run_variance(x, lags):
  """Bartlett-weighted autocovariances from explicit sums over pairs of bars."""
  n, m = len(x), sum(x) / len(x)
  total = 0.0
  for lag in range(-lags, lags + 1):
    weight = 1.0 - abs(lag) / (lags + 1.0)
    total += weight * sum((x[t] - m) * (x[t - abs(lag)] - m) for t in range(abs(lag), n)) / n
  return total


def test_newey_west_variance_matches_a_hand_loop():
  rng = np.random.default_rng(1)
  noise = rng.normal(size=203)
  x = noise[3:] + 0.8 * noise[2:-1] + 0.5 * noise[:-3]  # MA(2): autocorrelated
  for lags in (0, 1, 4, 12):
    assert xs.newey_west_variance(x, lags) == pytest.approx(_hand_long_run_variance(x, lags),
                                                            rel=1e-12)
  assert xs.newey_west_variance(x, 0) == pytest.approx(np.var(x), rel=1e-12)


@pytest.mark.extra
def test_newey_west_mean_matches_statsmodels():
  sm = pytest.importorskip('statsmodels.api')
  rng = np.random.default_rng(2)
  noise = rng.normal(size=506)
  x = 0.1 + noise[6:] + noise[5:-1] + noise[:-6]
  summary = xs.newey_west_mean(x, horizon=6, lags=8)
  fit = sm.OLS(x, np.ones_like(x)).fit(cov_type='HAC',
                                       cov_kwds={'maxlags': 8, 'use_correction': False})
  assert summary['se'] == pytest.approx(fit.bse[0], rel=1e-10)
  assert summary['t_stat'] == pytest.approx(fit.tvalues[0], rel=1e-10)


def test_newey_west_t_has_its_size_on_overlapping_returns():
  """Sums of h = 6 i.i.d. returns overlap like forward returns: the i.i.d. t rejects a true
  zero mean far too often, the Newey-West t about 5 % of the time."""
  rng = np.random.default_rng(3)
  horizon, runs, n = 6, 400, 1500
  nw_rejects = iid_rejects = 0
  for _ in range(runs):
    steps = rng.normal(size=n + horizon)
    overlapping = np.convolve(steps, np.ones(horizon), 'valid')[:n]
    summary = xs.newey_west_mean(overlapping, horizon=horizon)
    nw_rejects += abs(summary['t_stat']) > 1.96
    iid_rejects += abs(summary['mean'] / (summary['std'] / math.sqrt(n))) > 1.96
  assert nw_rejects / runs < 0.09
  assert iid_rejects / runs > 0.25
  with pytest.raises(ValueError, match='lags 3 < horizon 6'):
    xs.newey_west_mean(overlapping, horizon=6, lags=3)


def test_ic_summary_finds_a_planted_signal():
  score, forward, available = _panel(bars=400, assets=12)
  summary = xs.ic_summary(score, forward, available, horizon=1)
  assert summary['ic']['mean'] > 0.15 and summary['ic']['t_stat'] > 5
  assert summary['rank_ic']['n_bars'] == np.isfinite(
      xs.cross_sectional_ic(score, forward, available)['rank_ic']).sum()
  placebo = xs.ic_summary(score[::-1], forward, available, horizon=1)
  assert abs(placebo['ic']['t_stat']) < 3


def test_quantile_returns_match_sorted_splits():
  rng = np.random.default_rng(4)
  bars, assets, q = 50, 10, 5
  score = rng.normal(size=(bars, assets))
  forward = 0.01 * score + 0.01 * rng.normal(size=(bars, assets))
  available = np.ones((bars, assets), bool)
  available[:5, 6:] = False  # 6 coins: buckets of 2, 1, 1, 1, 1
  available[7, 4:] = False  # 4 coins < 5 quantiles: the bar takes no part
  out = xs.quantile_returns(score, forward, available, horizon=1, num_quantiles=q)
  for t in range(5, bars):
    if t == 7:
      assert np.isnan(out['per_bar'][t]).all()
      continue
    order = np.argsort(score[t])
    expected = [forward[t, part].mean() for part in np.array_split(order, q)]
    np.testing.assert_allclose(out['per_bar'][t], expected, rtol=1e-12)
  np.testing.assert_array_equal(xs.quantile_buckets(score, available, q)[0, :6].tolist(),
                                np.argsort(np.argsort(score[0, :6])).clip(1) - 1)
  np.testing.assert_allclose(out['mean'], np.nanmean(out['per_bar'], axis=0), rtol=1e-12)
  assert np.all(np.diff(out['mean']) > 0)
  np.testing.assert_allclose(out['spread'], out['per_bar'][:, -1] - out['per_bar'][:, 0])
  assert out['spread_summary']['t_stat'] > 5 and out['spread_summary']['n_bars'] == bars - 1


def test_forward_returns_per_coin():
  close = np.array([[1.0, 10.0], [2.0, np.nan], [4.0, 12.0]])
  np.testing.assert_allclose(xs.panel_forward_returns(close, 1),
                             [[1.0, np.nan], [1.0, np.nan], [np.nan, np.nan]])
