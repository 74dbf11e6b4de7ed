"""From member scores to decisions: calibrate, combine, HOLD where a member cannot score.

The one path every model takes from its scores to an action per bar (SPEC 5), FLAG-TRADER
members (members.py) and baselines (research/baselines.py, the benchmark) alike:

1. `calibrate_on_validation`: each member's `Calibration` for `config.calibration`, fitted on
   that member's own validation bars when the mode fits (`fits_on_validation`), with a
   JSON-able summary;
2. `apply_calibration`: its logits of the bars to decide -> calibrated probabilities, with
   `HOLD_PROBS` on the bars it cannot score (not enough history yet);
3. `decide`: the members' probabilities combined by an ensemble strategy
   (`ensemble.combine`), HOLD with confidence 0 on every bar some member cannot score.

`Decisions` holds the result; `Decisions.combined()` is the probability vector per bar that a
decision policy (backtest/policy.py) trades.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd

from himari_jax import config as config_lib
from himari_jax import constants
from himari_jax.inference import calibration as calibration_lib
from himari_jax.inference import ensemble as ensemble_lib

# The probabilities a member gives a bar it cannot score: HOLD for sure.
HOLD_PROBS = np.eye(constants.NUM_ACTIONS, dtype=np.float32)[constants.HOLD]


def fits_on_validation(mode: str, temperature: bool) -> bool:
  """Whether calibration `mode` (with or without a fitted temperature) reads validation bars."""
  return mode not in ('none', 'fixed') or bool(temperature)


def calibrate_on_validation(mode: str, *, bias: Sequence[float], temperature: bool,
                            validation: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None,
                            num_bins: int = 15) -> tuple[calibration_lib.Calibration,
                                                         dict[str, Any]]:
  """A member's calibration (`calibration.fit_calibration`) and its JSON-able summary.

  Args:
    mode: one of `calibration.MODES`.
    bias: (3,) the bias of mode 'fixed'.
    temperature: also fit a temperature.
    validation: (logits (V, 3), labels (V,) int, mask (V,) bool) of the member's validation
      bars; needed when `fits_on_validation(mode, temperature)`, else unused. Bars outside
      `mask` or with NaN logits (unavailable) are left out.
    num_bins: confidence bins of the expected calibration error in the summary.

  Returns:
    (calibration, summary): summary {'mode', 'bias', 'temperature'}, and for a fitted
    calibration the validation 'ece_before' and 'ece_after' it.

  Raises:
    ValueError: an unknown mode, or a fit without a validation bar to fit on.
  """
  if mode not in calibration_lib.MODES:
    raise ValueError(f'calibration.mode={mode!r}; valid: {", ".join(calibration_lib.MODES)}')
  if not fits_on_validation(mode, temperature):
    cal = calibration_lib.fit_calibration(None, None, mode=mode, bias=bias)
    return cal, {'mode': mode, **cal.to_dict()}
  if validation is None:
    raise ValueError(f'calibration.mode={mode!r} (temperature {temperature}) fits on '
                     'validation bars; none were given')
  logits, labels, mask = validation
  logits, labels = np.asarray(logits), np.asarray(labels)
  mask = np.asarray(mask, bool) & ~np.isnan(logits).any(axis=-1)
  if not mask.any():
    raise ValueError('calibration: no validation bar has both a label and an available '
                     'prediction')
  cal = calibration_lib.fit_calibration(logits, labels, mask, mode=mode, bias=bias,
                                        temperature=temperature)
  before = calibration_lib.Calibration()
  ece = {name: float(calibration_lib.expected_calibration_error(
      c.apply(logits[mask]), labels[mask], num_bins=num_bins))
         for name, c in (('ece_before', before), ('ece_after', cal))}
  return cal, {'mode': mode, **cal.to_dict(), **ece}


def apply_calibration(calibration: calibration_lib.Calibration,
                      logits: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """Calibrated probabilities of one member's logits.

  Args:
    calibration: the member's.
    logits: (N, 3), NaN rows where the member cannot score the bar.

  Returns:
    probs: (N, 3) float32, `HOLD_PROBS` where unavailable; available: (N,) bool.
  """
  logits = np.asarray(logits)
  available = ~np.isnan(logits).any(axis=-1)
  probs = np.array(calibration.apply(np.nan_to_num(logits)), np.float32)
  probs[~available] = HOLD_PROBS
  return probs, available


def hold_where_unavailable(probs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """Probabilities used as given (a position model's): (N, 3) with NaN rows where
  unavailable -> (`HOLD_PROBS` there, float32 (N, 3); available (N,) bool)."""
  probs = np.asarray(probs, np.float32)
  available = ~np.isnan(probs).any(axis=-1)
  return np.where(available[:, None], probs, HOLD_PROBS), available


def combined_probabilities(probs: np.ndarray, weights: Sequence[float] | None = None
                           ) -> np.ndarray:
  """The ensemble's probability vector per bar: the weighted mean of `(M, N, 3)` member
  probabilities (what every strategy of `ensemble.combine` reads), `(N, 3)` float64."""
  probs = np.asarray(probs, np.float64)
  w = np.ones(probs.shape[0]) if weights is None else np.asarray(weights, np.float64)
  mean = np.einsum('m,mnk->nk', w, probs) / w.sum()
  return mean / mean.sum(axis=-1, keepdims=True)


@dataclasses.dataclass(frozen=True)
class Decisions:
  """Everything decided on N bars by M members.

  probs: (M, N, 3) float32 calibrated member probabilities, `HOLD_PROBS` where that member
  cannot score; available: (N,) bool, every member scores the bar; actions: (N,) int32,
  HOLD where unavailable; confidence: (N,) float32, 0 where unavailable; members: their
  names; calibrations: one JSON-able summary per member; weights: (M,) of the ensemble, None
  for equal; index: the N bar times, when known.
  """

  probs: np.ndarray
  available: np.ndarray
  actions: np.ndarray
  confidence: np.ndarray
  members: list[str]
  calibrations: list[dict[str, Any]]
  weights: tuple[float, ...] | None = None
  index: pd.Index | None = None

  def combined(self) -> np.ndarray:
    """(N, 3) float64: the weighted mean of the members' probabilities per bar."""
    return combined_probabilities(self.probs, self.weights)


def decide(probs: np.ndarray, available: np.ndarray, *, strategy: str, threshold: float,
           weights: Sequence[float] | None = None, members: Sequence[str],
           calibrations: Sequence[dict[str, Any]], index: pd.Index | None = None) -> Decisions:
  """The members' calibrated probabilities combined into one action and confidence per bar.

  Args:
    probs: (M, N, 3) calibrated probabilities, `HOLD_PROBS` where a member cannot score.
    available: (N,) bool, the bars every member scores; the others are HOLD, confidence 0.
    strategy: an `ensemble.STRATEGIES` name or alias (`config.STRATEGY_ALIASES`).
    threshold: BUY / SELL with confidence below it become HOLD.
    weights: (M,) ensemble weights, None for equal.
    members, calibrations: names and calibration summaries, one per member.
    index: the N bar times, when known.
  """
  actions, confidence = ensemble_lib.combine(probs, config_lib.strategy_name(strategy),
                                             threshold=threshold, weights=weights)
  actions = np.where(available, np.asarray(actions), constants.HOLD).astype(np.int32)
  confidence = np.where(available, np.asarray(confidence), 0.0).astype(np.float32)
  return Decisions(probs=probs, available=available, actions=actions, confidence=confidence,
                   members=list(members), calibrations=list(calibrations),
                   weights=None if weights is None else tuple(float(w) for w in weights),
                   index=index)
