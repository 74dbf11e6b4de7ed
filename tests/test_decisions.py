"""The shared calibrate -> combine -> HOLD steps of members and baselines."""

import numpy as np
import pytest

from himari_jax.inference import calibration, decisions


def test_calibrate_apply_and_decide_hold_where_a_member_cannot_score():
  rng = np.random.default_rng(0)
  val_logits = rng.normal(size=(600, 3)) + np.array([0.0, 1.5, 0.0])
  val_labels = rng.choice(3, size=600, p=[0.35, 0.3, 0.35]).astype(np.int32)
  val_logits[:20] = np.nan  # unavailable validation bars are left out of the fit
  cal, summary = decisions.calibrate_on_validation(
      'fit_rates', bias=(0.0, 0.0, 0.0), temperature=True,
      validation=(val_logits, val_labels, np.ones(600, bool)), num_bins=10)
  assert summary['mode'] == 'fit_rates' and summary['temperature'] == cal.temperature
  assert summary['ece_after'] <= summary['ece_before']

  logits = rng.normal(size=(2, 50, 3)).astype(np.float32)
  logits[0, :4] = np.nan  # member 0 has no history for the first 4 bars
  scored = [decisions.apply_calibration(cal, member) for member in logits]
  probs = np.stack([p for p, _ in scored])
  available = scored[0][1] & scored[1][1]
  np.testing.assert_array_equal(probs[0, :4], np.tile(decisions.HOLD_PROBS, (4, 1)))
  np.testing.assert_allclose(probs[1], np.asarray(cal.apply(logits[1])), rtol=1e-6)
  out = decisions.decide(probs, available, strategy='unanimous', threshold=0.0,
                         weights=[1.0, 3.0], members=['a', 'b'], calibrations=[summary] * 2)
  assert not out.available[:4].any() and out.available[4:].all()
  assert (out.actions[:4] == 1).all() and (out.confidence[:4] == 0).all()
  both = probs.argmax(-1)
  agree = (both[0] == both[1])[4:]
  np.testing.assert_array_equal(out.actions[4:][agree], both[0, 4:][agree])
  np.testing.assert_allclose(out.combined(), (probs[0] + 3 * probs[1]) / 4, rtol=1e-6)


def test_fixed_modes_need_no_validation_and_fits_do():
  cal, summary = decisions.calibrate_on_validation('fixed', bias=(0.1, -0.2, 0.1),
                                                   temperature=False)
  assert cal == calibration.Calibration(bias=(0.1, -0.2, 0.1)) and 'ece_after' not in summary
  assert not decisions.fits_on_validation('none', False)
  assert decisions.fits_on_validation('fixed', True)
  with pytest.raises(ValueError, match='fits on validation bars'):
    decisions.calibrate_on_validation('fit_logloss', bias=(0, 0, 0), temperature=False)
  with pytest.raises(ValueError, match='no validation bar'):
    decisions.calibrate_on_validation(
        'fit_rates', bias=(0, 0, 0), temperature=False,
        validation=(np.full((5, 3), np.nan), np.ones(5, np.int32), np.ones(5, bool)))
  with pytest.raises(ValueError, match="calibration.mode='rates'"):
    decisions.calibrate_on_validation('rates', bias=(0, 0, 0), temperature=False)
