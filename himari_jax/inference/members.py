"""From trained models to decisions: load members, predict, calibrate, combine.

The steps every evaluation entry point shares (launch/backtest.py, diagnose.py, quickstart.py,
walk-forward): each member is loaded (an Orbax training run or a PyTorch `.pt`), scored on
every bar of a dataset, calibrated on the validation split of its own training data, and the
members' probability vectors are combined into one action and confidence per bar (SPEC 5)
by the steps of decisions.py, which baselines share.
"""

from __future__ import annotations

import dataclasses
import os
import pathlib
from collections.abc import Sequence

import ml_collections
import numpy as np
import pandas as pd

from himari_jax import config as config_lib
from himari_jax.data import input_pipeline
from himari_jax.data import windows as windows_lib
from himari_jax.inference import calibration as calibration_lib
from himari_jax.inference import decisions as decisions_lib
from himari_jax.inference import predict as predict_lib
from himari_jax.model import checkpoint as checkpoint_lib


def load_member(path: str, which: str = 'best') -> checkpoint_lib.LoadedModel:
  """A training run (workdir or its checkpoints/) or a PyTorch `.pt` file, ready to predict.

  A `.pt` file is scored at T = 1 without a mask, as the seed was trained, on the feature set
  it records, else 'seed_causal' (`convert.load_pt_model` with the default config): the
  seed's own 22 inputs with trailing windows, fed raw.
  """
  if not os.fspath(path).endswith('.pt'):
    return checkpoint_lib.load_model(path, which)
  from himari_jax.model import convert  # torch is an optional extra

  return convert.load_pt_model(path, config_lib.default_config())


def validation_logits(loaded: checkpoint_lib.LoadedModel) -> tuple[np.ndarray, np.ndarray]:
  """Logits `(V, 3)` and labels `(V,)` of a member on the validation split it trained with."""
  prepared = input_pipeline.prepare_data(loaded.config)
  context = int(loaded.config.train.context_length)
  logits = predict_lib.predict_logits_from_features(
      loaded.params, loaded.model_config, prepared.features, context, bars=prepared.val_ends)
  return logits[prepared.val_ends], prepared.labels[prepared.val_ends]


def fit_member_calibration(loaded: checkpoint_lib.LoadedModel,
                           calibration_config: ml_collections.ConfigDict
                           ) -> tuple[calibration_lib.Calibration, dict]:
  """The member's `Calibration` and a JSON-able summary (bias, temperature, ECE before/after),
  fitted on the validation split of its own training data (`decisions.calibrate_on_validation`).

  A run trained on net returns (`config.train.objective` other than 'classification') is not
  fitted to the label rates: that would move the decisions it was trained to make. Its
  summary says so (`skipped`); a 'fixed' calibration still applies as given.
  """
  mode = calibration_config.mode
  if mode not in calibration_lib.MODES:
    raise ValueError(f'calibration.mode={mode!r}; valid: {", ".join(calibration_lib.MODES)}')
  if mode not in ('none', 'fixed') and loaded.objective != 'classification':
    cal = calibration_lib.Calibration()
    return cal, {'mode': 'none', **cal.to_dict(),
                 'skipped': f'calibration.mode={mode} not applied: trained on net returns '
                            f'(objective {loaded.objective}), not on labels'}
  validation = None
  if decisions_lib.fits_on_validation(mode, calibration_config.temperature):
    logits, labels = validation_logits(loaded)
    validation = (logits, labels, np.ones(len(labels), bool))
  return decisions_lib.calibrate_on_validation(
      mode, bias=calibration_config.bias, temperature=calibration_config.temperature,
      validation=validation, num_bins=calibration_config.num_bins)


def member_probabilities(members: Sequence[checkpoint_lib.LoadedModel], df: pd.DataFrame,
                         calibration_config: ml_collections.ConfigDict, *,
                         asset: str | None = None,
                         fitted: Sequence[tuple[calibration_lib.Calibration, dict]] | None = None,
                         batch_size: int = 512, bars: np.ndarray | None = None
                         ) -> tuple[np.ndarray, np.ndarray, list[dict]]:
  """Calibrated probabilities `(M, N, 3)` (`decisions.HOLD_PROBS` where a member cannot score),
  availability `(N,)` (every member scores) and calibration summaries.

  `asset` (`input_pipeline.asset_name` of the data) picks each member's normaliser of that
  asset when it trained on several; None or an unseen asset uses its first one. `fitted`:
  each member's `fit_member_calibration` output, when already computed. `batch_size`:
  `predict.predict_logits`'s. `bars`: score only these B bar indices (the last bar of a
  window, live); the arrays then hold those bars only, `(M, B, 3)` and `(B,)`.
  """
  if fitted is None:
    fitted = [fit_member_calibration(loaded, calibration_config) for loaded in members]
  rows = np.arange(len(df)) if bars is None else np.asarray(bars)
  probs, available, summaries = [], np.ones(len(rows), bool), []
  for loaded, (cal, summary) in zip(members, fitted, strict=True):
    preds = predict_lib.predict_logits(loaded.for_asset(asset), df, batch_size=batch_size,
                                       bars=bars)
    member, scored = decisions_lib.apply_calibration(cal, preds.logits[rows])
    probs.append(member)
    available &= scored
    summaries.append(summary)
  return np.stack(probs), available, summaries


def decide_members(members: Sequence[checkpoint_lib.LoadedModel], names: Sequence[str],
                   df: pd.DataFrame, *, strategy: str, threshold: float,
                   weights: Sequence[float] | None,
                   calibration_config: ml_collections.ConfigDict, asset: str | None = None,
                   fitted: Sequence[tuple[calibration_lib.Calibration, dict]] | None = None
                   ) -> decisions_lib.Decisions:
  """Calibrated, combined decisions of `members` for every bar of `df` (of `asset`)."""
  probs, available, summaries = member_probabilities(members, df, calibration_config,
                                                     asset=asset, fitted=fitted)
  return decisions_lib.decide(probs, available, strategy=strategy, threshold=threshold,
                              weights=weights, members=names, calibrations=summaries,
                              index=df.index)


def validation_frame(loaded: checkpoint_lib.LoadedModel, asset: str | None = None
                     ) -> tuple[pd.DataFrame, int]:
  """The validation bars of a member's own training data, with the history they are scored
  from: the bars `fit_member_calibration` calibrates on, to choose a policy on (SPEC 8).

  A member trained on several files uses the file of `asset` (`input_pipeline.asset_name`),
  else its first file; the split is `input_pipeline.prepare_data`'s (max_bars, val_fraction,
  embargo).

  Returns:
    (frame, num_val): the last `num_val` rows of `frame` are the validation bars, the rows
    before them the feature warm-up and context of the first one.
  """
  config = loaded.config
  frames = input_pipeline.load_frames(config)
  names = [n for n in frames if input_pipeline.asset_name(n) == asset] or list(frames)
  df = frames[names[0]]
  if config.data.max_bars:
    df = df.iloc[-config.data.max_bars:]
  split = windows_lib.chronological_split(len(df), val=config.data.val_fraction,
                                          embargo=input_pipeline.embargo_bars(config))
  lead = predict_lib.first_available_bar(int(config.train.context_length))
  return df.iloc[max(0, split.val.start - lead):split.val.stop], split.val.stop - split.val.start


@dataclasses.dataclass(frozen=True)
class Overlap:
  """Bars of a backtest that a member trained or validated on.

  member: the member's name (its path); part: 'training' or 'validation' split of `file`, or
  'training file' for runs that recorded only the file's range; first, last, bars: the
  overlapping backtest bars.
  """

  member: str
  file: str
  part: str
  first: pd.Timestamp
  last: pd.Timestamp
  bars: int

  def describe(self) -> str:
    return (f'{self.member} used {self.bars:,} of the backtest bars for {self.part} '
            f'({self.file}, {self.first:%Y-%m-%d %H:%M} .. {self.last:%Y-%m-%d %H:%M})')


def in_sample_overlaps(members: Sequence[checkpoint_lib.LoadedModel], names: Sequence[str],
                       index: pd.DatetimeIndex) -> tuple[list[Overlap], list[str]]:
  """Which backtest bars each member trained or validated on, from its recorded data.

  A run records the bar ranges of its training and validation splits per file
  (`input_pipeline.prepare_data`); runs from before that record only each file's range,
  which is then checked whole. Any asset counts: a model that saw these hours of another
  coin has seen this market's hours.

  Args:
    members: loaded members; names: their names (paths), in the same order.
    index: (N,) the backtest's bar times.

  Returns:
    (overlaps, names of members without any recorded range: their overlap is unknown).
  """
  overlaps, unknown = [], []
  for member, name in zip(members, names, strict=True):
    files = (member.meta.get('data') or {}).get('files') or []
    if not any('first' in f for f in files):
      unknown.append(name)
      continue
    for f in files:
      if 'train_first' in f:
        parts = (('training', f['train_first'], f['train_last']),
                 ('validation', f['val_first'], f['val_last']))
      else:
        parts = (('training file', f['first'], f['last']),)
      for part, first, last in parts:
        inside = index[(index >= pd.Timestamp(first)) & (index <= pd.Timestamp(last))]
        if len(inside):
          overlaps.append(Overlap(name, f.get('name', '?'), part, inside[0], inside[-1],
                                  len(inside)))
  return overlaps, unknown


def resolve_path(path: str) -> str:
  """`path` as given if it exists, else relative to the repository (shipped checkpoints)."""
  if os.path.exists(path) or os.path.isabs(path):
    return path
  repo = pathlib.Path(__file__).resolve().parents[2]  # himari_jax/inference/members.py
  in_repo = os.path.join(repo, path)
  return in_repo if os.path.exists(in_repo) else path
