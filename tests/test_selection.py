"""Where a search is deflated and what a test Sharpe ratio may claim (SPEC 11): HAC errors of
the Sharpe ratio, PSR and power, the selection DSR in one convention, Holm, null p-values."""

import math
import statistics

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from himari_jax.stats import selection, sharpe_inference, significance

NORMAL = statistics.NormalDist()


def _ar1(n, phi, mean=0.0, seed=0):
  noise = np.random.default_rng(seed).normal(0.0, 0.01, n + 200)
  values = np.zeros_like(noise)
  for t in range(1, noise.size):
    values[t] = phi * values[t - 1] + noise[t]
  return values[200:] + mean


# --- HAC standard error of the Sharpe ratio ---------------------------------------------------


def test_hac_psr_at_zero_lags_is_the_iid_psr_with_skew_and_kurtosis():
  returns = np.random.default_rng(0).standard_t(4, 2000) * 0.01 + 0.0008
  moments = significance.return_moments(returns)
  hac = sharpe_inference.probabilistic_sharpe_hac(returns, periods_per_year=1, lags=0)
  assert hac['psr'] == pytest.approx(significance.probabilistic_sharpe_ratio(
      moments['sharpe'], 2000, moments['skewness'], moments['kurtosis']), abs=1e-6)
  assert hac['se'] == pytest.approx(hac['se_iid'], rel=1e-12)


def test_hac_error_matches_the_delta_method_on_arch_and_the_jax_kernel():
  returns = _ar1(3000, 0.3, mean=0.002, seed=1)
  error = sharpe_inference.sharpe_standard_error(returns)
  from arch.covariance.kernel import Bartlett
  centred = returns - returns.mean()
  variance = np.mean(centred ** 2)
  moments = np.stack([centred, centred ** 2 - variance], axis=1)
  # Lo (2002): Var(SR) = g' S g / (n - 1), S the Bartlett long-run covariance of the moments.
  long_run = Bartlett(moments, bandwidth=error['lags']).cov.long_run
  gradient = np.array([1 / math.sqrt(variance), -error['sharpe'] / (2 * variance)])
  assert error['se'] == pytest.approx(math.sqrt(gradient @ long_run @ gradient / 2999), rel=1e-9)
  # Lags from the data: Newey-West's automatic bandwidth of the influence series.
  influence = centred / math.sqrt(variance) - error['sharpe'] / (2 * variance) * moments[:, 1]
  assert error['lags'] == int(Bartlett(influence, force_int=True).bandwidth) > 0
  # The jit / vmap version used inside the policy grid gives the same error.
  batch = jnp.asarray(np.stack([returns, returns[::-1]]), jnp.float32)
  jitted = jax.jit(jax.vmap(sharpe_inference.sharpe_variance_hac, (0, None)))(
      batch, error['lags'])
  np.testing.assert_allclose(np.sqrt(np.asarray(jitted)), error['se'], rtol=2e-4)


def test_hac_error_sees_the_autocorrelation_the_iid_error_misses():
  # AR(1) with phi = 0.5: the variance of the mean is (1 + phi) / (1 - phi) = 3 times iid's.
  ratios = [sharpe_inference.sharpe_standard_error(_ar1(4000, 0.5, seed=s)) for s in range(5)]
  ratio = np.mean([r['se'] / r['se_iid'] for r in ratios])
  assert ratio == pytest.approx(math.sqrt(3), rel=0.15)


def test_hac_psr_holds_its_size_where_the_iid_psr_does_not():
  # 200 AR(1) series with a true Sharpe ratio of 0: a 5 % test should reject about 10 times
  # (binomial sd 3); the i.i.d. error, too small by sqrt(3), rejects about 17 % of them.
  hac, iid = [], []
  for seed in range(200):
    returns = _ar1(1500, 0.5, seed=100 + seed)
    result = sharpe_inference.probabilistic_sharpe_hac(returns, periods_per_year=1)
    hac.append(result['psr'] > 0.95)
    iid.append(NORMAL.cdf(result['sharpe'] / result['se_iid']) > 0.95)
  assert sum(hac) <= 18 and sum(iid) >= 22


def test_minimum_detectable_sharpe_is_the_power_multiple_of_the_error():
  returns = np.random.default_rng(2).normal(0.0002, 0.01, 8760)
  result = sharpe_inference.probabilistic_sharpe_hac(returns)
  assert sharpe_inference.POWER_Z == pytest.approx(1.6449 + 0.8416, abs=1e-3)
  assert result['min_detectable_sharpe'] == pytest.approx(
      sharpe_inference.POWER_Z * result['se'])
  # One year of iid hourly returns: SE(annual Sharpe) ~ 1, so about 2.5 is detectable.
  assert result['min_detectable_sharpe'] == pytest.approx(2.49, abs=0.25)
  assert result['label'] == 'test: PSR(0), HAC s.e.'
  flat = sharpe_inference.probabilistic_sharpe_hac(np.zeros(100))
  assert math.isnan(flat['psr']) and math.isnan(flat['se'])


# --- The deflated Sharpe ratio of a search, where it ran --------------------------------------


def _closed_form_dsr(sharpe, bars, skewness, kurtosis, num_trials, variance):
  """Bailey & Lopez de Prado (2014), eq. for DSR, written out."""
  gamma = 0.5772156649015329
  sr0 = math.sqrt(variance) * ((1 - gamma) * NORMAL.inv_cdf(1 - 1 / num_trials)
                               + gamma * NORMAL.inv_cdf(1 - 1 / (num_trials * math.e)))
  spread = 1 - skewness * sharpe + (kurtosis - 1) / 4 * sharpe ** 2
  return NORMAL.cdf((sharpe - sr0) * math.sqrt(bars - 1) / math.sqrt(spread))


def test_selection_dsr_is_the_closed_form_whichever_way_the_length_is_expressed():
  rng = np.random.default_rng(3)
  winner = rng.standard_t(5, 6577) * 0.006 + 0.0004  # a validation winner's returns
  per_bar_trials = rng.normal(0.0, 0.012, 484)  # per-period Sharpe ratios of 484 policies
  moments = significance.return_moments(winner)
  variance = np.var(per_bar_trials, ddof=1)
  expected = _closed_form_dsr(moments['sharpe'], 6577, moments['skewness'], moments['kurtosis'],
                              484, variance)

  # Per bar: Sharpe ratios per period and the length in bars.
  per_bar = selection.selection_deflated_sharpe(winner, per_bar_trials, periods_per_year=1)
  # Per year: annualised Sharpe ratios (a sweep's table) and the length in years.
  per_year = selection.selection_deflated_sharpe(winner, per_bar_trials * math.sqrt(8760),
                                                 periods_per_year=8760)
  assert per_bar['dsr'] == pytest.approx(expected, abs=1e-12)
  assert per_year['dsr'] == pytest.approx(expected, abs=1e-12)
  # The closed form in years: annual SRs times sqrt(years) is the same z.
  years = (6577 - 1) / 8760
  annual = moments['sharpe'] * math.sqrt(8760)
  sr0_annual = significance.expected_max_sharpe(484, variance * 8760)
  spread = 1 - moments['skewness'] * moments['sharpe'] + (
      moments['kurtosis'] - 1) / 4 * moments['sharpe'] ** 2
  assert NORMAL.cdf((annual - sr0_annual) * math.sqrt(years) / math.sqrt(spread)) == \
      pytest.approx(expected, abs=1e-12)
  assert per_year['label'] == 'selection: DSR of the validation winner (484 trials, 6,577 ' \
                              'validation bars)'
  assert per_year['sharpe'] == pytest.approx(annual)
  assert per_year['expected_max_sharpe'] == pytest.approx(sr0_annual)

  # The two conventions the callers used before disagreed on these very inputs: the test
  # Sharpe of 11,280 bars deflated by the validation variance (evaluate, walk-forward) or by
  # that variance rescaled to the test length (benchmark). One function, one answer now.
  test_bars = 11280
  old_evaluate = _closed_form_dsr(moments['sharpe'], test_bars, moments['skewness'],
                                  moments['kurtosis'], 484, variance)
  old_benchmark = _closed_form_dsr(moments['sharpe'], test_bars, moments['skewness'],
                                   moments['kurtosis'], 484, variance * 6577 / test_bars)
  assert abs(old_evaluate - old_benchmark) > 0.05


def test_selection_dsr_counts_trials_that_never_traded():
  winner = np.random.default_rng(4).normal(0.001, 0.01, 500)
  sharpes = np.r_[np.random.default_rng(5).normal(0.0, 1.0, 8), np.nan, np.nan]
  counted = selection.selection_deflated_sharpe(winner, sharpes)
  assert counted['num_trials'] == 10
  assert counted['trial_sharpe_std'] == pytest.approx(np.nanstd(sharpes, ddof=1))
  one = selection.selection_deflated_sharpe(winner, [1.0, np.nan])  # no spread to deflate by
  moments = significance.return_moments(winner)
  assert one['expected_max_sharpe'] == 0.0 and one['dsr'] == pytest.approx(
      significance.probabilistic_sharpe_ratio(moments['sharpe'], 500, moments['skewness'],
                                              moments['kurtosis']))


# --- Multiple comparisons and nulls -----------------------------------------------------------


def test_holm_matches_statsmodels():
  multitest = pytest.importorskip('statsmodels.stats.multitest')
  p = [0.01, 0.04, 0.03, 0.2, 0.5]
  expected = multitest.multipletests(p, method='holm')[1]
  np.testing.assert_allclose(selection.holm_adjust(p), expected, rtol=1e-12)
  adjusted = selection.holm_adjust([0.02, math.nan, 0.03])
  assert adjusted[0] == pytest.approx(0.04) and math.isnan(adjusted[1])
  assert adjusted[2] == pytest.approx(0.04)  # step-down: never below an earlier one


def test_null_p_value_counts_ties_and_the_observation():
  assert selection.null_p_value([1.0, 2.0, 3.0], 2.0) == pytest.approx(3 / 4)
  assert selection.null_p_value([1.0, 2.0, 3.0], 5.0) == pytest.approx(1 / 4)
  assert selection.null_p_value([np.nan, -np.inf, 1.0], 0.5) == pytest.approx(2 / 3)
  assert math.isnan(selection.null_p_value([1.0], math.nan))
