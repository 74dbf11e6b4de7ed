"""Logit correction and probability calibration of FLAG-TRADER outputs.

Everything works on full logit / probability vectors `(..., 3)` (actions 0 = SELL, 1 = HOLD,
2 = BUY), never on argmax labels. A `Calibration` maps raw logits to probabilities as

  probs = softmax((logits + bias) / temperature)

The bias moves decisions (SPEC section 5). The temperature divides the corrected logits, so it
never changes the argmax: it only rescales confidences.

Fitting runs eagerly on concrete arrays of the validation split (inputs are validated and a
`ValueError` names the problem); the optimisation itself is jitted. Every function takes an
optional `mask` of the bars to use; bars outside it are ignored and may hold NaN logits (as
unavailable predictions do) or any label. Three fits:

* `fit_logloss_bias`: the bias minimising masked log-loss. At its optimum the mean softmax
  probability of every action equals that action's label rate, so it matches *soft* rates.
* `fit_rate_bias`: the bias whose *argmax* predictions occur at given target rates. Argmax
  rates `r(b)` are the gradient of the convex function `F(b) = mean_i max_k (l_ik + b_k) - t.b`,
  so its minimiser has `r(b) = t`. `F` is not smooth; we minimise the smoothed
  `F_s(b) = mean_i s * logsumexp((l_i + b) / s) - t.b` (gradient: mean softmax at temperature
  `s`, minus `t`) and anneal `s` from 1 down to `min_smoothing`, warm-starting each stage. At
  `s = 1` this is the log-loss objective with label rates `t`; as `s -> 0` it becomes the
  argmax problem (the dual of semi-discrete optimal transport).
* `fit_temperature`: temperature scaling (Guo et al., 2017), minimising masked log-loss over
  one scalar.

All three objectives are convex in the fitted quantity (the bias, or `1 / temperature`) and
have one to three unknowns, so a damped Newton method with exact Hessians converges in a few
steps. Biases are defined up to a constant added to all three entries; fitted ones are
returned with zero mean.
"""

import dataclasses
import functools
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from himari_jax import constants

SEED_BIAS = constants.SEED_LOGIT_BIAS  # the original HIMARI hand-tuned logit correction
MODES = ('none', 'fixed', 'fit_rates', 'fit_logloss')  # how `fit_calibration` sets the bias

_NUM_ACTIONS = constants.NUM_ACTIONS
_NEWTON_STEPS = 20
_NUM_STEP_SIZES = 24  # line search tries step sizes 1, 1/2, ..., 2**-23 in parallel
_MAX_STEP = 10.0  # no Newton step moves a logit-scale unknown further than this
_RIDGE = 1e-6  # the bias Hessian is singular along (1, 1, 1); the ridge fixes that direction
_TEMPERATURE_RANGE = (1e-2, 1e2)  # binds only for separable or uninformative logits


def apply_logit_bias(logits: jax.Array, bias: Sequence[float] | jax.Array) -> jax.Array:
  """Adds a per-action bias to logits before the softmax (SPEC section 5).

  Args:
    logits: (..., 3) raw model outputs.
    bias: (3,) added to every logit vector, e.g. `SEED_BIAS`.

  Returns:
    (..., 3) corrected logits.
  """
  logits = jnp.asarray(logits)
  bias = jnp.asarray(bias, dtype=logits.dtype)
  if logits.shape[-1:] != (_NUM_ACTIONS,) or bias.shape != (_NUM_ACTIONS,):
    raise ValueError(
        f'logits must be (..., 3) and bias (3,), got {logits.shape} and {bias.shape}')
  return logits + bias


@dataclasses.dataclass(frozen=True)
class Calibration:
  """A fitted or fixed map from logits to calibrated probabilities.

  Attributes:
    bias: (3,) added to the logits; moves decisions.
    temperature: positive divisor of the corrected logits; only changes confidences.
  """

  bias: tuple[float, float, float] = (0.0, 0.0, 0.0)
  temperature: float = 1.0

  def __post_init__(self):
    bias = tuple(float(b) for b in np.asarray(self.bias, dtype=np.float64).reshape(-1))
    if len(bias) != _NUM_ACTIONS or not np.all(np.isfinite(bias)):
      raise ValueError(f'Calibration.bias must be 3 finite numbers, got {self.bias!r}')
    temperature = float(self.temperature)
    if not (np.isfinite(temperature) and temperature > 0):
      raise ValueError(f'Calibration.temperature must be positive, got {self.temperature!r}')
    # Plain floats keep the object hashable and `to_dict` JSON-serialisable.
    object.__setattr__(self, 'bias', bias)
    object.__setattr__(self, 'temperature', temperature)

  def apply(self, logits: jax.Array) -> jax.Array:
    """Returns probs: (..., 3) = softmax((logits + bias) / temperature) of logits: (..., 3)."""
    return jax.nn.softmax(apply_logit_bias(logits, self.bias) / self.temperature, axis=-1)

  def to_dict(self) -> dict[str, Any]:
    return {'bias': list(self.bias), 'temperature': self.temperature}

  @classmethod
  def from_dict(cls, data: dict[str, Any]) -> 'Calibration':
    unexpected = set(data) - {'bias', 'temperature'}
    if unexpected:
      raise ValueError(f'unknown Calibration fields {sorted(unexpected)}')
    return cls(**data)


def action_rates(actions: Any, mask: Any = None) -> np.ndarray:
  """Share of each action among the masked entries.

  Args:
    actions: (...,) ints in {0, 1, 2} (labels or argmax predictions); values where `mask` is
      False are ignored.
    mask: (...,) bool, or None for all entries.

  Returns:
    (3,) float64 rates summing to 1.
  """
  actions = np.asarray(actions)
  mask = _check_mask(mask, actions.shape)
  _check_labels(actions, mask, actions.shape, name='actions')
  return np.bincount(actions[mask].astype(np.int64), minlength=_NUM_ACTIONS) / mask.sum()


def fit_rate_bias(
    logits: Any,
    target_rates: Sequence[float],
    mask: Any = None,
    *,
    min_smoothing: float = 0.01,
    num_stages: int = 8,
    newton_steps: int = 10,
) -> np.ndarray:
  """Fits the bias whose argmax predictions occur at `target_rates` (see module docstring).

  Args:
    logits: (..., 3) validation logits.
    target_rates: (3,) positive rates summing to 1, e.g. `action_rates(labels, mask)`.
    mask: (...,) bool selecting the bars to match, or None for all.
    min_smoothing: last softmax temperature of the annealing, in logit units; the argmax
      rates match the target up to roughly the share of bars whose two largest corrected
      logits lie within this distance.
    num_stages: annealing stages, geometrically spaced from 1 to `min_smoothing`.
    newton_steps: Newton steps per stage.

  Returns:
    bias: (3,) float32 with zero mean.
  """
  logits, mask = _check_vectors(logits, mask)
  target = np.asarray(target_rates, dtype=np.float64)
  if target.shape != (_NUM_ACTIONS,) or not np.all(target > 0) or abs(target.sum() - 1) > 1e-6:
    raise ValueError(f'target_rates must be 3 positive rates summing to 1, got {target_rates!r}')
  if not 0 < min_smoothing <= 1 or num_stages < 2 or newton_steps < 1:
    raise ValueError(
        'need 0 < min_smoothing <= 1, num_stages >= 2 and newton_steps >= 1, got '
        f'{min_smoothing}, {num_stages}, {newton_steps}')
  flat_logits, flat_weights = _flatten(logits, mask)
  bias = _fit_rate_bias(
      flat_logits, flat_weights, jnp.asarray(target, jnp.float32),
      jnp.float32(min_smoothing), num_stages, newton_steps)
  return np.asarray(bias)


def fit_logloss_bias(logits: Any, labels: Any, mask: Any = None) -> np.ndarray:
  """Fits the bias minimising the masked log-loss of softmax(logits + bias).

  Args:
    logits: (..., 3) validation logits.
    labels: (...,) ints in {0, 1, 2}; ignored where `mask` is False.
    mask: (...,) bool, or None for all entries. Every action must occur among the masked
      labels, otherwise the optimal bias is infinite.

  Returns:
    bias: (3,) float32 with zero mean.
  """
  logits, mask = _check_vectors(logits, mask)
  labels = _check_labels(labels, mask, logits.shape[:-1])
  counts = np.bincount(labels[mask], minlength=_NUM_ACTIONS)
  if np.any(counts == 0):
    raise ValueError(
        f'every action must occur in the masked labels to fit a log-loss bias, got counts '
        f'{counts.tolist()} for (SELL, HOLD, BUY)')
  flat_logits, flat_weights = _flatten(logits, mask)
  flat_labels = _flatten_labels(labels, mask)
  return np.asarray(_fit_logloss_bias(flat_logits, flat_labels, flat_weights))


def fit_temperature(logits: Any, labels: Any, mask: Any = None) -> float:
  """Fits the temperature T minimising the masked log-loss of softmax(logits / T).

  Args:
    logits: (..., 3) validation logits, already bias-corrected if a bias will be applied.
    labels: (...,) ints in {0, 1, 2}; ignored where `mask` is False.
    mask: (...,) bool, or None for all entries.

  Returns:
    The temperature, clipped to [0.01, 100] (the bounds bind only for degenerate logits).
  """
  logits, mask = _check_vectors(logits, mask)
  labels = _check_labels(labels, mask, logits.shape[:-1])
  flat_logits, flat_weights = _flatten(logits, mask)
  flat_labels = _flatten_labels(labels, mask)
  # Log-loss is convex in the inverse temperature (the logits enter linearly), not in T.
  inverse = float(_fit_inverse_temperature(flat_logits, flat_labels, flat_weights))
  low, high = _TEMPERATURE_RANGE
  return float(np.clip(1.0 / max(inverse, 1.0 / high), low, high))


def expected_calibration_error(probs: Any, labels: Any, mask: Any = None, num_bins: int = 15
                               ) -> float:
  """Top-label expected calibration error with equal-width confidence bins.

  ECE = sum over bins of (share of bars in the bin) * |accuracy - mean confidence|, where a
  bar's confidence is its largest probability and it is correct when that argmax equals its
  label.

  Args:
    probs: (..., 3) probabilities summing to 1.
    labels: (...,) ints in {0, 1, 2}; ignored where `mask` is False.
    mask: (...,) bool, or None for all entries.
    num_bins: bins splitting [0, 1].

  Returns:
    ECE in [0, 1].
  """
  probs, mask = _check_vectors(probs, mask, name='probs')
  sums = probs.sum(axis=-1)
  if np.any(probs < 0) or np.any(mask & (np.abs(sums - 1) > 1e-3)):
    raise ValueError('probs must be non-negative and sum to 1 over the last axis (within 1e-3)')
  if num_bins < 1:
    raise ValueError(f'num_bins must be positive, got {num_bins}')
  labels = _check_labels(labels, mask, probs.shape[:-1])
  flat_probs, flat_weights = _flatten(probs, mask)
  flat_labels = _flatten_labels(labels, mask)
  return float(_expected_calibration_error(flat_probs, flat_labels, flat_weights, num_bins))


def fit_calibration(
    logits: Any,
    labels: Any,
    mask: Any = None,
    *,
    mode: str,
    bias: Sequence[float] = SEED_BIAS,
    temperature: bool = False,
) -> Calibration:
  """Builds the `Calibration` a config asks for, fitting on validation data where needed.

  Args:
    logits: (..., 3) validation logits.
    labels: (...,) validation labels; ignored where `mask` is False.
    mask: (...,) bool, or None for all entries.
    mode: 'none' (no bias), 'fixed' (`bias`), 'fit_rates' (argmax rates match the masked
      label rates) or 'fit_logloss' (minimal log-loss).
    bias: (3,) the bias used by mode 'fixed'.
    temperature: also fit a temperature, on the bias-corrected logits.

  Returns:
    The calibration to apply to logits of any split.
  """
  if mode not in MODES:
    raise ValueError(f'unknown calibration mode {mode!r}; expected one of {MODES}')
  if mode == 'none':
    fitted_bias = np.zeros(_NUM_ACTIONS)
  elif mode == 'fixed':
    fitted_bias = np.asarray(bias, dtype=np.float64)
  elif mode == 'fit_rates':
    fitted_bias = fit_rate_bias(logits, action_rates(labels, mask), mask)
  else:
    fitted_bias = fit_logloss_bias(logits, labels, mask)
  calibration = Calibration(bias=tuple(fitted_bias))
  if temperature:
    corrected = np.asarray(logits, dtype=np.float32) + np.float32(calibration.bias)
    calibration = dataclasses.replace(
        calibration, temperature=fit_temperature(corrected, labels, mask))
  return calibration


def _newton_minimize(objective: Callable[[jax.Array], jax.Array], x0: jax.Array,
                     num_steps: int) -> jax.Array:
  """Damped Newton for a smooth convex function of a few variables.

  Each step evaluates all step sizes 1, 1/2, ... at once and takes the largest that does not
  increase the objective (backtracking), or stays put when none qualifies. Near the minimum
  float32 values no longer resolve the decrease, and picking the lowest value there would pick
  rounding noise (a shorter step) over the exact Newton step.
  """
  step_sizes = 0.5 ** jnp.arange(_NUM_STEP_SIZES, dtype=x0.dtype)

  def step(_, x):
    gradient = jax.grad(objective)(x)
    hessian = jax.hessian(objective)(x)
    direction = -jnp.linalg.solve(hessian + _RIDGE * jnp.eye(x.size, dtype=x.dtype), gradient)
    norm = jnp.linalg.norm(direction)
    direction = direction * jnp.minimum(1.0, _MAX_STEP / jnp.maximum(norm, 1e-30))
    candidates = x + step_sizes[:, None] * direction
    acceptable = jax.vmap(objective)(candidates) <= objective(x)
    largest = jnp.argmax(acceptable)  # step sizes are in decreasing order
    return jnp.where(acceptable[largest], candidates[largest], x)

  return lax.fori_loop(0, num_steps, step, x0)


def _masked_mean(values: jax.Array, weights: jax.Array) -> jax.Array:
  return jnp.sum(values * weights) / jnp.sum(weights)


def _cross_entropy(logits: jax.Array, labels: jax.Array, weights: jax.Array) -> jax.Array:
  """Masked mean log-loss of logits: (n, 3) against labels: (n,)."""
  log_probs = jax.nn.log_softmax(logits, axis=-1)
  picked = jnp.take_along_axis(log_probs, labels[:, None], axis=-1)[:, 0]
  return -_masked_mean(picked, weights)


def _smoothed_rate_objective(bias, logits, weights, target, smoothing):
  """F_s(bias) of the module docstring; its gradient is mean softmax((l + b) / s) - target."""
  smoothed_max = smoothing * jax.nn.logsumexp((logits + bias) / smoothing, axis=-1)
  return _masked_mean(smoothed_max, weights) - jnp.dot(target, bias)


@functools.partial(jax.jit, static_argnames=('num_stages', 'newton_steps'))
def _fit_rate_bias(logits, weights, target, min_smoothing, num_stages, newton_steps):
  smoothings = min_smoothing ** jnp.linspace(0.0, 1.0, num_stages)

  def stage(bias, smoothing):
    objective = functools.partial(
        _smoothed_rate_objective, logits=logits, weights=weights, target=target,
        smoothing=smoothing)
    return _newton_minimize(objective, bias, newton_steps), None

  bias, _ = lax.scan(stage, jnp.zeros(_NUM_ACTIONS, logits.dtype), smoothings)
  return bias - jnp.mean(bias)


@jax.jit
def _fit_logloss_bias(logits, labels, weights):
  objective = lambda bias: _cross_entropy(logits + bias, labels, weights)
  bias = _newton_minimize(objective, jnp.zeros(_NUM_ACTIONS, logits.dtype), _NEWTON_STEPS)
  return bias - jnp.mean(bias)


@jax.jit
def _fit_inverse_temperature(logits, labels, weights):
  objective = lambda inverse: _cross_entropy(logits * inverse[0], labels, weights)
  return _newton_minimize(objective, jnp.ones(1, logits.dtype), _NEWTON_STEPS)[0]


@functools.partial(jax.jit, static_argnames='num_bins')
def _expected_calibration_error(probs, labels, weights, num_bins):
  confidence = jnp.max(probs, axis=-1)
  correct = (jnp.argmax(probs, axis=-1) == labels).astype(probs.dtype)
  bins = jnp.clip(jnp.floor(confidence * num_bins).astype(jnp.int32), 0, num_bins - 1)
  in_bin = jax.nn.one_hot(bins, num_bins, dtype=probs.dtype) * weights[:, None]  # (n, bins)
  # sum_b n_b |acc_b - conf_b| = sum_b |sum correct - sum confidence| over the bin's bars.
  gaps = jnp.abs(correct @ in_bin - confidence @ in_bin)
  return jnp.sum(gaps) / jnp.sum(weights)


def _check_vectors(values: Any, mask: Any, name: str = 'logits'
                   ) -> tuple[np.ndarray, np.ndarray]:
  """Checks (..., 3) values and their mask; returns float32 values and a bool mask.

  Only masked-in rows must be finite (unavailable bars may hold NaN); the others are zeroed so
  they cannot leak NaN into weighted sums.
  """
  array = np.asarray(values, dtype=np.float32)
  if array.ndim < 1 or array.shape[-1] != _NUM_ACTIONS:
    raise ValueError(f'{name} must have shape (..., 3), got {array.shape}')
  mask = _check_mask(mask, array.shape[:-1])
  bad = np.argwhere(mask[..., None] & ~np.isfinite(array))
  if bad.size:
    raise ValueError(f'{name} contain NaN or inf, first at index {tuple(bad[0].tolist())}')
  return np.where(mask[..., None], array, 0.0).astype(np.float32), mask


def _check_mask(mask: Any, shape: tuple[int, ...]) -> np.ndarray:
  """Returns a bool mask of `shape`; None selects everything."""
  if mask is None:
    mask = np.ones(shape, dtype=bool)
  mask = np.asarray(mask)
  if mask.shape != shape or mask.dtype != bool:
    raise ValueError(f'mask must be a bool array of shape {shape}, got {mask.dtype} {mask.shape}')
  if not mask.any():
    raise ValueError('mask selects no bars')
  return mask


def _check_labels(labels: Any, mask: np.ndarray, shape: tuple[int, ...], name: str = 'labels'
                  ) -> np.ndarray:
  labels = np.asarray(labels)
  if labels.shape != shape or not np.issubdtype(labels.dtype, np.integer):
    raise ValueError(f'{name} must be integers of shape {shape}, got {labels.dtype} {labels.shape}')
  bad = np.argwhere(mask & ((labels < 0) | (labels >= _NUM_ACTIONS)))
  if bad.size:
    index = tuple(bad[0].tolist())
    raise ValueError(
        f'{name} must be 0 (SELL), 1 (HOLD) or 2 (BUY), got {labels[index]} at {index}')
  return labels.astype(np.int32)


def _flatten(values: np.ndarray, mask: np.ndarray) -> tuple[jax.Array, jax.Array]:
  """(..., 3) values and (...,) mask -> (n, 3) float32 and (n,) float32 weights."""
  return (jnp.asarray(values.reshape(-1, _NUM_ACTIONS)),
          jnp.asarray(mask.reshape(-1), dtype=jnp.float32))


def _flatten_labels(labels: np.ndarray, mask: np.ndarray) -> jax.Array:
  """(n,) int32 labels; masked-out entries become 0 so they index safely (their weight is 0)."""
  return jnp.asarray(np.where(mask, labels, 0).reshape(-1))
