"""Tests of logit correction, fitted biases, temperature scaling and ECE on synthetic models."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from himari_jax.inference import calibration
from himari_jax.inference.calibration import Calibration

_LABEL_RATES = (0.2, 0.6, 0.2)


def _collapsed_model(num_bars=4000, seed=0):
  """Labels at 20/60/20 and informative logits with a +2.5 HOLD skew: argmax is >90% HOLD.

  The logits are one-hot(label) plus unit Gaussian noise plus the skew.
  """
  rng = np.random.default_rng(seed)
  labels = rng.choice(3, size=num_bars, p=_LABEL_RATES)
  logits = np.eye(3)[labels] + rng.normal(size=(num_bars, 3)) + [0.0, 2.5, 0.0]
  return logits.astype(np.float32), labels


def _calibrated_model(num_bars=4000, seed=0):
  """Logits whose softmax is the true label distribution, and labels drawn from it."""
  rng = np.random.default_rng(seed)
  logits = 1.5 * rng.normal(size=(num_bars, 3)).astype(np.float32)
  probs = np.asarray(jax.nn.softmax(logits), dtype=np.float64)
  labels = (rng.random((num_bars, 1)) > np.cumsum(probs, axis=-1)).sum(-1)
  return logits, labels


def _log_loss(logits, labels):
  return -jnp.mean(jax.nn.log_softmax(logits)[jnp.arange(len(labels)), labels])


def test_apply_logit_bias_and_calibration_apply():
  logits = jnp.asarray(np.random.default_rng(0).normal(size=(2, 5, 3)), jnp.float32)
  corrected = calibration.apply_logit_bias(logits, calibration.SEED_BIAS)
  np.testing.assert_allclose(corrected - logits, np.broadcast_to([3.0, -2.5, 1.0], (2, 5, 3)),
                             atol=1e-6)
  calib = Calibration(bias=calibration.SEED_BIAS, temperature=2.0)
  probs = calib.apply(logits)
  np.testing.assert_allclose(probs, jax.nn.softmax(corrected / 2.0), rtol=1e-6)
  # The temperature only rescales confidences; decisions come from the bias alone.
  np.testing.assert_array_equal(probs.argmax(-1), corrected.argmax(-1))
  with pytest.raises(ValueError, match=r'logits must be \(..., 3\)'):
    calibration.apply_logit_bias(logits[..., :2], calibration.SEED_BIAS)


def test_calibration_json_round_trip():
  calib = Calibration(bias=np.float32([0.5, -1.0, 0.5]), temperature=np.float32(1.7))
  restored = Calibration.from_dict(json.loads(json.dumps(calib.to_dict())))
  assert restored == calib
  assert restored.bias == (0.5, -1.0, 0.5)
  with pytest.raises(ValueError, match='temperature must be positive'):
    Calibration(temperature=0.0)
  with pytest.raises(ValueError, match='bias must be 3 finite numbers'):
    Calibration(bias=(1.0, 2.0))
  with pytest.raises(ValueError, match=r"unknown Calibration fields \['scale'\]"):
    Calibration.from_dict({'bias': [0, 0, 0], 'temperature': 1.0, 'scale': 2.0})


@pytest.mark.parametrize('target', [_LABEL_RATES, (0.1, 0.8, 0.1), (0.35, 0.3, 0.35)])
def test_fit_rate_bias_restores_argmax_rates_of_collapsed_model(target):
  logits, _ = _collapsed_model()
  assert calibration.action_rates(logits.argmax(-1))[1] > 0.9
  bias = calibration.fit_rate_bias(logits, target)
  rates = calibration.action_rates((logits + bias).argmax(-1))
  np.testing.assert_allclose(rates, target, atol=0.02)
  assert abs(bias.mean()) < 1e-6


def test_fit_rate_bias_ignores_masked_bars():
  logits, _ = _collapsed_model()
  mask = np.arange(len(logits)) < 3000
  logits[~mask] = [0.0, 0.0, 50.0]  # would drag any unmasked fit toward fewer BUYs
  bias = calibration.fit_rate_bias(logits, _LABEL_RATES, mask)
  rates = calibration.action_rates((logits + bias).argmax(-1), mask)
  np.testing.assert_allclose(rates, _LABEL_RATES, atol=0.02)


def test_fit_logloss_bias_is_the_log_loss_minimum():
  logits, labels = _collapsed_model()
  bias = calibration.fit_logloss_bias(logits, labels)
  gradient = jax.grad(lambda b: _log_loss(logits + b, labels))(jnp.asarray(bias))
  np.testing.assert_allclose(gradient, 0.0, atol=1e-4)
  fitted = _log_loss(logits + bias, labels)
  assert fitted < _log_loss(logits, labels)
  assert fitted < _log_loss(logits + jnp.asarray(calibration.SEED_BIAS), labels)
  # Optimality condition: mean predicted probabilities equal the label rates.
  np.testing.assert_allclose(jax.nn.softmax(logits + bias).mean(0),
                             calibration.action_rates(labels), atol=1e-3)


def test_temperature_scaling_fixes_an_over_confident_model():
  logits, labels = _calibrated_model()
  over_confident = 3.0 * logits
  temperature = calibration.fit_temperature(over_confident, labels)
  assert temperature == pytest.approx(3.0, rel=0.1)
  before = calibration.expected_calibration_error(jax.nn.softmax(over_confident), labels)
  after = calibration.expected_calibration_error(
      jax.nn.softmax(over_confident / temperature), labels)
  assert before > 0.1
  assert after < 0.03
  assert after < before


def test_expected_calibration_error_by_hand():
  # One bin holds two bars at 0.85, one correct -> gap 0.35 with weight 2/4;
  # another two bars at 0.4, both correct -> gap 0.6 with weight 2/4.
  probs = np.float32([[0.85, 0.1, 0.05], [0.05, 0.1, 0.85], [0.4, 0.3, 0.3], [0.3, 0.3, 0.4]])
  labels = np.array([0, 0, 0, 2])
  ece = calibration.expected_calibration_error(probs, labels)
  assert ece == pytest.approx(0.5 * 0.35 + 0.5 * 0.6, abs=1e-6)
  ece = calibration.expected_calibration_error(probs, labels, np.array([1, 0, 1, 1], bool))
  assert ece == pytest.approx((0.15 + 2 * 0.6) / 3, abs=1e-6)


def test_fit_calibration_modes():
  logits, labels = _collapsed_model(num_bars=2000)
  assert calibration.fit_calibration(logits, labels, mode='none') == Calibration()
  fixed = calibration.fit_calibration(logits, labels, mode='fixed', bias=(1.0, 0.0, 1.0))
  assert fixed == Calibration(bias=(1.0, 0.0, 1.0))
  rates = calibration.fit_calibration(logits, labels, mode='fit_rates')
  predicted = calibration.action_rates(rates.apply(logits).argmax(-1))
  np.testing.assert_allclose(predicted, calibration.action_rates(labels), atol=0.02)
  logloss = calibration.fit_calibration(logits, labels, mode='fit_logloss', temperature=True)
  corrected = logits + np.float32(logloss.bias)
  assert logloss.temperature == pytest.approx(calibration.fit_temperature(corrected, labels))
  # Unit Gaussian noise around one-hot means makes the true log-odds the logits themselves plus
  # a per-action constant, so once the bias absorbs the constant the best temperature is 1.
  assert logloss.temperature == pytest.approx(1.0, abs=0.05)


@pytest.mark.parametrize('call, message', [
    (lambda x, y: calibration.fit_logloss_bias(x[:, :2], y), r'shape \(..., 3\)'),
    (lambda x, y: calibration.fit_logloss_bias(np.where(x > 2, np.nan, x), y), 'NaN or inf'),
    (lambda x, y: calibration.fit_logloss_bias(x, y[:-1]), 'labels must be integers of shape'),
    (lambda x, y: calibration.fit_logloss_bias(x, np.where(y == 2, 5, y)), 'got 5 at'),
    (lambda x, y: calibration.fit_logloss_bias(x, np.where(y == 2, 1, y)), 'every action'),
    (lambda x, y: calibration.fit_temperature(x, y, np.zeros(len(y), bool)), 'selects no bars'),
    (lambda x, y: calibration.fit_temperature(x, y, np.ones(len(y))), 'bool array'),
    (lambda x, y: calibration.fit_rate_bias(x, (0.5, 0.5, 0.5)), 'summing to 1'),
    (lambda x, y: calibration.fit_rate_bias(x, (0.0, 1.0, 0.0)), 'positive rates'),
    (lambda x, y: calibration.fit_calibration(x, y, mode='auto'), 'unknown calibration mode'),
    (lambda x, y: calibration.expected_calibration_error(x, y), 'sum to 1'),
])
def test_bad_inputs_raise(call, message):
  logits, labels = _collapsed_model(num_bars=50)
  with pytest.raises(ValueError, match=message):
    call(logits, labels)


def test_masked_bars_may_hold_nan_logits_and_any_label():
  logits, labels = _collapsed_model(num_bars=500)
  mask = np.arange(500) < 400
  unavailable = np.where(mask[:, None], logits, np.nan)
  bias = calibration.fit_logloss_bias(unavailable, np.where(mask, labels, -1), mask)
  np.testing.assert_allclose(bias, calibration.fit_logloss_bias(logits[:400], labels[:400]),
                             atol=1e-4)
