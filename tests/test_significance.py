"""Tests of himari_jax.stats.significance against closed forms and published values."""

import json
import math
import statistics
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from himari_jax.stats import sharpe_inference, significance

NORMAL = statistics.NormalDist()


def _normal_returns(n, mean=0.0, std=1.0, seed=0):
  return np.random.default_rng(seed).normal(mean, std, n)


def _ar1(n, phi, seed=0):
  noise = np.random.default_rng(seed).normal(0.0, 1.0, n + 200)
  values = np.zeros_like(noise)
  for t in range(1, noise.size):
    values[t] = phi * values[t - 1] + noise[t]
  return values[200:]  # burn-in so the series starts in its stationary distribution


# --- Sharpe ratio and moments -----------------------------------------------------------------


def test_sharpe_ratio_is_annualised_mean_over_sample_std():
  returns = _normal_returns(1000, 0.001, 0.01)
  expected = returns.mean() / returns.std(ddof=1) * math.sqrt(8760)
  assert significance.sharpe_ratio(returns) == pytest.approx(expected, rel=1e-5)
  assert significance.sharpe_ratio(returns, periods_per_year=1) == pytest.approx(
      returns.mean() / returns.std(ddof=1), rel=1e-5)


@pytest.mark.parametrize('value', [0.0, 0.001, -0.0137])
def test_sharpe_ratio_of_constant_returns_is_nan_without_warnings(value):
  with warnings.catch_warnings():
    warnings.simplefilter('error')
    assert math.isnan(significance.sharpe_ratio(np.full(500, value)))


def test_return_moments_of_a_bernoulli_sample_match_closed_form():
  # [0, 0, 0, 1] has exactly the moments of Bernoulli(1/4): skew (1 - 2p) / sqrt(p q),
  # kurtosis (1 - 6 p q) / (p q) + 3; its sample variance is p q n / (n - 1).
  p, q = 0.25, 0.75
  moments = significance.return_moments([0.0, 0.0, 0.0, 1.0])
  assert moments['num_observations'] == 4
  assert moments['sharpe'] == pytest.approx(p / math.sqrt(p * q * 4 / 3), rel=1e-6)
  assert moments['skewness'] == pytest.approx((1 - 2 * p) / math.sqrt(p * q), rel=1e-6)
  assert moments['kurtosis'] == pytest.approx((1 - 6 * p * q) / (p * q) + 3, rel=1e-6)


def test_return_moments_match_scipy():
  stats = pytest.importorskip('scipy.stats')
  returns = np.random.default_rng(1).standard_t(5, 2000) * 0.01 + 0.0005
  moments = significance.return_moments(returns)
  assert moments['skewness'] == pytest.approx(stats.skew(returns), rel=1e-3, abs=1e-4)
  assert moments['kurtosis'] == pytest.approx(stats.kurtosis(returns, fisher=False), rel=1e-4)


def test_inputs_are_validated_with_the_offending_bar():
  returns = np.zeros(10)
  returns[7] = np.nan
  with pytest.raises(ValueError, match='returns has non-finite values, first at bar 7'):
    significance.block_bootstrap_ci(returns)
  with pytest.raises(ValueError, match='same bars'):
    significance.paired_block_bootstrap(np.zeros(10), np.zeros(11))
  with pytest.raises(ValueError, match='block_length'):
    significance.block_bootstrap_ci(np.ones(10), block_length=11)
  with pytest.raises(ValueError, match='statistic'):
    significance.block_bootstrap_ci(np.ones(10), statistic='sortino')


# --- Probabilistic and deflated Sharpe ratio --------------------------------------------------


@pytest.mark.parametrize('sharpe,reference,n', [(0.1, 0.0, 250), (0.05, 0.02, 1000),
                                                (-0.03, 0.0, 60)])
def test_psr_with_normal_moments_reduces_to_closed_form(sharpe, reference, n):
  expected = NORMAL.cdf((sharpe - reference) * math.sqrt(n - 1) / math.sqrt(1 + sharpe**2 / 2))
  assert significance.probabilistic_sharpe_ratio(
      sharpe, n, skewness=0.0, kurtosis=3.0, benchmark_sharpe=reference) == pytest.approx(
          expected, abs=1e-12)


def test_psr_is_one_half_at_the_benchmark_and_penalises_negative_skew_and_fat_tails():
  assert significance.probabilistic_sharpe_ratio(0.1, 500, -2.0, 9.0, 0.1) == 0.5
  normal = significance.probabilistic_sharpe_ratio(0.1, 500)
  assert significance.probabilistic_sharpe_ratio(0.1, 500, skewness=-2.0) < normal
  assert significance.probabilistic_sharpe_ratio(0.1, 500, kurtosis=10.0) < normal
  assert math.isnan(significance.probabilistic_sharpe_ratio(math.nan, 500))


def test_deflated_sharpe_ratio_reproduces_the_published_example():
  # Bailey & Lopez de Prado (2014), "The Deflated Sharpe Ratio", numerical example: the best of
  # N = 100 trials has an annualised SR of 2.5 over 5 years of daily returns (T = 1250, 250 days
  # a year), skewness -3, kurtosis 10, and the trials' annualised SRs have variance 1/2.
  # Published: SR0 = 0.1132 (non-annualised) and DSR = 0.9004.
  days = 250
  sharpe = 2.5 / math.sqrt(days)
  variance = 0.5 / days
  sr0 = significance.expected_max_sharpe(100, variance)
  assert round(sr0, 4) == 0.1132
  dsr = significance.deflated_sharpe_ratio(
      sharpe, 1250, skewness=-3.0, kurtosis=10.0, num_trials=100, trial_sharpe_variance=variance)
  assert round(dsr, 4) == 0.9004

  # The same from a sweep's Sharpe ratios whose sample variance (ddof=1) is V.
  draws = np.random.default_rng(0).normal(size=100)
  trials = (draws - draws.mean()) / draws.std(ddof=1) * math.sqrt(variance)
  assert significance.deflated_sharpe_ratio(
      sharpe, 1250, -3.0, 10.0, trial_sharpes=trials) == pytest.approx(dsr, abs=1e-12)


@pytest.mark.parametrize('num_trials,tabulated', [(10, 1.53875), (100, 2.50759),
                                                  (1000, 3.24144)])
def test_expected_max_sharpe_approximates_the_expected_maximum_of_normals(num_trials, tabulated):
  # Tabulated expected maxima of N standard normals (Tippett 1925); the approximation's error
  # shrinks as N grows (2.3 % at 10, under 1 % from 100).
  tolerance = 0.025 if num_trials == 10 else 0.01
  assert significance.expected_max_sharpe(num_trials, 1.0) == pytest.approx(
      tabulated, rel=tolerance)
  assert significance.expected_max_sharpe(num_trials, 4.0) == pytest.approx(
      2 * significance.expected_max_sharpe(num_trials, 1.0))


def test_one_trial_has_no_selection_bias():
  assert significance.expected_max_sharpe(1, 0.3) == 0.0
  assert significance.deflated_sharpe_ratio(0.05, 800, -0.5, 6.0) == pytest.approx(
      significance.probabilistic_sharpe_ratio(0.05, 800, -0.5, 6.0))
  with pytest.raises(ValueError, match='num_trials'):
    significance.expected_max_sharpe(0, 1.0)


def test_trial_statistics():
  trials = [0.5, 1.0, np.nan, 1.5]  # a configuration that never traded still counts as a trial
  assert significance.trial_statistics(trials) == (4.0, pytest.approx(0.25))
  assert significance.trial_statistics(trials, num_trials=2) == (2.0, pytest.approx(0.25))
  assert significance.trial_statistics(num_trials=5, trial_sharpe_variance=0.1) == (5.0, 0.1)
  assert significance.trial_statistics() == (1.0, 0.0)
  with pytest.raises(ValueError, match='num_trials=5 > 1 needs'):
    significance.trial_statistics(num_trials=5)
  with pytest.raises(ValueError, match='not both'):
    significance.trial_statistics(trials, trial_sharpe_variance=0.1)


# --- Block bootstrap --------------------------------------------------------------------------


def _successor_share(indices, num_bars):
  """Share of bars whose index follows the previous one (within a block)."""
  return float(jnp.mean(indices[:, 1:] == (indices[:, :-1] + 1) % num_bars))


def test_block_length_one_is_the_iid_bootstrap():
  n = 400
  for method in ('stationary', 'circular'):
    indices = significance.bootstrap_indices(
        jax.random.key(0), num_bars=n, num_resamples=300, block_length=1.0, method=method)
    assert indices.shape == (300, n)
    assert _successor_share(indices, n) == pytest.approx(1 / n, abs=2e-3)
    counts = np.bincount(np.asarray(indices).ravel(), minlength=n)
    expected = 300.0
    assert abs(counts.mean() - expected) < 1e-9 and counts.std() < 1.3 * math.sqrt(expected)


def test_block_structure_of_the_indices():
  n, length = 400, 8.0
  stationary = significance.bootstrap_indices(
      jax.random.key(1), num_bars=n, num_resamples=300, block_length=length)
  # A new block starts with probability 1/L (and rarely at the successor by chance).
  assert _successor_share(stationary, n) == pytest.approx(1 - 1 / length, abs=0.01)
  circular = np.asarray(significance.bootstrap_indices(
      jax.random.key(1), num_bars=n, num_resamples=300, block_length=length, method='circular'))
  within_block = (np.arange(1, n) % 8) != 0
  assert ((circular[:, 1:] == (circular[:, :-1] + 1) % n)[:, within_block]).all()


def test_bootstrap_uses_the_indices_of_its_seed():
  returns = _normal_returns(300, 0.01, 0.02, seed=4)
  result = significance.block_bootstrap_ci(returns, 'total_return', num_resamples=200, seed=9)
  indices = np.asarray(significance.bootstrap_indices(
      jax.random.key(9), num_bars=300, num_resamples=200, block_length=result['block_length']))
  expected = np.prod(1 + returns[indices], axis=1) - 1
  np.testing.assert_allclose(result['resamples'], expected, rtol=2e-4)


def test_iid_bootstrap_standard_errors_match_closed_forms():
  # iid normal returns: SE(mean) = sigma / sqrt(n); SE(SR) = sqrt((1 + SR^2 / 2) / n) (Lo 2002).
  n = 1000
  returns = _normal_returns(n, 0.05, 1.0, seed=2)
  sharpe = returns.mean() / returns.std(ddof=1)
  mean_ci = significance.block_bootstrap_ci(returns, jnp.mean, num_resamples=1000,
                                            block_length=1)
  assert mean_ci['std_error'] == pytest.approx(returns.std() / math.sqrt(n), rel=0.06)
  sharpe_ci = significance.block_bootstrap_ci(returns, 'sharpe', num_resamples=1000,
                                              block_length=1, periods_per_year=1)
  assert sharpe_ci['estimate'] == pytest.approx(sharpe, rel=1e-4)
  assert sharpe_ci['std_error'] == pytest.approx(math.sqrt((1 + sharpe**2 / 2) / n), rel=0.06)


def test_block_bootstrap_variance_of_the_mean_matches_its_closed_form():
  n, length = 300, 10
  returns = _ar1(n, 0.5, seed=5)
  centred = returns - returns.mean()
  # Stationary bootstrap (Politis & Romano 1994, lemma 1): n Var*(mean*) = c(0) + 2 sum_k b(k)
  # c(k), b(k) = (1 - k/n)(1 - p)^k + (k/n)(1 - p)^(n-k), p = 1/L, c = sample autocovariances.
  lags = np.arange(1, n)
  autocov = np.array([centred[:n - k] @ centred[k:] / n for k in range(n)])
  p = 1 / length
  weights = (1 - lags / n) * (1 - p)**lags + (lags / n) * (1 - p)**(n - lags)
  stationary_variance = (autocov[0] + 2 * weights @ autocov[1:]) / n
  # Circular blocks: the mean of n/L blocks drawn from the n wrapped block means.
  wrapped = np.concatenate([returns, returns[:length]])
  block_means = np.array([wrapped[i:i + length].mean() for i in range(n)])
  circular_variance = np.mean((block_means - returns.mean())**2) / (n // length)
  for method, variance in (('stationary', stationary_variance), ('circular', circular_variance)):
    result = significance.block_bootstrap_ci(returns, jnp.mean, num_resamples=2000,
                                             block_length=length, method=method)
    # The std error of a 2000-draw std is ~1.6 %.
    assert result['std_error'] == pytest.approx(math.sqrt(variance), rel=0.05)


def test_block_bootstrap_captures_autocorrelation_that_the_iid_bootstrap_misses():
  # AR(1) with phi = 0.5: the long-run SE of the mean is sigma_e / (1 - phi) / sqrt(n), sqrt(3)
  # times the iid value sigma_x / sqrt(n).
  phi, n = 0.5, 4000
  returns = _ar1(n, phi, seed=3)
  long_run_se = 1.0 / (1 - phi) / math.sqrt(n)
  blocks = significance.block_bootstrap_ci(returns, jnp.mean, num_resamples=1000)
  iid = significance.block_bootstrap_ci(returns, jnp.mean, num_resamples=1000, block_length=1)
  # The block length comes from the series itself (Politis-White), printed with its rule.
  from arch.bootstrap import optimal_block_length
  assert blocks['block_length'] == pytest.approx(optimal_block_length(returns)['stationary'][0])
  assert blocks['block_rule'] == 'Politis-White' and iid['block_rule'] == 'set'
  assert blocks['std_error'] == pytest.approx(long_run_se, rel=0.15)
  assert iid['std_error'] == pytest.approx(long_run_se / math.sqrt(3), rel=0.15)


def test_politis_white_block_length_follows_the_dependence_and_the_bootstrap():
  from arch.bootstrap import optimal_block_length
  weak, strong = _ar1(3000, 0.2, seed=5), _ar1(3000, 0.8, seed=6)
  table = optimal_block_length(np.stack([weak, strong], axis=1))
  for method, column in (('stationary', 'stationary'), ('circular', 'circular')):
    assert significance.politis_white_block_length(weak, method=method) == pytest.approx(
        table[column][0])
    # Series resampled with the same blocks get the longer of their lengths.
    assert significance.politis_white_block_length(weak, strong, method=method) == \
        pytest.approx(table[column][1])
  assert table['stationary'][1] > 3 * table['stationary'][0]
  assert significance.politis_white_block_length(np.zeros(300)) == 1.0  # undefined: iid


def test_a_new_block_length_does_not_recompile_the_bootstrap():
  returns = _normal_returns(500, 0.01, 1.0, seed=7)
  significance.block_bootstrap_ci(returns, num_resamples=50, block_length=3.0)
  compiled = significance._bootstrap_statistics._cache_size()
  for method in ('stationary', 'circular'):
    for length in (5.0, 17.5):
      significance.block_bootstrap_ci(returns, num_resamples=50, block_length=length,
                                      method=method)
  assert significance._bootstrap_statistics._cache_size() == compiled + 1  # + 'circular'


def test_interval_coverage_of_the_mean():
  n, true_mean, trials = 200, 0.1, 100
  covered = 0
  for seed in range(trials):
    returns = _normal_returns(n, true_mean, 1.0, seed=100 + seed)
    result = significance.block_bootstrap_ci(returns, jnp.mean, num_resamples=200,
                                             block_length=1, confidence=0.9, seed=seed)
    covered += result['low'] <= true_mean <= result['high']
  # 90 % nominal; binomial std of the share is 0.03 with 100 trials.
  assert 0.8 <= covered / trials <= 0.97


def test_same_seed_same_result_and_different_seed_different_result():
  returns = _normal_returns(300, 0.001, 0.01, seed=5)
  first = significance.block_bootstrap_ci(returns, num_resamples=200, seed=3)
  again = significance.block_bootstrap_ci(returns, num_resamples=200, seed=3)
  other = significance.block_bootstrap_ci(returns, num_resamples=200, seed=4)
  np.testing.assert_array_equal(first['resamples'], again['resamples'])
  assert first['low'] == again['low'] and first['high'] == again['high']
  assert not np.array_equal(first['resamples'], other['resamples'])


def test_total_return_interval_contains_the_observed_total_return():
  returns = _normal_returns(300, 0.0005, 0.01, seed=6)
  result = significance.block_bootstrap_ci(returns, 'total_return', num_resamples=200)
  assert result['estimate'] == pytest.approx(np.prod(1 + returns) - 1, rel=1e-4)
  assert result['low'] < result['estimate'] < result['high']


def test_constant_returns_give_a_degenerate_interval_without_warnings():
  with warnings.catch_warnings():
    warnings.simplefilter('error')
    flat = significance.block_bootstrap_ci(np.full(300, 0.001), 'total_return',
                                           num_resamples=200)
    assert flat['low'] == flat['high'] == pytest.approx(flat['estimate'])
    assert flat['std_error'] == 0.0
    sharpe = significance.block_bootstrap_ci(np.zeros(300), 'sharpe', num_resamples=200)
  assert all(math.isnan(sharpe[k]) for k in ('estimate', 'low', 'high', 'std_error'))
  assert np.isnan(sharpe['resamples']).all()


def test_paired_bootstrap_against_buy_and_hold():
  market = _normal_returns(300, 0.0, 0.01, seed=7)
  same = significance.paired_block_bootstrap(market, market, num_resamples=200)
  assert same['estimate'] == 0.0 and same['low'] == same['high'] == 0.0
  assert same['p_value'] == 1.0
  # A clear alpha: strategy = market + 0.1 % a bar, with the same risk.
  better = significance.paired_block_bootstrap(market + 0.001, market, num_resamples=200)
  assert better['strategy'] == pytest.approx(significance.sharpe_ratio(market + 0.001), rel=1e-4)
  assert better['benchmark'] == pytest.approx(significance.sharpe_ratio(market), rel=1e-4)
  assert better['low'] > 0 and better['p_value'] == pytest.approx(1 / 201)
  worse = significance.paired_block_bootstrap(market - 0.001, market, num_resamples=200)
  assert worse['high'] < 0 and worse['p_value'] == 1.0


# --- Shuffled-signal null ---------------------------------------------------------------------


def test_positions_from_actions():
  actions = [1, 2, 1, 1, 0, 1, 2, 2, 0]
  np.testing.assert_array_equal(significance.positions_from_actions(actions),
                                [0, 1, 1, 1, 0, 0, 1, 1, 0])
  np.testing.assert_array_equal(significance.positions_from_actions(actions, allow_short=True),
                                [0, 1, 1, 1, -1, -1, 1, 1, -1])
  with pytest.raises(ValueError, match='actions'):
    significance.positions_from_actions([0, 3])


def test_position_returns_by_hand():
  positions = [1.0, 1.0, 0.0, -0.5]
  market = [0.10, 0.02, -0.01, 0.04]
  # p_{t-1} * r_t - cost * |p_t - p_{t-1}|, starting flat.
  expected = [0 - 0.01 * 1, 0.02 - 0, -0.01 - 0.01 * 1, 0 - 0.01 * 0.5]
  np.testing.assert_allclose(significance.position_returns(positions, market, cost_rate=0.01),
                             expected, rtol=1e-6)


def test_position_returns_charge_selling_at_the_sell_side_rate():
  positions = [1.0, 1.0, 0.0, -0.5]
  market = [0.10, 0.02, -0.01, 0.04]
  # Buying 1 at 1 %, selling 1 then 0.5 (going short) at 3 %.
  expected = [0 - 0.01 * 1, 0.02 - 0, -0.01 - 0.03 * 1, 0 - 0.03 * 0.5]
  np.testing.assert_allclose(
      significance.position_returns(positions, market, cost_rate=(0.01, 0.03)), expected,
      rtol=1e-6)
  symmetric = significance.position_returns(positions, market, cost_rate=(0.01, 0.01))
  np.testing.assert_allclose(symmetric, significance.position_returns(positions, market, 0.01))


def test_block_permutations_are_bijections_that_keep_blocks():
  n, length = 103, 10
  permutations = np.asarray(significance.block_permutations(
      jax.random.key(0), num_bars=n, num_permutations=20, block_length=length))
  for permutation in permutations:
    np.testing.assert_array_equal(np.sort(permutation), np.arange(n))
    breaks = np.count_nonzero(permutation[1:] != (permutation[:-1] + 1) % n)
    assert breaks <= math.ceil(n / length)
  assert len({p.tobytes() for p in permutations}) == 20


def test_perfect_foresight_beats_every_shuffle():
  market = _normal_returns(300, 0.0, 0.01, seed=8)
  positions = np.sign(np.append(market[1:], 0.0))  # known at the close before the bar
  result = significance.shuffled_signal_test(positions, market, num_shuffles=100)
  assert result['observed_sharpe'] > 50
  assert result['p_value'] == pytest.approx(1 / 101)
  assert result['null_sharpes'].shape == (100,)
  assert result['null_mean'] < result['observed_sharpe'] - 10 * result['null_std']


def test_random_signals_are_not_significant():
  market = _normal_returns(300, 0.0, 0.01, seed=9)
  rng = np.random.default_rng(10)
  p_values = []
  for seed in range(20):
    positions = significance.positions_from_actions(rng.integers(0, 3, market.size))
    p_values.append(significance.shuffled_signal_test(
        positions, market, num_shuffles=100, block_length=3, seed=seed)['p_value'])
  # Under the null p-values are uniform: mean 0.5 (std 0.065 over 20 signals).
  assert 0.3 < np.mean(p_values) < 0.7
  assert np.mean(np.array(p_values) < 0.05) <= 0.2


def test_always_long_is_its_own_null():
  market = _normal_returns(300, 0.001, 0.01, seed=11)
  result = significance.shuffled_signal_test(np.ones(300), market, num_shuffles=100)
  assert result['block_length'] == 300
  np.testing.assert_allclose(result['null_sharpes'], result['observed_sharpe'], rtol=1e-5)
  assert result['p_value'] == 1.0


# --- Report -----------------------------------------------------------------------------------


def test_report_is_json_and_consistent_with_the_parts():
  market = _normal_returns(300, 0.0002, 0.01, seed=12)
  positions = (np.random.default_rng(13).random(300) < 0.6).astype(float)
  strategy = significance.position_returns(positions, market)
  report = significance.significance_report(
      strategy, market, positions, num_resamples=200, num_shuffles=100)
  json.dumps(report, allow_nan=False)

  ci = significance.block_bootstrap_ci(strategy, num_resamples=200)
  for key in ('estimate', 'low', 'high', 'std_error'):
    assert report['sharpe'][key] == pytest.approx(ci[key], rel=1e-6)
  paired = significance.paired_block_bootstrap(strategy, market, 'total_return',
                                               num_resamples=200)
  for key in ('estimate', 'low', 'high', 'p_value', 'strategy', 'benchmark'):
    assert report['benchmark']['total_return_difference'][key] == pytest.approx(
        paired[key], rel=1e-6)

  # The test Sharpe ratio is not deflated by a search that ran elsewhere: PSR(0), HAC error.
  assert 'deflated_sharpe' not in report
  assert report['test_psr'] == sharpe_inference.probabilistic_sharpe_hac(strategy)
  shuffled = significance.shuffled_signal_test(positions, market, num_shuffles=100)
  assert report['shuffled_signal']['p_value'] == shuffled['p_value']
  assert 'null_sharpes' not in report['shuffled_signal']


def test_report_of_a_strategy_that_never_trades():
  market = _normal_returns(300, 0.0, 0.01, seed=15)
  report = significance.significance_report(
      np.zeros(300), market, np.zeros(300), num_resamples=200, num_shuffles=100)
  json.dumps(report, allow_nan=False)
  assert report['sharpe']['estimate'] is None
  assert report['test_psr']['psr'] is None and report['test_psr']['se'] is None
  assert report['total_return']['estimate'] == 0.0
  assert report['shuffled_signal']['p_value'] is None
  assert report['benchmark']['total_return_difference']['benchmark'] == pytest.approx(
      np.prod(1 + market) - 1, rel=1e-4)
