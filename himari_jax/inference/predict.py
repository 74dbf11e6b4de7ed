"""Batched, jit-compiled inference: logits and probabilities for every bar of a dataset.

Each bar `t` is scored from its own trailing window of `T` bars (`t-T+1 .. t`), reading the
model's output at the window's last position, so a prediction never depends on later bars or
on what else shares its batch. Bars without a full window after the feature warm-up are
reported as unavailable (NaN logits), not guessed.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd

from himari_jax.data import features as features_lib
from himari_jax.model import flag_trader as model_lib
from himari_jax.model import objectives as objectives_lib


@dataclasses.dataclass(frozen=True)
class Predictions:
  """Model outputs aligned with the bars of a dataset.

  logits: (N, 3) float32, NaN where unavailable; available: (N,) bool; index: the bars' times.
  """

  logits: np.ndarray
  available: np.ndarray
  index: pd.DatetimeIndex

  @property
  def probs(self) -> np.ndarray:
    """(N, 3) softmax probabilities (NaN where unavailable)."""
    return np.asarray(jax.nn.softmax(jnp.asarray(self.logits), axis=-1))


@functools.lru_cache(maxsize=16)
def _predict_fn(model_config: model_lib.ModelConfig):
  module = model_lib.FlagTrader(model_config)

  @jax.jit
  def predict(params, windows):
    return module.apply({'params': params}, windows, deterministic=True)[:, -1, :]

  return predict


def first_available_bar(context_length: int) -> int:
  """Index of the first bar that has a full window of valid (post warm-up) features."""
  return features_lib.WARMUP_BARS + context_length - 1


def predict_logits_from_features(params, model_config: model_lib.ModelConfig,
                                 feats: np.ndarray, context_length: int, *,
                                 batch_size: int = 512, merge: bool = True,
                                 bars: np.ndarray | None = None) -> np.ndarray:
  """Logits `(N, 3)` for normalised features `feats: (N, 60)`; NaN rows where unavailable.

  Windows are gathered batch by batch (never all at once) and the last batch is padded to
  `batch_size` so one compiled function serves the whole series. `bars` restricts scoring to
  those bar indices (the other rows stay NaN).
  """
  if merge and model_config.lora_targets:
    params, model_config = model_lib.merge_lora(params, model_config)
  predict = _predict_fn(model_config)
  n = len(feats)
  out = np.full((n, model_config.action_dim), np.nan, np.float32)
  ends = np.arange(first_available_bar(context_length), n)
  if bars is not None:
    ends = np.intersect1d(ends, np.asarray(bars))
  offsets = np.arange(-context_length + 1, 1)
  feats = np.asarray(feats, np.float32)
  for start in range(0, len(ends), batch_size):
    batch_ends = ends[start:start + batch_size]
    padded = np.pad(batch_ends, (0, batch_size - len(batch_ends)), mode='edge')
    windows = feats[padded[:, None] + offsets[None, :]]
    logits = np.asarray(predict(params, jnp.asarray(windows)))
    out[batch_ends] = logits[:len(batch_ends)]
  return out


def predict_logits(loaded, df: pd.DataFrame, *, batch_size: int = 512,
                   feature_set: str | None = None, bars: np.ndarray | None = None
                   ) -> Predictions:
  """Predictions of a loaded model (`checkpoint.load_model`, `members.load_member`) for every
  bar of `df`, from the features of the set it was trained on (`loaded.feature_set`).

  Args:
    batch_size: windows per compiled call. XLA compiles other kernels for other batch shapes,
      so a bar's logits equal, bit for bit, only those of calls with the same batch size.
    feature_set: the set the caller means to score with (e.g. its `config.data.feature_set`);
      None = the model's own.
    bars: score only these bar indices (the others are unavailable).

  Raises:
    features.FeatureSetError: `feature_set` differs from the model's.
  """
  feature_set = loaded.check_feature_set(feature_set)
  feats = loaded.normalizer.apply(features_lib.compute_features(df, feature_set))
  context_length = int(loaded.config.train.context_length)
  logits = predict_logits_from_features(loaded.params, loaded.model_config, feats,
                                        context_length, batch_size=batch_size, bars=bars)
  return Predictions(logits=logits, available=~np.isnan(logits).any(axis=1), index=df.index)


def predicted_positions(loaded, preds: Predictions) -> np.ndarray:
  """Target positions (N,) of a position model's predictions (`objectives.positions`):
  in [-1, 1], or [0, 1] when it was trained `long_only`; NaN where unavailable.

  Raises:
    ValueError: `loaded` is a classifier or an action policy (`config.train.objective`
      'classification' or 'reinforce'), whose logits are action scores, not positions.
  """
  if loaded.objective in ('classification', 'reinforce'):
    raise ValueError(f'{loaded.path}: config.train.objective={loaded.objective} scores '
                     'actions and has no positions; use its probabilities (members.decide).')
  long_only = bool(loaded.config.train.long_only)
  return np.asarray(objectives_lib.positions(jnp.asarray(preds.logits), long_only))
