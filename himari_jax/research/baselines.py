"""Baseline models behind one small interface, decided exactly like FLAG-TRADER (SPEC 10).

Every model answers the same four calls:

  model = make_baseline('logistic', l2=1e-3)
  model.fit(features, labels, mask, close=close)  # the training split
  probs = model.predict(features, close=close)  # (N, 3) for any bars
  model.save(directory); model = load_baseline(directory)

`features: (N, 60)` are normalised features (the training split's normaliser), `labels: (N,)`
int actions (0 = SELL, 1 = HOLD, 2 = BUY), `mask: (N,)` bool the training bars with a known
label, `close: (N,)` the close prices of the same bars (only rules on prices use them). The
rows are one asset's consecutive bars: models with a look-back (momentum, a windowed MLP,
FLAG-TRADER) read bars before t, never after it, and give NaN rows where the look-back does
not fit (`available = ~isnan(probs).any(-1)`).

Models (`BASELINES`):

* `label_prior`: the training class frequencies on every bar (argmax: the training majority).
* `buy_and_hold`: BUY with probability `1 - eps` on every bar.
* `momentum`: the sign of the trailing `lookback`-bar return: BUY (up) or SELL (down) with
  probability `confidence`, the rest shared by the other two; uniform when flat or undefined.
* `logistic`: multinomial logistic regression on the last bar's features (JAX + optax, L2).
* `mlp`: a Flax MLP on the last `context_length` bars' features, flattened.
* `mlp_sharpe`: the `mlp` network trained for what is traded: its output is a position
  `tanh(l_buy - l_sell)` in [-1, 1] (`sigmoid`, [0, 1], with `long_only`), trained on the
  negative net-of-cost Sharpe ratio (`objectives.make_loss_fn`) of windows of consecutive
  training bars, so turnover and costs are those of a held position. Needs `close`.
* `lightgbm`: gradient-boosted trees (the optional `baselines` extra).
* `flag_trader`: a finished training run (`train.train_and_evaluate`), read-only. Its `fit`
  trains nothing; the run must have been trained on the same split, and `features` must be
  normalised with its normaliser (`model.normalizer`), which a run trained through the same
  input pipeline on the same fold has. A run trained with a trading objective
  (`config.train.objective` 'sharpe' / 'utility') is a position model like `mlp_sharpe`;
  one trained by 'reinforce' is an action policy, read like a classifier.

Position models (`model.outputs_position`) give, instead of class probabilities,
`policy.probs_from_score(position)`: `(max(-s, 0), 1 - |s|, max(s, 0))`, whose margin
`p_buy - p_sell` is the position `s` itself, so a margin policy trades on the position and IC
is the position's correlation with the forward return. They are not calibrated
(`calibrate_and_decide(mode='skip')`): rescaling their "probabilities" to label rates would
change the position they were trained to hold.

`logistic`, `mlp` and `lightgbm` weigh classes like training (`class_weights`: 'fixed',
'inverse', 'sqrt', 'none'; see `labels.class_weights`) and are deterministic given `seed`.
A saved model is a directory holding `baseline.json` (name, config, fitted state) and, for
array parameters, `arrays.npz`; nothing is pickled.

`calibrate_and_decide` turns validation and test probabilities into actions by the steps
FLAG-TRADER members take (inference/decisions.py): calibrate on validation (on
log-probabilities; `mode='skip'` for position models), then the seed policy (argmax, BUY /
SELL below `threshold` become HOLD).
"""

from __future__ import annotations

import abc
import functools
import json
import os
from collections.abc import Sequence
from typing import Any, ClassVar

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import traverse_util

from himari_jax import extras, json_types
from himari_jax.backtest import policy as policy_lib
from himari_jax.constants import NUM_ACTIONS as _NUM_ACTIONS
from himari_jax.data import features as features_lib
from himari_jax.data import labels as labels_lib
from himari_jax.inference import calibration as calibration_lib
from himari_jax.inference import decisions as decisions_lib
from himari_jax.model import objectives as objectives_lib

CONFIG_FILE = 'baseline.json'
ARRAYS_FILE = 'arrays.npz'
LOG_PROB_FLOOR = 1e-7  # probabilities become logits as log(max(p, floor)) for calibration

_FORMAT = 1


class BaselineError(ValueError):
  """A bad baseline name, config, input array or saved directory."""


class Baseline(abc.ABC):
  """A model that is fitted on the training split and scores any bars with `(N, 3)` probs.

  Subclasses set `name` and `defaults` (every config field with its default) and implement
  `fit`, `predict`, and, if they learn anything, `_state` / `_restore`.
  """

  name: ClassVar[str]
  defaults: ClassVar[dict[str, Any]]
  # True: `predict` gives `policy.probs_from_score(position)`, not class probabilities.
  outputs_position: bool = False

  def __init__(self, **config: Any):
    unknown = sorted(set(config) - set(self.defaults))
    if unknown:
      raise BaselineError(f'{self.name}: unknown config field(s) {unknown}; valid: '
                          f'{sorted(self.defaults)}')
    self.config = {**self.defaults, **config}
    self.fitted = False

  @abc.abstractmethod
  def fit(self, features: np.ndarray, labels: np.ndarray, mask: np.ndarray, *,
          close: np.ndarray | None = None) -> Baseline:
    """Fits on `features[mask]`, `labels[mask]` ((N, 60), (N,), (N,) bool); returns self."""

  @abc.abstractmethod
  def predict(self, features: np.ndarray, *, close: np.ndarray | None = None) -> np.ndarray:
    """float32 (N, 3) probabilities for every bar; NaN rows where the look-back does not fit."""

  def save(self, directory: str | os.PathLike) -> None:
    """Writes `baseline.json` (and `arrays.npz` for array parameters) into `directory`."""
    self._require_fitted()
    os.makedirs(directory, exist_ok=True)
    state, arrays = self._state()
    with open(os.path.join(directory, CONFIG_FILE), 'w') as f:
      json.dump({'format': _FORMAT, 'name': self.name,
                 'config': json_types.to_json_types(self.config), 'state': state}, f, indent=1)
    if arrays:
      np.savez(os.path.join(directory, ARRAYS_FILE), **arrays)

  def _state(self) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """(JSON-able state, named arrays) that `_restore` turns back into a fitted model."""
    return {}, {}

  def _restore(self, state: dict[str, Any], arrays: dict[str, np.ndarray]) -> None:
    del state, arrays

  def _require_fitted(self) -> None:
    if not self.fitted:
      raise BaselineError(f'{self.name}: call fit() before predict() or save()')


class LabelPrior(Baseline):
  """The training split's class frequencies on every bar."""

  name = 'label_prior'
  defaults: ClassVar[dict[str, Any]] = {}

  def fit(self, features, labels, mask, *, close=None):
    _, labels, mask = _check_fit(self.name, features, labels, mask)
    counts = np.bincount(labels[mask], minlength=_NUM_ACTIONS)
    self.prior = (counts / counts.sum()).astype(np.float32)
    self.fitted = True
    return self

  def predict(self, features, *, close=None):
    self._require_fitted()
    n = len(_check_features(self.name, features))
    return np.tile(self.prior, (n, 1))

  def _state(self):
    return {'prior': self.prior.tolist()}, {}

  def _restore(self, state, arrays):
    self.prior = np.asarray(state['prior'], np.float32)


class BuyAndHold(Baseline):
  """BUY with probability `1 - eps` on every bar (SELL and HOLD share `eps`)."""

  name = 'buy_and_hold'
  defaults: ClassVar[dict[str, Any]] = {'eps': 1e-3}

  def fit(self, features, labels, mask, *, close=None):
    _check_fit(self.name, features, labels, mask)  # nothing to learn; the inputs still must fit
    eps = float(self.config['eps'])
    if not 0.0 < eps < 2.0 / 3.0:
      raise BaselineError(f'{self.name}: eps must be in (0, 2/3) so BUY stays the argmax, '
                          f'got {eps}')
    self.fitted = True
    return self

  def predict(self, features, *, close=None):
    self._require_fitted()
    n = len(_check_features(self.name, features))
    eps = float(self.config['eps'])
    return np.tile(np.array([eps / 2, eps / 2, 1.0 - eps], np.float32), (n, 1))


class Momentum(Baseline):
  """BUY after a rise, SELL after a fall over the trailing `lookback` bars."""

  name = 'momentum'
  defaults: ClassVar[dict[str, Any]] = {'lookback': 24, 'confidence': 0.6}

  def fit(self, features, labels, mask, *, close=None):
    _check_fit(self.name, features, labels, mask)
    _check_close(self.name, close, len(labels))
    if int(self.config['lookback']) < 1:
      raise BaselineError(f'{self.name}: lookback must be >= 1, got {self.config["lookback"]}')
    if not 1.0 / 3.0 < float(self.config['confidence']) <= 1.0:
      raise BaselineError(f'{self.name}: confidence must be in (1/3, 1], got '
                          f'{self.config["confidence"]}')
    self.fitted = True
    return self

  def predict(self, features, *, close=None):
    self._require_fitted()
    n = len(_check_features(self.name, features))
    close = _check_close(self.name, close, n)
    k, c = int(self.config['lookback']), float(self.config['confidence'])
    direction = np.zeros(n)
    direction[k:] = np.sign(close[k:] / close[:-k] - 1.0)
    up = np.array([(1 - c) / 2, (1 - c) / 2, c])
    down = up[::-1]
    probs = np.where(direction[:, None] > 0, up,
                     np.where(direction[:, None] < 0, down, 1.0 / _NUM_ACTIONS))
    return probs.astype(np.float32)


class _Classifier(nn.Module):
  """Dense layers with ReLU, then 3 logits; no hidden layer is logistic regression."""

  hidden: Sequence[int]

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    for width in self.hidden:
      x = nn.relu(nn.Dense(width)(x))
    return nn.Dense(_NUM_ACTIONS)(x)


class DenseClassifier(Baseline):
  """A Flax classifier on the flattened features of the last `context_length` bars.

  Trained with Adam on the class-weighted mean cross-entropy plus `l2 / 2 * sum(kernel**2)`,
  for `steps` steps, full-batch (`batch_size = 0`) or on `batch_size` bars drawn with
  replacement from a key derived from `seed` and the step.
  """

  name = 'mlp'
  defaults: ClassVar[dict[str, Any]] = {
      'hidden': (64,), 'context_length': 1, 'l2': 1e-4, 'learning_rate': 1e-2,
      'steps': 500, 'batch_size': 256, 'class_weights': 'fixed', 'seed': 0}

  def fit(self, features, labels, mask, *, close=None):
    features, labels, mask = _check_fit(self.name, features, labels, mask)
    context = int(self.config['context_length'])
    if context < 1:
      raise BaselineError(f'{self.name}: context_length must be >= 1, got {context}')
    ends = np.flatnonzero(mask & (np.arange(len(mask)) >= context - 1))
    if not len(ends):
      raise BaselineError(f'{self.name}: no training bar has {context} bars of history')
    x = _flat_windows(features, ends, context)
    y = labels[ends]
    weights = labels_lib.class_weights(y, np.ones(len(y), bool), self.config['class_weights'])
    self.module = _Classifier(hidden=tuple(int(h) for h in self.config['hidden']))
    params = self.module.init(jax.random.key(int(self.config['seed'])), x[:1])['params']
    self.params = _train_classifier(self.module, params, x, y, weights, self.config)
    self.fitted = True
    return self

  def predict(self, features, *, close=None):
    self._require_fitted()
    features = _check_features(self.name, features)
    context = int(self.config['context_length'])
    out = np.full((len(features), _NUM_ACTIONS), np.nan, np.float32)
    ends = np.arange(context - 1, len(features))
    if len(ends):
      logits = _apply(self.module, self.params, _flat_windows(features, ends, context))
      out[ends] = np.asarray(jax.nn.softmax(logits, axis=-1))
    return out

  def _state(self):
    flat = traverse_util.flatten_dict(jax.device_get(self.params), sep='/')
    return {}, {key: np.asarray(value) for key, value in flat.items()}

  def _restore(self, state, arrays):
    self.module = _Classifier(hidden=tuple(int(h) for h in self.config['hidden']))
    self.params = traverse_util.unflatten_dict(dict(arrays), sep='/')


class LogisticRegression(DenseClassifier):
  """Multinomial logistic regression on the last bar's 60 features (full-batch Adam, L2)."""

  name = 'logistic'
  defaults: ClassVar[dict[str, Any]] = {
      'hidden': (), 'context_length': 1, 'l2': 1e-3, 'learning_rate': 0.05, 'steps': 300,
      'batch_size': 0, 'class_weights': 'fixed', 'seed': 0}


class PositionMLP(DenseClassifier):
  """The `mlp` network trained on the net-of-cost Sharpe ratio of the positions it outputs.

  The network is `mlp`'s (`_Classifier` on the flattened last `context_length` bars), its
  position `objectives.positions(logits, long_only)`. Each Adam step draws `batch_size`
  windows of `window` consecutive bars (start bars from a key derived from `seed` and the
  step) and minimises `objectives.make_loss_fn(TradingObjective(objective, ...))` over them
  plus `l2 / 2 * sum(kernel**2)`: the bar-t position earns `close[t+1] / close[t] - 1` and
  pays `cost_multiplier * (commission + slippage)` per unit of position change inside the
  window. Only bars of the training mask with a known next return and a full look-back take
  part. The labels are not used.
  """

  name = 'mlp_sharpe'
  outputs_position = True
  defaults: ClassVar[dict[str, Any]] = {
      'hidden': (64,), 'context_length': 1, 'l2': 1e-4, 'learning_rate': 3e-3,
      'steps': 400, 'batch_size': 32, 'window': 128, 'objective': 'sharpe',
      'long_only': False, 'commission': 0.001, 'slippage': 0.0005, 'cost_multiplier': 1.0,
      'turnover_penalty': 0.0, 'risk_aversion': 1.0, 'seed': 0}

  def objective(self) -> objectives_lib.TradingObjective:
    """The TradingObjective of this model's config (errors name the config field)."""
    try:
      return objectives_lib.TradingObjective(
          kind=self.config['objective'], long_only=bool(self.config['long_only']),
          **{k: float(self.config[k]) for k in ('commission', 'slippage', 'cost_multiplier',
                                                'turnover_penalty', 'risk_aversion')})
    except ValueError as e:
      raise BaselineError(f'{self.name}: {e}') from e

  def fit(self, features, labels, mask, *, close=None):
    features, _, mask = _check_fit(self.name, features, labels, mask)
    close = _check_close(self.name, close, len(features))
    objective = self.objective()
    context, window = int(self.config['context_length']), int(self.config['window'])
    if context < 1:
      raise BaselineError(f'{self.name}: context_length must be >= 1, got {context}')
    if int(self.config['batch_size']) < 1:
      raise BaselineError(f'{self.name}: batch_size (windows per step) must be >= 1, got '
                          f'{self.config["batch_size"]}')
    if window < 2:  # a one-bar window has no position change, so costs never reach the loss
      raise BaselineError(f'{self.name}: window must be >= 2 bars, got {window}')
    forward = labels_lib.next_bar_returns(close)
    valid = mask & np.isfinite(forward) & (np.arange(len(mask)) >= context - 1)
    bars = np.flatnonzero(valid)
    if len(bars) < window:
      raise BaselineError(f'{self.name}: {len(bars)} training bars with a next return and '
                          f'{context} bars of history, fewer than one window of {window}')
    # Windows lie inside the span of valid bars; masked bars inside them take no part.
    first, last = int(bars[0]), int(bars[-1]) - window + 1
    ends = np.arange(first, int(bars[-1]) + 1)
    x = _flat_windows(features, ends, context)
    self.module = _Classifier(hidden=tuple(int(h) for h in self.config['hidden']))
    params = self.module.init(jax.random.key(int(self.config['seed'])), x[:1])['params']
    params = _train_positions(
        self.module, objective, int(self.config['batch_size']), window,
        jnp.int32(self.config['steps']), jnp.float32(self.config['learning_rate']),
        jnp.float32(self.config['l2']), params, jnp.asarray(x, jnp.float32),
        jnp.asarray(np.where(valid[ends], forward[ends], 0.0), jnp.float32),
        jnp.asarray(valid[ends]), jnp.int32(last - first + 1),
        jax.random.key(int(self.config['seed'])))
    self.params = jax.device_get(params)
    self.fitted = True
    return self

  def positions(self, features: np.ndarray) -> np.ndarray:
    """float32 (N,) positions; NaN where the look-back does not fit."""
    self._require_fitted()
    features = _check_features(self.name, features)
    context = int(self.config['context_length'])
    out = np.full(len(features), np.nan, np.float32)
    ends = np.arange(context - 1, len(features))
    if len(ends):
      logits = _apply(self.module, self.params, _flat_windows(features, ends, context))
      out[ends] = np.asarray(objectives_lib.positions(jnp.asarray(logits),
                                                      bool(self.config['long_only'])))
    return out

  def predict(self, features, *, close=None):
    return _probs_from_positions(self.positions(features))


class LightGBM(Baseline):
  """Gradient-boosted trees (multiclass LightGBM) on the last bar's features."""

  name = 'lightgbm'
  defaults: ClassVar[dict[str, Any]] = {
      'num_boost_round': 100, 'num_leaves': 15, 'learning_rate': 0.05,
      'min_data_in_leaf': 50, 'feature_fraction': 0.8, 'class_weights': 'fixed', 'seed': 0,
      'num_threads': 1}

  def fit(self, features, labels, mask, *, close=None):
    lgb = _import_lightgbm()
    features, labels, mask = _check_fit(self.name, features, labels, mask)
    y = labels[mask]
    weights = labels_lib.class_weights(y, np.ones(len(y), bool), self.config['class_weights'])
    params = {'objective': 'multiclass', 'num_class': _NUM_ACTIONS, 'verbosity': -1,
              'deterministic': True, 'force_row_wise': True,
              'num_leaves': int(self.config['num_leaves']),
              'learning_rate': float(self.config['learning_rate']),
              'min_data_in_leaf': int(self.config['min_data_in_leaf']),
              'feature_fraction': float(self.config['feature_fraction']),
              'seed': int(self.config['seed']), 'num_threads': int(self.config['num_threads'])}
    dataset = lgb.Dataset(features[mask], label=y, weight=weights[y])
    self.booster = lgb.train(params, dataset, num_boost_round=int(self.config['num_boost_round']))
    self.fitted = True
    return self

  def predict(self, features, *, close=None):
    self._require_fitted()
    features = _check_features(self.name, features)
    return np.asarray(self.booster.predict(features), np.float32).reshape(-1, _NUM_ACTIONS)

  def _state(self):
    return {'model': self.booster.model_to_string()}, {}

  def _restore(self, state, arrays):
    self.booster = _import_lightgbm().Booster(model_str=state['model'])


class FlagTraderRun(Baseline):
  """A finished FLAG-TRADER training run (read-only) behind the baseline interface."""

  name = 'flag_trader'
  defaults: ClassVar[dict[str, Any]] = {'path': '', 'which': 'best', 'batch_size': 512}

  def __init__(self, **config: Any):
    super().__init__(**config)
    if not self.config['path']:
      raise BaselineError(f'{self.name}: config field path (a training workdir) is required')
    from himari_jax.model import checkpoint as checkpoint_lib

    self.loaded = checkpoint_lib.load_model(self.config['path'], self.config['which'])
    self.normalizer = self.loaded.normalizer
    self.context_length = int(self.loaded.config.train.context_length)
    # A run trained with a trading objective outputs a position, read like `mlp_sharpe`'s;
    # one trained by 'reinforce' scores actions, like a classifier.
    self.trading_objective = objectives_lib.TradingObjective.from_config(
        self.loaded.config.train)
    self.outputs_position = (self.trading_objective is not None
                             and not self.trading_objective.acts)

  def fit(self, features, labels, mask, *, close=None):
    # Training is train.train_and_evaluate's job; this only checks the split can be scored.
    _check_fit(self.name, features, labels, mask)
    self.fitted = True
    return self

  def predict(self, features, *, close=None):
    from himari_jax.inference import predict as predict_lib

    self._require_fitted()
    features = _check_features(self.name, features)
    logits = predict_lib.predict_logits_from_features(
        self.loaded.params, self.loaded.model_config, features, self.context_length,
        batch_size=int(self.config['batch_size']))
    if self.outputs_position:
      available = ~np.isnan(logits).any(axis=-1)
      position = np.full(len(features), np.nan, np.float32)
      position[available] = np.asarray(objectives_lib.positions(
          jnp.asarray(logits[available]), self.trading_objective.long_only))
      return _probs_from_positions(position)
    return np.asarray(jax.nn.softmax(jnp.asarray(logits), axis=-1), np.float32)


BASELINES = {cls.name: cls for cls in (LabelPrior, BuyAndHold, Momentum, LogisticRegression,
                                       LightGBM, DenseClassifier, PositionMLP, FlagTraderRun)}


def unavailable_reason(name: str) -> str | None:
  """Why model `name` cannot run here (a missing optional package), or None when it can."""
  if name not in BASELINES:
    raise BaselineError(f'unknown baseline {name!r}; valid: {", ".join(BASELINES)}')
  if name == 'lightgbm':
    try:
      _import_lightgbm()
    except extras.MissingExtraError as e:
      return e.reason
  return None


def available_baselines() -> dict[str, str | None]:
  """Every model name mapped to None (runs here) or the reason it is skipped."""
  return {name: unavailable_reason(name) for name in BASELINES}


def make_baseline(name: str, **config: Any) -> Baseline:
  """An unfitted model by name (`BASELINES`) with config fields overriding its defaults.

  Raises:
    BaselineError: unknown name or config field.
    extras.MissingExtraError: the model's optional package is missing (the message names
      the extra to install).
  """
  if name not in BASELINES:
    raise BaselineError(f'unknown baseline {name!r}; valid: {", ".join(BASELINES)}')
  if name == 'lightgbm':
    _import_lightgbm()
  return BASELINES[name](**config)


def load_baseline(directory: str | os.PathLike) -> Baseline:
  """A fitted model from a directory written by `Baseline.save`."""
  path = os.path.join(directory, CONFIG_FILE)
  try:
    with open(path) as f:
      saved = json.load(f)
  except (OSError, json.JSONDecodeError) as e:
    raise BaselineError(f'{path}: cannot read a saved baseline ({e})') from e
  if saved.get('format') != _FORMAT or 'name' not in saved:
    raise BaselineError(f'{path}: not a baseline file of format {_FORMAT}')
  config = {key: tuple(value) if isinstance(value, list) else value
            for key, value in saved.get('config', {}).items()}
  model = make_baseline(saved['name'], **config)
  arrays_path = os.path.join(directory, ARRAYS_FILE)
  arrays = {}
  if os.path.exists(arrays_path):
    with np.load(arrays_path, allow_pickle=False) as npz:
      arrays = {key: npz[key] for key in npz.files}
  model._restore(saved.get('state', {}), arrays)
  model.fitted = True
  return model


def calibrate_and_decide(val_probs: np.ndarray, val_labels: np.ndarray, val_mask: np.ndarray,
                         probs: np.ndarray, *, mode: str = 'fit_rates',
                         bias: Sequence[float] = calibration_lib.SEED_BIAS,
                         temperature: bool = True, threshold: float = 0.0,
                         name: str = 'model') -> decisions_lib.Decisions:
  """Calibrates on validation and decides with the seed policy, as FLAG-TRADER members are.

  The probabilities become logits `log(max(p, LOG_PROB_FLOOR))` (a softmax of them gives back
  `p`), so the model goes through `decisions.calibrate_on_validation`, `apply_calibration` and
  `decide` exactly like FLAG-TRADER's logits, as a one-member 'confidence_weighted' ensemble.

  Args:
    val_probs: (V, 3) the model's validation probabilities (NaN rows unavailable).
    val_labels: (V,) int validation labels; val_mask: (V,) bool bars with a known label.
    probs: (N, 3) probabilities of the bars to decide (NaN rows unavailable).
    mode, bias, temperature: as `config.calibration` (`calibration.fit_calibration`);
      `mode='skip'` (position models): the probabilities are used as given, no logits, no
      fit, `bias` and `temperature` ignored.
    threshold: BUY / SELL with calibrated confidence below it become HOLD.
    name: the model's name in the result.

  Returns:
    `Decisions` of one member for the N bars; its calibration summary also holds the
    validation bars used (`val_bars`) and `threshold`.
  """
  val_logits = _as_logits(val_probs, 'val_probs')
  logits = _as_logits(probs, 'probs')
  val_mask = np.asarray(val_mask, bool) & ~np.isnan(val_logits).any(axis=-1)
  if mode == 'skip':  # exactly as given: the margin p_buy - p_sell is the position
    summary = {'mode': mode, **calibration_lib.Calibration().to_dict()}
    calibrated, available = decisions_lib.hold_where_unavailable(probs)
  else:
    try:
      cal, summary = decisions_lib.calibrate_on_validation(
          mode, bias=bias, temperature=temperature,
          validation=(val_logits, np.asarray(val_labels), val_mask))
    except ValueError as e:
      raise BaselineError(f'calibrate_and_decide: {e}') from e
    calibrated, available = decisions_lib.apply_calibration(cal, logits)
  summary.update(val_bars=int(val_mask.sum()), threshold=float(threshold))
  return decisions_lib.decide(calibrated[None], available, strategy='confidence_weighted',
                              threshold=threshold, members=[name], calibrations=[summary])


def _as_logits(probs: np.ndarray, name: str) -> np.ndarray:
  probs = np.asarray(probs, np.float32)
  if probs.ndim != 2 or probs.shape[1] != _NUM_ACTIONS:
    raise BaselineError(f'{name} must have shape (N, 3), got {probs.shape}')
  return np.log(np.maximum(probs, LOG_PROB_FLOOR))  # NaN rows stay NaN


def _train_classifier(module: nn.Module, params: Any, x: np.ndarray, y: np.ndarray,
                      class_weights: np.ndarray, config: dict[str, Any]) -> Any:
  """Adam on weighted cross-entropy + L2 on kernels; the fitted params (host arrays)."""
  n = len(y)
  batch = int(config['batch_size'])
  batch = n if batch <= 0 or batch >= n else batch
  params = _train_loop(module, batch, jnp.int32(config['steps']),
                       jnp.float32(config['learning_rate']), jnp.float32(config['l2']), params,
                       jnp.asarray(x, jnp.float32),
                       jnp.asarray(y, jnp.int32), jnp.asarray(class_weights, jnp.float32),
                       jax.random.key(int(config['seed'])))
  return jax.device_get(params)


# Module-level with only the architecture and batch size static, so refits with other seeds,
# steps or rates on same-sized data reuse one compilation.
@functools.partial(jax.jit, static_argnums=(0, 1))
def _train_loop(module: nn.Module, batch: int, steps: jax.Array, learning_rate: jax.Array,
                l2: jax.Array, params: Any, x: jax.Array, y: jax.Array, class_weights: jax.Array,
                key: jax.Array) -> Any:
  optimizer = optax.inject_hyperparams(optax.adam)(learning_rate=learning_rate)
  n = y.shape[0]

  def loss_fn(p, xb, yb):
    log_probs = jax.nn.log_softmax(module.apply({'params': p}, xb), axis=-1)
    nll = -jnp.take_along_axis(log_probs, yb[:, None], axis=-1)[:, 0]
    w = class_weights[yb]
    penalty = sum(jnp.sum(leaf ** 2) for path, leaf in traverse_util.flatten_dict(p).items()
                  if path[-1] == 'kernel')
    return jnp.sum(w * nll) / jnp.maximum(jnp.sum(w), 1e-12) + 0.5 * l2 * penalty

  def step(i, carry):
    p, opt_state = carry
    if batch == n:
      xb, yb = x, y
    else:  # bars drawn with replacement: a function of (seed, step) only
      idx = jax.random.randint(jax.random.fold_in(key, i), (batch,), 0, n)
      xb, yb = x[idx], y[idx]
    grads = jax.grad(loss_fn)(p, xb, yb)
    updates, opt_state = optimizer.update(grads, opt_state, p)
    return optax.apply_updates(p, updates), opt_state

  params, _ = jax.lax.fori_loop(0, steps, step, (params, optimizer.init(params)))
  return params


# Static: the architecture, the objective (a frozen dataclass), windows per step and their
# length; steps, rates and data are traced, so seeds and folds of one size share a compile.
@functools.partial(jax.jit, static_argnums=(0, 1, 2, 3))
def _train_positions(module: nn.Module, objective: objectives_lib.TradingObjective, batch: int,
                     window: int, steps: jax.Array, learning_rate: jax.Array, l2: jax.Array,
                     params: Any, x: jax.Array, forward: jax.Array, valid: jax.Array,
                     num_starts: jax.Array, key: jax.Array) -> Any:
  """Adam on the trading loss of `batch` random windows per step + L2 on kernels.

  x: (M, D) inputs of M consecutive bars; forward, valid: (M,) next-bar returns and the bars
  that take part; windows start at bars 0 .. num_starts - 1.
  """
  optimizer = optax.inject_hyperparams(optax.adam)(learning_rate=learning_rate)
  trading_loss = objectives_lib.make_loss_fn(objective)
  offsets = jnp.arange(window)

  def loss_fn(p, rows):
    logits = module.apply({'params': p}, x[rows])  # (B, T, 3)
    loss, _ = trading_loss(logits, {'forward_return': forward[rows], 'mask': valid[rows]})
    penalty = sum(jnp.sum(leaf ** 2) for path, leaf in traverse_util.flatten_dict(p).items()
                  if path[-1] == 'kernel')
    return loss + 0.5 * l2 * penalty

  def step(i, carry):
    p, opt_state = carry
    starts = jax.random.randint(jax.random.fold_in(key, i), (batch,), 0, num_starts)
    grads = jax.grad(loss_fn)(p, starts[:, None] + offsets[None, :])
    updates, opt_state = optimizer.update(grads, opt_state, p)
    return optax.apply_updates(p, updates), opt_state

  params, _ = jax.lax.fori_loop(0, steps, step, (params, optimizer.init(params)))
  return params


def _probs_from_positions(position: np.ndarray) -> np.ndarray:
  """(N,) positions (NaN: unavailable) -> float32 (N, 3) `policy.probs_from_score` rows."""
  out = np.full((len(position), _NUM_ACTIONS), np.nan, np.float32)
  available = np.isfinite(position)
  out[available] = policy_lib.probs_from_score(np.clip(position[available], -1.0, 1.0))
  return out


@functools.partial(jax.jit, static_argnums=0)
def _logits(module: nn.Module, params: Any, x: jax.Array) -> jax.Array:
  return module.apply({'params': params}, x)


def _apply(module: nn.Module, params: Any, x: np.ndarray, batch_size: int = 8192) -> np.ndarray:
  """Logits (M, 3) of flattened inputs (M, D), in batches so memory stays bounded."""
  return np.concatenate([np.asarray(_logits(module, params, jnp.asarray(x[i:i + batch_size])))
                         for i in range(0, len(x), batch_size)])


def _flat_windows(features: np.ndarray, ends: np.ndarray, context: int) -> np.ndarray:
  """(N, 60) -> (len(ends), context * 60): bars end-context+1 .. end, oldest first."""
  offsets = np.arange(1 - context, 1)
  return features[ends[:, None] + offsets[None, :]].reshape(len(ends), -1)


def _import_lightgbm() -> Any:
  return extras.import_extra('lightgbm', 'baselines', 'the lightgbm baseline')


def _check_features(name: str, features: Any) -> np.ndarray:
  features = np.asarray(features, np.float32)
  if features.ndim != 2 or features.shape[1] != features_lib.NUM_FEATURES:
    raise BaselineError(f'{name}: features must have shape (N, {features_lib.NUM_FEATURES}), '
                        f'got {features.shape}')
  bad = np.flatnonzero(~np.isfinite(features).all(axis=1))
  if bad.size:
    raise BaselineError(f'{name}: features row {bad[0]} is not finite')
  return features


def _check_fit(name: str, features: Any, labels: Any, mask: Any
               ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  features = _check_features(name, features)
  labels, mask = np.asarray(labels), np.asarray(mask)
  if labels.shape != (len(features),) or not np.issubdtype(labels.dtype, np.integer):
    raise BaselineError(f'{name}: labels must be integers of shape ({len(features)},), got '
                        f'{labels.dtype} {labels.shape}')
  if mask.shape != (len(features),) or mask.dtype != bool:
    raise BaselineError(f'{name}: mask must be bool of shape ({len(features)},), got '
                        f'{mask.dtype} {mask.shape}')
  if not mask.any():
    raise BaselineError(f'{name}: the training mask selects no bars')
  bad = np.flatnonzero(mask & ((labels < 0) | (labels >= _NUM_ACTIONS)))
  if bad.size:
    raise BaselineError(f'{name}: label of training bar {bad[0]} is {labels[bad[0]]}, not 0-2')
  return features, labels.astype(np.int32), mask


def _check_close(name: str, close: Any, n: int) -> np.ndarray:
  if close is None:
    raise BaselineError(f'{name}: needs close prices (close=...) aligned with the features')
  close = np.asarray(close, np.float64)
  if close.shape != (n,):
    raise BaselineError(f'{name}: close must have shape ({n},), got {close.shape}')
  bad = np.flatnonzero(~(np.isfinite(close) & (close > 0)))
  if bad.size:
    raise BaselineError(f'{name}: close of bar {bad[0]} is {close[bad[0]]}, not a positive price')
  return close
