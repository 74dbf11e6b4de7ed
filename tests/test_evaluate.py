"""Shared evaluation steps: diagnostics on known arrays, decisions with unavailable bars."""

import ml_collections
import numpy as np

from himari_jax import config as config_lib
from himari_jax import evaluate


def test_diagnostics_known_confusion():
  # Labels S, H, H, B, B, B; predictions (argmax) S, H, B, B, B, H; one masked bar ignored.
  labels = np.array([0, 1, 1, 2, 2, 2, 0])
  preds = np.array([0, 1, 2, 2, 2, 1, 2])
  logits = np.eye(3)[preds] * 2.0
  mask = np.array([1, 1, 1, 1, 1, 1, 0], bool)
  out = evaluate.diagnostics(logits, labels, mask)
  assert out['bars'] == 6
  assert out['confusion'] == [[1, 0, 0], [0, 1, 1], [0, 1, 2]]
  assert out['accuracy'] == 4 / 6
  assert out['predicted_share'] == {'SELL': 1 / 6, 'HOLD': 2 / 6, 'BUY': 3 / 6}
  assert out['label_share'] == {'SELL': 1 / 6, 'HOLD': 2 / 6, 'BUY': 3 / 6}
  assert out['precision'] == {'SELL': 1.0, 'HOLD': 0.5, 'BUY': 2 / 3}
  assert out['recall'] == {'SELL': 1.0, 'HOLD': 0.5, 'BUY': 2 / 3}
  np.testing.assert_allclose(out['mean_logits_by_label']['BUY'], [0, 2 / 3, 4 / 3], atol=1e-4)
  assert not out['collapsed']


def test_diagnostics_flags_collapse_and_skips_unavailable():
  logits = np.tile([0.0, 3.0, 0.0], (100, 1))
  logits[:5] = [3.0, 0.0, 0.0]
  logits[-10:] = np.nan  # unavailable predictions are not counted
  labels = np.ones(100, int)
  out = evaluate.diagnostics(logits, labels, np.ones(100, bool))
  assert out['bars'] == 90
  assert out['collapsed'] and out['collapsed_to'] == 'HOLD'
  assert out['precision']['BUY'] is None and out['recall']['SELL'] is None


def test_split_list():
  assert config_lib.split_list(' a, b ,,c ') == ['a', 'b', 'c']
  assert config_lib.split_list(('x', ' y')) == ['x', 'y']


def test_decide_holds_where_a_member_is_unavailable(tiny_config, tmp_path):
  from himari_jax import data, train

  tiny_config.train.num_epochs = 1
  tiny_config.train.steps_per_epoch = 2
  train.train_and_evaluate(tiny_config, str(tmp_path))
  member = evaluate.load_member(str(tmp_path))
  df = data.builtin_dataset('btc_usdt_1h_2025_2026').iloc[:400]
  cal = ml_collections.ConfigDict({'mode': 'fit_rates', 'bias': (0.0, 0.0, 0.0),
                                   'temperature': True, 'num_bins': 10})
  decisions = evaluate.decide([member, member], ['a', 'b'], df, strategy='voting',
                              threshold=0.0, weights=None, calibration_config=cal)
  first = ~decisions.available
  assert first[:100].all() and decisions.available[-100:].all()
  assert (decisions.actions[first] == 1).all() and (decisions.confidence[first] == 0).all()
  assert decisions.probs.shape == (2, 400, 3)
  assert set(decisions.calibrations[0]) >= {'bias', 'temperature', 'ece_before', 'ece_after'}
  # Two identical members agree, so voting equals either member's argmax after calibration.
  np.testing.assert_array_equal(decisions.actions[decisions.available],
                                decisions.probs[0][decisions.available].argmax(axis=1))
