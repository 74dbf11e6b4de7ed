"""Tests of ensemble strategies on hand-built probabilities with known answers."""


import jax
import jax.numpy as jnp
import numpy as np
import pytest

from himari_jax import config as config_lib
from himari_jax.constants import BUY, HOLD, SELL
from himari_jax.data import ohlcv as data
from himari_jax.inference import calibration, ensemble
from himari_jax.inference.ensemble import STRATEGIES


def _vote_probs(votes_per_bar):
  """(bars, models) votes -> (models, bars, 3) probs giving 0.7 to the vote, 0.15 elsewhere."""
  votes = np.asarray(votes_per_bar).T
  return np.where(np.eye(3, dtype=bool)[votes], 0.7, 0.15).astype(np.float32)


def _random_probs(num_models, num_bars, seed=0):
  rng = np.random.default_rng(seed)
  return rng.dirichlet(np.ones(3), size=(num_models, num_bars)).astype(np.float32)


@pytest.mark.parametrize('votes, expected', [
    ([SELL, SELL, BUY], SELL),  # a majority overrules the opposite minority
    ([BUY, BUY, HOLD], BUY),
    ([BUY, HOLD, SELL], HOLD),  # BUY-vs-SELL conflict without a majority
    ([BUY, SELL], HOLD),  # tie
    ([BUY, HOLD], HOLD),  # tie
    ([BUY, BUY], BUY),
    ([BUY, BUY, SELL, HOLD], HOLD),  # plurality but no majority
    ([SELL, SELL, BUY, BUY], HOLD),  # tie
    ([BUY, BUY, BUY, SELL, SELL], BUY),
    ([SELL, SELL, BUY, BUY, HOLD], HOLD),
    ([BUY, BUY, SELL, HOLD, HOLD], HOLD),
    ([HOLD] * 5, HOLD),
])
def test_voting(votes, expected):
  actions, confidence = ensemble.combine(_vote_probs([votes]), 'voting')
  assert actions.tolist() == [expected]
  # Confidence: mean over all models of the probability of the returned action.
  share = np.mean(np.asarray(votes) == expected)
  np.testing.assert_allclose(confidence, [0.7 * share + 0.15 * (1 - share)], rtol=1e-6)


def test_voting_uses_weights():
  probs = _vote_probs([[BUY, SELL, SELL], [SELL, SELL, BUY]])
  actions, _ = ensemble.combine(probs, 'voting', weights=[3.0, 1.0, 1.0])
  assert actions.tolist() == [BUY, SELL]  # 3 > 5 / 2; then 4 > 5 / 2
  actions, _ = ensemble.combine(probs, 'voting', weights=[1.0, 1.0, 2.0])
  assert actions.tolist() == [SELL, HOLD]  # 3 of 4 is a majority; 2 of 4 is a tie


def test_confidence_weighted():
  probs = np.array([
      [[0.6, 0.3, 0.1], [0.1, 0.2, 0.7], [0.25, 0.35, 0.4], [0.7, 0.2, 0.1]],
      [[0.1, 0.3, 0.6], [0.3, 0.4, 0.3], [0.25, 0.35, 0.4], [0.2, 0.2, 0.6]],
      [[0.3, 0.3, 0.4], [0.2, 0.6, 0.2], [0.9, 0.05, 0.05], [0.4, 0.2, 0.4]],
  ], dtype=np.float32)
  actions, confidence = ensemble.combine(probs[:2], 'confidence_weighted')
  # Bar 0: mean (0.35, 0.3, 0.35) ties BUY with SELL -> HOLD at 0.3.
  assert actions.tolist() == [HOLD, BUY, BUY, SELL]
  np.testing.assert_allclose(confidence, [0.3, 0.5, 0.4, 0.45], rtol=1e-6)
  actions, confidence = ensemble.combine(probs[:2], 'confidence_weighted', weights=[1, 3])
  assert actions.tolist() == [BUY, BUY, BUY, BUY]
  np.testing.assert_allclose(confidence, [0.475, 0.4, 0.4, 0.475], rtol=1e-6)
  # Bar 2: two weak BUY votes and one strong SELL: the mean says SELL, the vote says BUY.
  actions, confidence = ensemble.combine(probs, 'confidence_weighted')
  assert actions[2] == SELL
  np.testing.assert_allclose(confidence[2], 1.4 / 3, rtol=1e-6)
  assert ensemble.combine(probs, 'voting')[0][2] == BUY
  assert ensemble.combine(probs, 'disagreement')[0][2] == HOLD


def test_confidence_weighted_exact_ties_hold_despite_rounding():
  # Mirrored members tie BUY with SELL in exact arithmetic; float32 rounding of the inputs
  # and of the weighted mean used to break some of these ties towards one side.
  rng = np.random.default_rng(0)
  members = rng.dirichlet([1.0, 1.0, 1.0], size=500)
  probs = np.stack([members, members[:, ::-1]]).astype(np.float32)
  actions, confidence = ensemble.combine(probs, 'confidence_weighted')
  assert set(np.asarray(actions).tolist()) == {HOLD}
  np.testing.assert_allclose(confidence, members[:, 1], rtol=1e-6)
  # Three members, unequal weights: 0.5 * a + 0.25 * (b + c) = (0.35, 0.3, 0.35) exactly.
  probs = np.array([[[0.1, 0.3, 0.6]], [[0.7, 0.2, 0.1]], [[0.5, 0.4, 0.1]]], np.float32)
  assert ensemble.combine(probs, 'confidence_weighted', weights=[0.5, 0.25, 0.25])[0][0] == HOLD


def test_confidence_weighted_near_ties_still_trade():
  probs = np.array([[[0.35, 0.3, 0.35 + 1e-5]], [[0.35, 0.3, 0.35 - 1e-5 + 2e-5]]], np.float32)
  probs /= probs.sum(axis=-1, keepdims=True)
  assert ensemble.combine(probs, 'confidence_weighted')[0][0] == BUY


@pytest.mark.parametrize('votes, expected', [
    ([BUY] * 5, BUY),
    ([SELL] * 5, SELL),
    ([BUY, BUY, BUY, BUY, HOLD], HOLD),
    ([SELL, SELL, SELL, SELL, BUY], HOLD),
    ([HOLD] * 5, HOLD),
    ([BUY, BUY], BUY),
    ([BUY, SELL], HOLD),
])
def test_disagreement(votes, expected):
  actions, confidence = ensemble.combine(_vote_probs([votes]), 'disagreement')
  assert actions.tolist() == [expected]
  share = np.mean(np.asarray(votes) == expected)
  np.testing.assert_allclose(confidence, [0.7 * share + 0.15 * (1 - share)], rtol=1e-6)


def test_disagreement_ignores_models_of_zero_weight():
  probs = _vote_probs([[BUY, BUY, SELL]])
  actions, _ = ensemble.combine(probs, 'disagreement', weights=[1.0, 1.0, 0.0])
  assert actions.tolist() == [BUY]


@pytest.mark.parametrize('strategy', STRATEGIES)
def test_all_hold_stays_hold(strategy):
  probs = np.tile(np.float32([0.2, 0.6, 0.2]), (5, 4, 1))
  actions, confidence = ensemble.combine(probs, strategy, threshold=0.0)
  assert actions.tolist() == [HOLD] * 4
  np.testing.assert_allclose(confidence, 0.6, rtol=1e-6)


@pytest.mark.parametrize('strategy', STRATEGIES)
def test_single_model_is_argmax_with_threshold(strategy):
  probs = _random_probs(1, 200)
  for threshold in (0.0, 0.5, 0.7):
    actions, confidence = ensemble.combine(probs, strategy, threshold=threshold)
    expected = probs[0].argmax(-1)
    expected = np.where(probs[0].max(-1) < threshold, HOLD, expected)
    np.testing.assert_array_equal(actions, expected)
    np.testing.assert_array_equal(confidence, probs[0][np.arange(200), expected])


@pytest.mark.parametrize('strategy', STRATEGIES)
def test_threshold_edges(strategy):
  probs = np.float32([[[0.2, 0.2, 0.6], [0.6, 0.2, 0.2], [0.2, 0.7, 0.1], [0.4, 0.2, 0.4]]])
  probs = np.concatenate([probs, probs])  # M = 2 identical models: every strategy agrees
  at = np.float32(0.6)
  actions, confidence = ensemble.combine(probs, strategy, threshold=float(at))
  assert actions.tolist() == [BUY, SELL, HOLD, HOLD]  # confidence == threshold trades
  np.testing.assert_allclose(confidence, [0.6, 0.6, 0.7, 0.2], rtol=1e-6)
  above = float(np.nextafter(at, np.float32(1)))
  actions, confidence = ensemble.combine(probs, strategy, threshold=above)
  assert actions.tolist() == [HOLD, HOLD, HOLD, HOLD]  # HOLD reported with its own probability
  np.testing.assert_allclose(confidence, [0.2, 0.2, 0.7, 0.2], rtol=1e-6)


def test_vmap_over_strategies_and_thresholds_matches_separate_calls():
  probs = _random_probs(3, 64, seed=1)
  weights = np.float32([1.0, 2.0, 0.5])
  thresholds = np.float32([0.0, 0.4, 0.5, 0.7])
  sweep = jax.vmap(jax.vmap(ensemble.combine_by_index, (None, None, 0, None)),
                   (None, 0, None, None))
  actions, confidence = sweep(
      jnp.asarray(probs), jnp.arange(len(STRATEGIES)), jnp.asarray(thresholds), weights)
  assert actions.shape == confidence.shape == (len(STRATEGIES), len(thresholds), 64)
  for i, strategy in enumerate(STRATEGIES):
    for j, threshold in enumerate(thresholds):
      expected = ensemble.combine(probs, strategy, threshold=float(threshold), weights=weights)
      np.testing.assert_array_equal(actions[i, j], expected[0])
      np.testing.assert_array_equal(confidence[i, j], expected[1])
  assert len(np.unique(np.asarray(actions).reshape(-1, 64), axis=0)) > 4  # the sweep varies


@pytest.mark.parametrize('kwargs, message', [
    (dict(strategy='vote'), "unknown ensemble strategy 'vote'; expected one of"),
    (dict(probs=np.full((4, 3), 1 / 3)), r'probs\[None\]'),
    (dict(probs=np.full((2, 4, 2), 0.5)), r'shape \(models >= 1, bars, 3\)'),
    (dict(probs=np.zeros((0, 4, 3))), r'models >= 1'),
    (dict(probs=np.full((2, 4, 3), 0.5)), r'probs\[0, 0\] sums to 1.5'),
    (dict(probs=np.where(np.arange(3) == 0, np.nan, 0.5) * np.ones((2, 4, 1))), 'NaN'),
    (dict(probs=np.tile([1.2, -0.1, -0.1], (2, 4, 1))), 'non-negative'),
    (dict(weights=[1.0]), r'one entry per model \(2\)'),
    (dict(weights=[1.0, -1.0]), 'non-negative'),
    (dict(weights=[0.0, 0.0]), 'not all zero'),
    (dict(threshold=1.5), r'threshold must be in \[0, 1\]'),
])
def test_bad_inputs_raise(kwargs, message):
  arguments = dict(probs=np.full((2, 4, 3), 1 / 3), strategy='voting')
  arguments.update(kwargs)
  probs, strategy = arguments.pop('probs'), arguments.pop('strategy')
  with pytest.raises(ValueError, match=message):
    ensemble.combine(probs, strategy, **arguments)


def test_ensemble_config_names_valid_choices():
  config = config_lib.load_config('ensemble')
  assert config.strategy in STRATEGIES
  assert config.calibration.mode in calibration.MODES
  assert config.dataset in data.builtin_dataset_names()
  probs = _random_probs(2, 8)
  ensemble.combine(probs, config.strategy, threshold=config.confidence_threshold)
  assert len(config.checkpoints.split(',')) >= 2
