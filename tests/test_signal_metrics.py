"""Signal metrics against independent computations (scipy, and plain loops in numpy)."""

import math

import numpy as np
import pytest
from scipy import stats

from himari_jax.stats import signal_metrics as sm


def _random_case(n=400, seed=0):
  rng = np.random.default_rng(seed)
  logits = rng.normal(size=(n, 3))
  probs = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
  labels = rng.integers(0, 3, size=n)
  returns = 0.01 * (probs[:, 2] - probs[:, 0]) + rng.normal(scale=0.01, size=n)
  mask = rng.random(n) > 0.1
  return probs, labels, returns, mask


def _reference_f1(y, a):
  """Macro F1 from per-class precision and recall (sklearn's definition), by loops."""
  scores = []
  for k in sorted(set(y) | set(a)):
    tp = sum(1 for t, p in zip(y, a, strict=True) if t == k and p == k)
    fp = sum(1 for t, p in zip(y, a, strict=True) if t != k and p == k)
    fn = sum(1 for t, p in zip(y, a, strict=True) if t == k and p != k)
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    scores.append(2 * precision * recall / (precision + recall) if precision + recall else 0.0)
  return float(np.mean(scores))


def test_metrics_match_independent_computations():
  probs, labels, returns, mask = _random_case()
  prior = np.array([0.3, 0.5, 0.2])
  out = sm.signal_metrics(probs, labels, mask, returns, prior)
  y, p, r = labels[mask], probs[mask], returns[mask]
  s = p[:, 2] - p[:, 0]
  assert out['n'] == mask.sum()
  assert out['ic'] == pytest.approx(stats.pearsonr(s, r).statistic, abs=1e-12)
  assert out['rank_ic'] == pytest.approx(stats.spearmanr(s, r).statistic, abs=1e-12)
  ll = -np.mean([math.log(p[i, y[i]]) for i in range(len(y))])
  ll_prior = -np.mean([math.log(prior[k]) for k in y])
  assert out['log_loss'] == pytest.approx(ll)
  assert out['log_loss_prior'] == pytest.approx(ll_prior)
  assert out['log_loss_skill'] == pytest.approx(1 - ll / ll_prior)
  brier = np.mean([sum((p[i, k] - (y[i] == k)) ** 2 for k in range(3)) for i in range(len(y))])
  brier_prior = np.mean([sum((prior[k] - (t == k)) ** 2 for k in range(3)) for t in y])
  assert out['brier'] == pytest.approx(brier)
  assert out['brier_skill'] == pytest.approx(1 - brier / brier_prior)
  a = p.argmax(axis=1)
  recall = [np.mean(a[y == k] == k) for k in range(3)]
  assert out['balanced_accuracy'] == pytest.approx(np.mean(recall))
  assert out['macro_f1'] == pytest.approx(_reference_f1(list(y), list(a)))


def test_rank_ic_with_ties_matches_scipy():
  rng = np.random.default_rng(1)
  s = rng.integers(-2, 3, size=200).astype(float)
  r = rng.integers(-1, 2, size=200) + 0.3 * s
  assert sm.rank_information_coefficient(s, r) == pytest.approx(
      stats.spearmanr(s, r).statistic, abs=1e-12)


def test_prior_has_zero_skill_and_perfect_model_full_skill():
  labels = np.array([0, 1, 1, 2, 1, 0, 2, 1, 1, 1])
  returns = np.linspace(-0.02, 0.02, len(labels))
  prior = sm.label_prior(labels)
  np.testing.assert_allclose(prior, [0.2, 0.6, 0.2])
  as_prior = sm.signal_metrics(np.tile(prior, (10, 1)), labels, None, returns, prior)
  assert as_prior['log_loss_skill'] == pytest.approx(0.0)
  assert as_prior['brier_skill'] == pytest.approx(0.0)
  perfect = sm.signal_metrics(np.eye(3)[labels], labels, None, returns, prior)
  assert perfect['brier_skill'] == pytest.approx(1.0)
  assert perfect['log_loss'] < 1e-11


def test_constant_signal_gives_nan_ic():
  probs = np.tile([0.05, 0.05, 0.9], (50, 1))  # buy-and-hold
  labels = np.arange(50) % 3
  returns = np.random.default_rng(0).normal(size=50)
  out = sm.signal_metrics(probs, labels, None, returns, [1 / 3] * 3)
  assert math.isnan(out['ic']) and math.isnan(out['rank_ic'])
  assert math.isnan(sm.information_coefficient(returns, np.zeros(50)))
  assert math.isnan(sm.information_coefficient([0.1, 0.2], [0.3, 0.1]))  # < 3 bars


def test_missing_class():
  labels = np.array([1, 1, 2, 2, 1, 2])  # no SELL in the labels
  actions = np.array([1, 0, 2, 2, 1, 1])  # SELL predicted once
  # Balanced accuracy: recall of HOLD 2/3 and BUY 2/3; SELL absent from the labels.
  assert sm.balanced_accuracy(actions, labels) == pytest.approx(2 / 3)
  assert sm.macro_f1(actions, labels) == pytest.approx(_reference_f1(list(labels), list(actions)))
  # A class neither true nor predicted takes no part.
  assert sm.macro_f1(np.array([1, 2]), np.array([1, 2])) == pytest.approx(1.0)
  # A class with prior 0 that occurs: the clipped log loss is large but finite.
  probs = np.tile([0.0, 0.5, 0.5], (6, 1))
  assert math.isfinite(sm.log_loss(probs, np.array([0, 1, 2, 1, 2, 1])))


def test_aggregate_folds():
  ics = [0.02, 0.05, -0.01, 0.04]
  folds = [{'ic': v, 'brier_skill': 0.01} for v in ics] + [{'ic': math.nan, 'brier_skill': 0.01}]
  out = sm.aggregate_folds(folds, metrics=('ic', 'brier_skill'))
  mean, std = np.mean(ics), np.std(ics, ddof=1)
  assert out['ic']['n_folds'] == 4
  assert out['ic']['mean'] == pytest.approx(mean)
  assert out['ic']['icir'] == pytest.approx(mean / std)
  assert out['ic']['t_stat'] == pytest.approx(stats.ttest_1samp(ics, 0.0).statistic)
  assert math.isnan(out['brier_skill']['t_stat'])  # identical folds: std 0
  assert 'icir' not in out['brier_skill']


def test_forward_returns_and_errors():
  close = np.array([100.0, 110.0, 99.0, 120.0])
  np.testing.assert_allclose(sm.forward_returns(close, 2), [-0.01, 120 / 110 - 1, np.nan, np.nan])
  probs, labels, returns, _ = _random_case(10)
  returns[3] = np.nan
  with pytest.raises(ValueError, match='bar 3'):
    sm.signal_metrics(probs, labels, None, returns, [1 / 3] * 3)
  probs[4] = np.nan
  with pytest.raises(ValueError, match='probs row 4'):
    sm.log_loss(probs, labels)
  with pytest.raises(ValueError, match='bar 2 has 5'):
    sm.label_prior(np.array([0, 1, 5]))


def test_ic_contributions_average_to_the_ic():
  rng = np.random.default_rng(3)
  s = rng.normal(size=300)
  r = 0.2 * s + rng.normal(size=300)
  mask = np.ones(300, bool)
  mask[::7] = False
  terms = sm.ic_contributions(s, np.where(mask, r, np.nan), mask)
  assert np.all(np.isnan(terms['ic'][~mask]))
  np.testing.assert_allclose(np.nanmean(terms['ic']),
                             sm.information_coefficient(s, r, mask), rtol=1e-12)
  np.testing.assert_allclose(np.nanmean(terms['rank_ic']),
                             sm.rank_information_coefficient(s, r, mask), rtol=1e-12)
  assert np.all(np.isnan(sm.ic_contributions(np.ones(300), r)['ic']))
