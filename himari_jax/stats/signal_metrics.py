"""Signal quality of a model's probabilities on bars with a known label (SPEC section 9).

Probabilities are `probs: (N, 3)` over actions 0 = SELL, 1 = HOLD, 2 = BUY; `labels: (N,)` the
true actions; `mask: (N,)` the bars to score (a known label and an available prediction). The
scores:

* log loss `-mean log p[y]` and Brier score `mean sum_k (p_k - 1[y = k])^2`, and their skill
  `1 - loss / loss_prior` against the label prior (the training split's class frequencies
  predicted on every bar): 0 is no better than the prior, 1 is perfect, negative is worse.
* balanced accuracy (mean recall over the classes that occur in `labels`) and macro F1 (mean F1
  over the classes that occur in `labels` or in the predicted actions), as scikit-learn
  defines them; a class that never occurs in either takes no part.
* IC and rank IC: the Pearson and Spearman correlation of the signal `s_t = p_buy - p_sell`
  with the forward h-bar return `close_{t+h} / close_t - 1`.

Rule for undefined correlations: when the signal or the return is constant on the scored bars
(a label prior or buy-and-hold signal), or fewer than 3 bars are scored, IC and rank IC are
NaN, not 0: "no variation" is not "no skill". `aggregate_folds` skips NaN folds and reports
how many folds it used.

Across walk-forward folds every metric gets its mean, standard deviation (ddof 1), t-statistic
`mean / (std / sqrt(n))` and, for IC and rank IC, ICIR `mean / std`; each of those is NaN when
fewer than 2 folds are defined or the standard deviation is 0.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from himari_jax.constants import BUY, SELL
from himari_jax.constants import NUM_ACTIONS as _NUM_ACTIONS

PROB_EPS = 1e-12  # log loss clips probabilities at this so one confident miss stays finite
METRICS = ('log_loss', 'log_loss_prior', 'log_loss_skill', 'brier', 'brier_prior',
           'brier_skill', 'balanced_accuracy', 'macro_f1', 'ic', 'rank_ic')
_IC_METRICS = ('ic', 'rank_ic')
_MIN_CORRELATION_BARS = 3


def label_prior(labels: Any, mask: Any = None) -> np.ndarray:
  """Class frequencies `(3,)` of `labels[mask]` (the training split's, for the skill scores)."""
  labels, mask = _check_labels(labels, mask)
  counts = np.bincount(labels[mask], minlength=_NUM_ACTIONS)[:_NUM_ACTIONS]
  if not counts.sum():
    raise ValueError('label_prior got no labelled bars (mask selects nothing)')
  return (counts / counts.sum()).astype(np.float64)


def forward_returns(close: Any, horizon: int) -> np.ndarray:
  """`close_{t+h} / close_t - 1` for every bar: (N,) -> (N,) float64, NaN for the last h bars."""
  close = np.asarray(close, np.float64)
  if close.ndim != 1:
    raise ValueError(f'close must be 1-D (N,), got shape {close.shape}')
  if horizon < 1:
    raise ValueError(f'horizon must be >= 1, got {horizon}')
  out = np.full(close.shape, np.nan)
  out[:-horizon] = close[horizon:] / close[:-horizon] - 1.0
  return out


def log_loss(probs: Any, labels: Any, mask: Any = None) -> float:
  """Mean `-log p[y]` over `mask`; probabilities are clipped at `PROB_EPS`."""
  probs, labels, mask = _check_inputs(probs, labels, mask)
  return _log_loss(probs[mask], labels[mask])


def brier_score(probs: Any, labels: Any, mask: Any = None) -> float:
  """Mean over `mask` of `sum_k (p_k - 1[y = k])^2` (0 perfect, 2 worst)."""
  probs, labels, mask = _check_inputs(probs, labels, mask)
  return _brier(probs[mask], labels[mask])


def skill(loss: float, loss_prior: float) -> float:
  """`1 - loss / loss_prior`; NaN when the prior's loss is 0 (nothing to improve on)."""
  return 1.0 - loss / loss_prior if loss_prior > 0 else math.nan


def balanced_accuracy(actions: Any, labels: Any, mask: Any = None) -> float:
  """Mean recall over the classes that occur in `labels[mask]`."""
  actions, labels, mask = _check_actions(actions, labels, mask)
  y, a = labels[mask], actions[mask]
  recalls = [np.mean(a[y == k] == k) for k in range(_NUM_ACTIONS) if np.any(y == k)]
  return float(np.mean(recalls))


def macro_f1(actions: Any, labels: Any, mask: Any = None) -> float:
  """Mean F1 over the classes that occur in `labels[mask]` or `actions[mask]`.

  A class that is predicted but never true (or true but never predicted) scores F1 = 0.
  """
  actions, labels, mask = _check_actions(actions, labels, mask)
  y, a = labels[mask], actions[mask]
  scores = []
  for k in range(_NUM_ACTIONS):
    true_k, pred_k = y == k, a == k
    if not (true_k.any() or pred_k.any()):
      continue
    hits = np.sum(true_k & pred_k)
    scores.append(2.0 * hits / (true_k.sum() + pred_k.sum()))
  return float(np.mean(scores))


def signal(probs: Any) -> np.ndarray:
  """The directional signal `s_t = p_buy - p_sell`: (N, 3) -> (N,)."""
  probs = np.asarray(probs, np.float64)
  return probs[..., BUY] - probs[..., SELL]


def information_coefficient(signal_values: Any, returns: Any, mask: Any = None) -> float:
  """Pearson correlation of `signal_values` and `returns` over `mask` (NaN if undefined)."""
  x, y = _check_pair(signal_values, returns, mask)
  return _pearson(x, y)


def rank_information_coefficient(signal_values: Any, returns: Any, mask: Any = None) -> float:
  """Spearman correlation (Pearson of average-tie ranks) over `mask` (NaN if undefined)."""
  x, y = _check_pair(signal_values, returns, mask)
  return _pearson(_average_ranks(x), _average_ranks(y))


def ic_contributions(signal_values: Any, returns: Any, mask: Any = None) -> dict[str, np.ndarray]:
  """Per-bar terms whose mean over `mask` is the IC (and rank IC): `z_s,t * z_r,t`, the
  products of the signal and the return standardised over the masked bars (population std).

  Concatenated over folds (each standardised in its own fold), their mean is the bar-weighted
  pooled IC and a Newey-West error of that mean (`cross_section.newey_west_mean`) is the
  per-bar IC inference of SPEC 11.

  Args:
    signal_values: (N,) signal; returns: (N,) forward returns, finite on `mask`; mask: (N,).

  Returns:
    {'ic': (N,), 'rank_ic': (N,)} float64, NaN outside `mask` and everywhere when the
    correlation is undefined (constant side or fewer than 3 bars).
  """
  x, y = _check_pair(signal_values, returns, mask)
  n = len(np.asarray(signal_values))
  mask = _check_mask(mask, n)
  out = {}
  for name, (a, b) in {'ic': (x, y), 'rank_ic': (_average_ranks(x), _average_ranks(y))}.items():
    terms = np.full(n, np.nan)
    if math.isfinite(_pearson(a, b)):
      terms[mask] = (a - a.mean()) / a.std() * (b - b.mean()) / b.std()
    out[name] = terms
  return out


def signal_metrics(probs: Any, labels: Any, mask: Any, returns: Any, prior: Any, *,
                   actions: Any = None) -> dict[str, float]:
  """Every SPEC 9 signal metric of one fold.

  Args:
    probs: (N, 3) probabilities; rows outside `mask` may be NaN (unavailable).
    labels: (N,) int actions; ignored outside `mask`.
    mask: (N,) bool, the bars to score: a known label and an available prediction.
    returns: (N,) forward h-bar returns (`forward_returns`); must be finite on `mask`.
    prior: (3,) the training split's label frequencies (`label_prior`).
    actions: (N,) int decided actions for balanced accuracy and macro F1; None uses the argmax
      of `probs` (a calibrated, thresholded policy passes its own).

  Returns:
    {'n': bars scored, and every name in `METRICS`: float}.
  """
  probs, labels, mask = _check_inputs(probs, labels, mask)
  prior = np.asarray(prior, np.float64)
  if prior.shape != (_NUM_ACTIONS,) or np.any(prior < 0) or abs(prior.sum() - 1) > 1e-6:
    raise ValueError(f'prior must be 3 non-negative frequencies summing to 1, got {prior}')
  actions = np.argmax(probs, axis=-1) if actions is None else actions
  actions, _, _ = _check_actions(actions, labels, mask)
  s, r = _check_pair(signal(np.where(mask[:, None], probs, 0.0)), returns, mask)
  y = labels[mask]
  prior_probs = np.broadcast_to(prior, (len(y), _NUM_ACTIONS))
  out = {'n': int(mask.sum()),
         'log_loss': _log_loss(probs[mask], y), 'log_loss_prior': _log_loss(prior_probs, y),
         'brier': _brier(probs[mask], y), 'brier_prior': _brier(prior_probs, y),
         'balanced_accuracy': balanced_accuracy(actions, labels, mask),
         'macro_f1': macro_f1(actions, labels, mask),
         'ic': _pearson(s, r), 'rank_ic': _pearson(_average_ranks(s), _average_ranks(r))}
  out['log_loss_skill'] = skill(out['log_loss'], out['log_loss_prior'])
  out['brier_skill'] = skill(out['brier'], out['brier_prior'])
  return {'n': out['n'], **{name: float(out[name]) for name in METRICS}}


def aggregate_folds(folds: Sequence[Mapping[str, float]],
                    metrics: Sequence[str] = METRICS) -> dict[str, dict[str, float]]:
  """Mean, std, t-statistic (and ICIR for IC / rank IC) of each metric across folds.

  Args:
    folds: one `signal_metrics` result per walk-forward fold.
    metrics: the names to aggregate.

  Returns:
    {metric: {'mean', 'std', 't_stat', 'n_folds'} plus 'icir' for IC and rank IC}. NaN folds
    (an undefined IC) are skipped; `n_folds` counts the ones used.
  """
  out = {}
  for name in metrics:
    values = np.asarray([fold[name] for fold in folds], np.float64)
    values = values[~np.isnan(values)]
    n = len(values)
    mean = float(values.mean()) if n else math.nan
    std = float(values.std(ddof=1)) if n >= 2 else math.nan
    spread = std if std > 0 else math.nan
    t_stat = mean / (spread / math.sqrt(n)) if n else math.nan  # no defined fold: no t
    entry = {'mean': mean, 'std': std, 't_stat': t_stat, 'n_folds': n}
    if name in _IC_METRICS:
      entry['icir'] = mean / spread
    out[name] = entry
  return out


def _log_loss(probs: np.ndarray, labels: np.ndarray) -> float:
  picked = np.take_along_axis(probs, labels[:, None], axis=-1)[:, 0]
  return float(-np.mean(np.log(np.clip(picked, PROB_EPS, 1.0))))


def _brier(probs: np.ndarray, labels: np.ndarray) -> float:
  onehot = np.eye(_NUM_ACTIONS)[labels]
  return float(np.mean(np.sum((probs - onehot) ** 2, axis=-1)))


def _pearson(x: np.ndarray, y: np.ndarray) -> float:
  if len(x) < _MIN_CORRELATION_BARS or np.ptp(x) == 0 or np.ptp(y) == 0:
    return math.nan
  dx, dy = x - x.mean(), y - y.mean()
  return float(np.clip(np.sum(dx * dy) / math.sqrt(np.sum(dx * dx) * np.sum(dy * dy)),
                       -1.0, 1.0))


def _average_ranks(x: np.ndarray) -> np.ndarray:
  """1-based ranks, ties sharing the mean of the ranks they span."""
  _, inverse, counts = np.unique(x, return_inverse=True, return_counts=True)
  ends = np.cumsum(counts)
  return ((ends - counts + 1 + ends) / 2.0)[inverse]


def _check_mask(mask: Any, n: int) -> np.ndarray:
  if mask is None:
    return np.ones(n, bool)
  mask = np.asarray(mask)
  if mask.shape != (n,) or mask.dtype != bool:
    raise ValueError(f'mask must be bool of shape ({n},), got {mask.dtype} {mask.shape}')
  if not mask.any():
    raise ValueError('mask selects no bars; nothing to score')
  return mask


def _check_labels(labels: Any, mask: Any) -> tuple[np.ndarray, np.ndarray]:
  labels = np.asarray(labels)
  if labels.ndim != 1 or not np.issubdtype(labels.dtype, np.integer):
    raise ValueError(f'labels must be 1-D integers (N,), got {labels.dtype} {labels.shape}')
  mask = _check_mask(mask, len(labels))
  bad = np.flatnonzero(mask & ((labels < 0) | (labels >= _NUM_ACTIONS)))
  if bad.size:
    raise ValueError(f'labels must be 0, 1 or 2; bar {bad[0]} has {labels[bad[0]]}')
  return labels.astype(np.int64), mask


def _check_inputs(probs: Any, labels: Any, mask: Any
                  ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  labels, mask = _check_labels(labels, mask)
  probs = np.asarray(probs, np.float64)
  if probs.shape != (len(labels), _NUM_ACTIONS):
    raise ValueError(f'probs must have shape ({len(labels)}, 3), got {probs.shape}')
  rows = probs[mask]
  bad = np.flatnonzero(~np.all(np.isfinite(rows) & (rows >= 0), axis=-1)
                       | (np.abs(rows.sum(axis=-1) - 1) > 1e-3))
  if bad.size:
    bar = np.flatnonzero(mask)[bad[0]]
    raise ValueError(f'probs row {bar} is {probs[bar]}: scored rows must be finite, '
                     'non-negative and sum to 1 (leave unavailable bars out of the mask)')
  return probs, labels, mask


def _check_actions(actions: Any, labels: np.ndarray, mask: Any
                   ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  labels, mask = _check_labels(labels, mask)
  actions = np.asarray(actions)
  if actions.shape != labels.shape or not np.issubdtype(actions.dtype, np.integer):
    raise ValueError(f'actions must be integers of shape {labels.shape}, got '
                     f'{actions.dtype} {actions.shape}')
  return actions.astype(np.int64), labels, mask


def _check_pair(x: Any, y: Any, mask: Any) -> tuple[np.ndarray, np.ndarray]:
  x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
  if x.ndim != 1 or x.shape != y.shape:
    raise ValueError(f'signal and returns must be 1-D of one length, got {x.shape} and '
                     f'{y.shape}')
  mask = _check_mask(mask, len(x))
  bad = np.flatnonzero(mask & ~(np.isfinite(x) & np.isfinite(y)))
  if bad.size:
    raise ValueError(f'bar {bad[0]}: signal {x[bad[0]]} / forward return {y[bad[0]]} is not '
                     'finite; leave bars without a known forward return out of the mask')
  return x[mask], y[mask]
