"""Ensembles of FLAG-TRADER models: from probability vectors to actions and confidences.

Inputs are softmax probabilities `probs: (models, bars, 3)` (actions 0 = SELL, 1 = HOLD,
2 = BUY) of M >= 1 models, and optional per-model `weights: (models,)` (default equal; a model
of weight 0 takes no part in any strategy). Every strategy returns `actions: (bars,) int32`
and `confidence: (bars,) float32`.

Confidence (SPEC section 5, "the softmax probability of the chosen action") is, for every
strategy, the weighted mean over models of the probability each model gives the returned
action: `q[action]` with `q = sum_m w_m probs[m] / sum_m w_m`. Averaging over all models, not
only those that voted for the action, makes disagreement lower the confidence.

Each model's vote is its argmax; a probability vector whose maximum is shared by two or three
actions (e.g. `[0.4, 0.2, 0.4]`) votes HOLD. Strategies:

* `voting`: an action needs strictly more than half of the total vote weight, otherwise HOLD.
  So ties (BUY, SELL) and split votes (BUY, SELL, HOLD, or BUY, BUY, SELL, HOLD) give HOLD,
  while a majority overrules a minority (SELL, SELL, BUY gives SELL).
* `confidence_weighted`: the argmax of `q` (ties in `q` give HOLD). The weighted mean is
  computed in floating point, so two entries that are equal in exact arithmetic (mirrored
  members such as (0.2, 0.3, 0.5) and (0.5, 0.3, 0.2)) can differ in the last bits; entries
  within `_TIE_ULPS` units of rounding at 1.0 of the maximum count as tied.
* `disagreement` (unanimous): BUY / SELL only when every model votes for it, otherwise HOLD.

Threshold: a BUY / SELL whose confidence is below `threshold` becomes HOLD (with confidence
`q[HOLD]`); confidence equal to the threshold trades. HOLD is never changed. With one model
every strategy is that model's argmax plus the threshold.

`combine` validates concrete inputs and is the user-facing entry point. `combine_by_index` is
the same computation in pure jax.numpy, with the strategy as an index into `STRATEGIES` and
the threshold as a traced scalar, so a backtest can `jax.vmap` over both in one compiled call:

  sweep = jax.vmap(jax.vmap(combine_by_index, (None, None, 0, None)), (None, 0, None, None))
  actions, confidence = sweep(probs, jnp.arange(3), thresholds, weights)  # (3, thresholds, bars)
"""

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from himari_jax.constants import BUY, HOLD, SELL
from himari_jax.constants import NUM_ACTIONS as _NUM_ACTIONS

STRATEGIES = ('voting', 'confidence_weighted', 'disagreement')

_SUM_TOLERANCE = 1e-3  # probability vectors must sum to 1 within this
# Rounding of a weighted mean of probabilities in [0, 1] stays within a few units of
# eps; 8 (about 1e-6 in float32) is far below any difference a model expresses.
_TIE_ULPS = 8


def combine(probs: Any, strategy: str, *, threshold: float = 0.0,
            weights: Any = None) -> tuple[jax.Array, jax.Array]:
  """Combines the probabilities of M >= 1 models into one action per bar.

  Args:
    probs: (models, bars, 3) softmax probabilities; concrete (not traced) values.
    strategy: one of `STRATEGIES` (see the module docstring).
    threshold: BUY / SELL with confidence below it become HOLD; in [0, 1].
    weights: (models,) non-negative weights with a positive sum, or None for equal weights.

  Returns:
    actions: (bars,) int32 in {0, 1, 2}.
    confidence: (bars,) float32, the weighted mean probability of the returned action.

  Raises:
    ValueError: for an unknown strategy or malformed probs, weights or threshold.
  """
  if strategy not in STRATEGIES:
    raise ValueError(f'unknown ensemble strategy {strategy!r}; expected one of {STRATEGIES}')
  probs = _check_probs(probs)
  weights = _check_weights(weights, num_models=probs.shape[0])
  threshold = float(threshold)
  if not 0.0 <= threshold <= 1.0:
    raise ValueError(f'threshold must be in [0, 1], got {threshold}')
  return combine_by_index(
      jnp.asarray(probs), STRATEGIES.index(strategy), jnp.float32(threshold),
      jnp.asarray(weights))


@jax.jit
def combine_by_index(probs: jax.Array, strategy_id: jax.Array, threshold: jax.Array,
                     weights: jax.Array) -> tuple[jax.Array, jax.Array]:
  """`combine` without input checks, traceable in every argument.

  Args:
    probs: (models, bars, 3) probabilities.
    strategy_id: int scalar, an index into `STRATEGIES` (out-of-range values are clamped).
    threshold: float scalar.
    weights: (models,) non-negative with a positive sum; pass ones for equal weights.

  Returns:
    actions: (bars,) int32 and confidence: (bars,) in the dtype of `probs`.
  """
  weights = jnp.asarray(weights, dtype=probs.dtype)
  mean_probs = jnp.einsum('m,mnk->nk', weights, probs) / jnp.sum(weights)
  votes = _argmax_hold_on_ties(probs)
  actions = lax.switch(
      strategy_id, (_voting, _confidence_weighted, _unanimous), votes, mean_probs, weights)
  confidence = jnp.take_along_axis(mean_probs, actions[:, None], axis=-1)[:, 0]
  demote = (actions != HOLD) & (confidence < threshold)
  return (jnp.where(demote, HOLD, actions).astype(jnp.int32),
          jnp.where(demote, mean_probs[:, HOLD], confidence))


def _argmax_hold_on_ties(probs: jax.Array, tolerance: Any = 0.0) -> jax.Array:
  """probs: (..., 3) -> (...,) int32 argmax, HOLD where another entry is within `tolerance`
  of the maximum."""
  is_top = probs >= jnp.max(probs, axis=-1, keepdims=True) - tolerance
  unique = jnp.sum(is_top, axis=-1) == 1
  return jnp.where(unique, jnp.argmax(probs, axis=-1), HOLD).astype(jnp.int32)


def _voting(votes: jax.Array, mean_probs: jax.Array, weights: jax.Array) -> jax.Array:
  """votes: (models, bars) -> (bars,): the action with more than half the vote weight."""
  del mean_probs  # same signature for every branch of lax.switch
  tally = jnp.einsum('m,mnk->nk', weights, jax.nn.one_hot(votes, _NUM_ACTIONS, dtype=weights.dtype))
  # Comparing 2 * tally with the total keeps integer vote counts exact in floating point.
  majority = 2 * tally > jnp.sum(weights)
  return jnp.where(majority[:, SELL], SELL, jnp.where(majority[:, BUY], BUY, HOLD))


def _confidence_weighted(votes: jax.Array, mean_probs: jax.Array, weights: jax.Array
                         ) -> jax.Array:
  """The argmax of the weighted mean probability vector, (bars, 3) -> (bars,)."""
  del votes, weights  # same signature for every branch of lax.switch
  return _argmax_hold_on_ties(mean_probs, _TIE_ULPS * jnp.finfo(mean_probs.dtype).eps)


def _unanimous(votes: jax.Array, mean_probs: jax.Array, weights: jax.Array) -> jax.Array:
  """votes: (models, bars) -> (bars,): BUY / SELL only if every model of positive weight agrees."""
  del mean_probs  # same signature for every branch of lax.switch
  absent = (weights <= 0)[:, None]
  all_sell = jnp.all((votes == SELL) | absent, axis=0)
  all_buy = jnp.all((votes == BUY) | absent, axis=0)
  return jnp.where(all_sell, SELL, jnp.where(all_buy, BUY, HOLD))


def _check_probs(probs: Any) -> np.ndarray:
  """Returns probs as float32 (models, bars, 3) after checking they are probability vectors."""
  array = np.asarray(probs, dtype=np.float64)
  if array.ndim != 3 or array.shape[-1] != _NUM_ACTIONS or array.shape[0] < 1:
    hint = '; a single model needs a models axis: probs[None]' if array.ndim == 2 else ''
    raise ValueError(f'probs must have shape (models >= 1, bars, 3), got {array.shape}{hint}')
  bad = np.argwhere(~np.isfinite(array))
  if bad.size:
    raise ValueError(f'probs contain NaN or inf, first at index {tuple(bad[0].tolist())}')
  bad = np.argwhere(array < 0)
  if bad.size:
    index = tuple(bad[0].tolist())
    raise ValueError(f'probs must be non-negative, got {array[index]} at index {index}')
  sums = array.sum(axis=-1)
  bad = np.argwhere(np.abs(sums - 1) > _SUM_TOLERANCE)
  if bad.size:
    model, bar = bad[0].tolist()
    raise ValueError(
        f'probs[{model}, {bar}] sums to {sums[model, bar]:.6g}, not 1 (tolerance '
        f'{_SUM_TOLERANCE}); pass softmax probabilities, not logits')
  return array.astype(np.float32)


def _check_weights(weights: Any, num_models: int) -> np.ndarray:
  """Returns (models,) float32 weights; None means equal weights."""
  if weights is None:
    return np.ones(num_models, dtype=np.float32)
  array = np.asarray(weights, dtype=np.float64)
  if array.shape != (num_models,):
    raise ValueError(
        f'weights must have one entry per model ({num_models}), got shape {array.shape}')
  if not np.all(np.isfinite(array)) or np.any(array < 0) or array.sum() <= 0:
    raise ValueError(
        f'weights must be finite, non-negative and not all zero, got {array.tolist()}')
  return array.astype(np.float32)
