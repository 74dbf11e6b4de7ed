"""Dataset preparation shared by training, evaluation, walk-forward and baselines.

One pipeline, as the Flax examples keep `input_pipeline.py` beside `train.py`:

  frames -> features of `config.data.feature_set` (SPEC 3) -> labels (SPEC 4) ->
  chronological split with embargo (train | embargo | validation per frame) -> one
  normaliser per asset, fitted on that asset's training rows -> end bars of the training
  and validation windows.

Entry points:
- `prepare_data(config)` loads `config.data.train` (builtin names or CSV paths);
  `prepare_data(config, frames)` takes in-memory OHLCV frames instead (benchmarks, placebo
  runs on synthetic data), keyed by name.
- `epoch_order` and `gather_batch` turn window ends into training batches on the host, so
  no window array is ever materialised.

Feature sets (`features.FEATURE_SETS`): 'himari' is normalised per asset as below; the seed
sets ('seed_causal', 'seed_exact') are fed raw, as the seed was trained, so their normaliser
is the identity (`features.fit_normalizer`).

Per-asset normalisation: a pooled normaliser would mix one asset's volatility with
another's; each asset (every frame whose name maps to it, e.g. BTC 2017-2019 and BTC
2020-2024) gets its own statistics from its own training rows only. With one asset this is
exactly the former single normaliser.
"""

from __future__ import annotations

import dataclasses
import math
import os
import re
from collections.abc import Iterator, Mapping
from typing import Any

import ml_collections
import numpy as np
import pandas as pd
from absl import logging

from himari_jax import config as config_lib
from himari_jax import constants
from himari_jax.data import features as features_lib
from himari_jax.data import labels as labels_lib
from himari_jax.data import ohlcv as data_lib
from himari_jax.data import plausibility
from himari_jax.data import windows as windows_lib

_TIMEFRAME = re.compile(r'[_-]\d+[mhdw](?:[_-]|$)')


def asset_name(name: str) -> str:
  """The asset a dataset name or CSV path holds: the normaliser group of its bars.

  'btc_usdt_1h_2020_2024' -> 'btc_usdt'; 'data/ETH-USDT-1h-2024.csv' -> 'eth_usdt'; a name
  without a timeframe part ('synthetic') is its own asset.
  """
  stem = os.path.basename(os.fspath(name)).lower()
  for suffix in ('.gz', '.csv'):
    stem = stem.removesuffix(suffix)
  match = _TIMEFRAME.search(stem)
  stem = stem[:match.start()] if match else stem
  return stem.replace('-', '_').removesuffix('_binance') or os.fspath(name)


def label_params(labels_config: ml_collections.ConfigDict) -> dict[str, Any]:
  """Keyword arguments of `labels.make_labels` from `config.labels`: the fields its rule takes.

  A rule's fields missing from the config (a checkpoint saved before they existed) keep the
  rule's defaults; the sharpe rule also takes any of its parameters added to `config.labels`.
  """
  fields = {'threshold': ('horizon', 'threshold', 'cost_floor'),
            'sharpe': ('sharpe', 'min_return', 'max_drawdown', 'cost_floor'),
            'volatility': ('horizon', 'k', 'window', 'cost_floor'),
            'triple_barrier': ('horizon', 'k_up', 'k_down', 'window', 'cost_floor')}
  kind = labels_config.kind
  if kind not in fields:
    raise ValueError(f'config.labels.kind={kind!r} is unknown; use one of {", ".join(fields)}')
  return {k: v for k, v in labels_config.items() if k in fields[kind]}


def embargo_bars(config: ml_collections.ConfigDict) -> int:
  """`config.data.embargo`, or the label horizon when it is None (SPEC 5)."""
  embargo = config.data.embargo
  if embargo is None:
    return labels_lib.label_horizon(config.labels.kind, **label_params(config.labels))
  return int(embargo)


@dataclasses.dataclass(frozen=True)
class PreparedData:
  """Every frame's bars, concatenated, with the window ends of both splits.

  Attributes:
    features: float32 (N, 60) of `feature_set`, each row normalised with its asset's
      normaliser (the identity for the seed sets).
    labels: int32 (N,); valid: bool (N,) (label known and past the feature warm-up).
    forward_returns: float32 (N,) next-bar return `close[t+1] / close[t] - 1` of each file
      (`labels.next_bar_returns`), NaN at each file's last bar; what a position held at
      bar t earns (the trading objectives).
    trade_mask: bool (N,) bars a position model is trained and scored on: next return known
      and past the feature warm-up.
    train_ends: int64 (W,) end bars of the training windows (whole window in the train part).
    val_ends: int64 (V,) validation bars with a valid label; each is scored from the window
      ending there (which may reach back across the embargo, as at inference).
    normalizers: asset name -> normaliser fitted on that asset's training rows, in the order
      the assets first appear.
    asset_ids: int32 (N,) index into `normalizers` of each row's asset.
    class_weights: float32 (3,) loss weight per action, from the training labels.
    summary: JSON-able description (feature set, files with their row offsets, bars, split
      sizes, label distribution, embargo).
    feature_set: the `features.FEATURE_SETS` name the features were computed with.
  """

  features: np.ndarray
  labels: np.ndarray
  valid: np.ndarray
  train_ends: np.ndarray
  val_ends: np.ndarray
  normalizers: dict[str, features_lib.Normalizer]
  asset_ids: np.ndarray
  class_weights: np.ndarray
  summary: dict[str, Any]
  forward_returns: np.ndarray
  trade_mask: np.ndarray
  feature_set: str = features_lib.DEFAULT_FEATURE_SET

  @property
  def normalizer(self) -> features_lib.Normalizer:
    """The first asset's normaliser: the one a single-normaliser reader scores with."""
    return next(iter(self.normalizers.values()))


def load_frames(config: ml_collections.ConfigDict) -> dict[str, pd.DataFrame]:
  """`config.data.train` loaded: name or path -> OHLCV frame, in the order given."""
  items = config_lib.split_list(config.data.train)
  frames = data_lib.load_datasets(items, fill_gaps=config.data.fill_gaps)
  if len(set(items)) != len(items):
    raise config_lib.ConfigError(f'config.data.train={config.data.train!r} lists a dataset '
                                 'twice.')
  return dict(zip(items, frames, strict=True))


def prepare_data(config: ml_collections.ConfigDict,
                 frames: Mapping[str, pd.DataFrame] | None = None) -> PreparedData:
  """Features, labels, splits, per-asset normalisers and window ends of the training data.

  Args:
    config: a training config (`config.data`, `config.labels`, `config.train` are read:
      feature_set, val_fraction, embargo, max_bars, context_length, window_stride,
      class_weights).
    frames: name -> OHLCV frame (`data.load_ohlcv` layout), oldest first within an asset;
      None loads `config.data.train`. A name's asset is `asset_name(name)`, so
      {'btc_a': ..., 'btc_b': ...} share one normaliser only if both map to 'btc'.

  Raises:
    ConfigError: a frame too short for one training and one validation window.
  """
  frames = load_frames(config) if frames is None else dict(frames)
  if not frames:
    raise config_lib.ConfigError('prepare_data got no frames; set config.data.train.')
  feature_set = features_lib.feature_set_of(config)
  kind = config.labels.kind
  params = label_params(config.labels)
  embargo = embargo_bars(config)
  context = config.train.context_length
  max_bars = config.data.max_bars
  assets: dict[str, int] = {}
  parts, train_rows, asset_ids, files = [], [], [], []
  train_ends, val_ends = [], []
  offset = 0
  for name, df in frames.items():
    if max_bars:
      df = df.iloc[-max_bars:]
    checks = plausibility.check_bars(
        df, source=name, expected_interval=plausibility.interval_of(constants.PERIODS_PER_YEAR),
        interval_setting='training (features and objectives of hourly bars)',
        max_bar_move=config.data.get('max_bar_move', plausibility.MAX_BAR_MOVE),
        refuse_large_moves=config.data.get('refuse_large_moves', False),
        setting_prefix='--config.data.', log=logging.info, warn=logging.warning)
    n = len(df)
    feats = features_lib.compute_features(df, feature_set)
    labels, valid = labels_lib.make_labels(df, kind, **params)
    warm = np.arange(n) >= features_lib.WARMUP_BARS
    valid = valid & warm
    # Per file, before concatenation: the last bar of one file has no next bar in the next.
    ahead = labels_lib.next_bar_returns(df['close'].to_numpy())
    split = windows_lib.chronological_split(n, val=config.data.val_fraction, embargo=embargo)
    ends = windows_lib.window_ends(n, context, stride=config.train.window_stride,
                                   start=split.train.start, end=split.train.stop, valid=valid)
    val = windows_lib.window_ends(n, context, start=max(0, split.val.start - context + 1),
                                  end=split.val.stop)
    train_ends.append(ends + offset)
    val_ends.append(val[valid[val]] + offset)
    rows = np.zeros(n, bool)
    rows[max(split.train.start, features_lib.WARMUP_BARS):split.train.stop] = True
    train_rows.append(rows)
    asset = asset_name(name)
    asset_ids.append(np.full(n, assets.setdefault(asset, len(assets)), np.int32))
    parts.append((feats, labels, valid, ahead.astype(np.float32), np.isfinite(ahead) & warm))
    # Bar ranges trained and validated on: a backtest on them is in-sample (members.py).
    files.append({'name': name, 'asset': asset, 'offset': offset, 'bars': n,
                  'first': str(df.index[0]), 'last': str(df.index[-1]),
                  'train_first': str(df.index[split.train.start]),
                  'train_last': str(df.index[split.train.stop - 1]),
                  'val_first': str(df.index[split.val.start]),
                  'val_last': str(df.index[split.val.stop - 1]),
                  'train_bars': split.sizes()['train'], 'val_bars': split.sizes()['val'],
                  'train_windows': len(ends), 'val_windows': int(valid[val].sum()),
                  'checks': checks})
    offset += n
  feats = np.concatenate([p[0] for p in parts])
  labels = np.concatenate([p[1] for p in parts])
  valid = np.concatenate([p[2] for p in parts])
  forward_returns = np.concatenate([p[3] for p in parts])
  trade_mask = np.concatenate([p[4] for p in parts])
  train_rows = np.concatenate(train_rows)
  asset_ids = np.concatenate(asset_ids)
  train_ends, val_ends = np.concatenate(train_ends), np.concatenate(val_ends)
  if not len(train_ends) or not len(val_ends):
    raise config_lib.ConfigError(
        f'{", ".join(frames)}: {len(train_ends)} training and {len(val_ends)} validation '
        'windows; use more bars (config.data.max_bars), a shorter context_length or a '
        'different data.val_fraction.')
  normalizers, normalized = {}, np.empty(feats.shape, np.float32)
  for asset, i in assets.items():
    rows = asset_ids == i
    normalizers[asset] = features_lib.fit_normalizer(feature_set, feats, train_rows & rows)
    normalized[rows] = normalizers[asset].apply(feats[rows])
  weights = labels_lib.class_weights(labels[train_rows], valid[train_rows],
                                     config.train.class_weights)
  summary = {'feature_set': feature_set, 'files': files, 'embargo': embargo,
             'train_labels': labels_lib.label_distribution(labels[train_rows],
                                                           valid[train_rows]),
             'val_labels': labels_lib.label_distribution(labels[val_ends],
                                                         np.ones(len(val_ends), bool))}
  return PreparedData(features=normalized, labels=labels, valid=valid, train_ends=train_ends,
                      val_ends=val_ends, normalizers=normalizers, asset_ids=asset_ids,
                      class_weights=weights, summary=summary, forward_returns=forward_returns,
                      trade_mask=trade_mask, feature_set=feature_set)


def epoch_order(seed: int, epoch: int, num_windows: int, num_samples: int) -> np.ndarray:
  """Window indices of one epoch: `num_samples` of them, a function of (seed, epoch) only.

  Successive permutations are concatenated when an epoch needs more than one pass.
  """
  passes = max(1, math.ceil(num_samples / num_windows))
  return np.concatenate([np.random.default_rng([seed, epoch, k]).permutation(num_windows)
                         for k in range(passes)])[:num_samples]


def gather_batch(prepared: PreparedData, ends: np.ndarray, context_length: int,
                 trading: bool = False) -> dict[str, np.ndarray]:
  """The training batch of windows `ends`: inputs float32 (B, T, 60) and

  - classification: targets int32 (B, T), mask bool (B, T) (label known);
  - `trading`: forward_return float32 (B, T), mask bool (B, T) (`trade_mask`), the batch of
    `objectives.make_loss_fn`.
  """
  if trading:
    return {'inputs': windows_lib.gather_windows(prepared.features, ends, context_length),
            'forward_return': windows_lib.gather_windows(prepared.forward_returns, ends,
                                                         context_length),
            'mask': windows_lib.gather_windows(prepared.trade_mask, ends, context_length)}
  return {'inputs': windows_lib.gather_windows(prepared.features, ends, context_length),
          'targets': windows_lib.gather_windows(prepared.labels, ends, context_length),
          'mask': windows_lib.gather_windows(prepared.valid, ends, context_length)}


def gather_eval_batch(prepared: PreparedData, ends: np.ndarray, context_length: int,
                      mask: np.ndarray) -> dict[str, np.ndarray]:
  """inputs (B, T, 60), targets int32 (B,) of the last bars, mask bool (B,) for padding."""
  return {'inputs': windows_lib.gather_windows(prepared.features, ends, context_length),
          'targets': prepared.labels[ends], 'mask': mask}


def train_batches(prepared: PreparedData, *, seed: int, batch_size: int, context_length: int,
                  steps_per_epoch: int, start_step: int, total_steps: int,
                  process_index: int = 0, process_count: int = 1, trading: bool = False
                  ) -> Iterator[tuple[int, int, dict[str, np.ndarray]]]:
  """(step, epoch, batch) for steps `start_step` .. `total_steps - 1`, both 0-based.

  The global batch of a step is a function of (seed, step) only (`epoch_order`), so a run
  resumed at any step replays the same batches; each process gets its contiguous slice of
  `batch_size // process_count` windows (`gather_batch` layout; `trading` as there).
  """
  local = batch_size // process_count
  order, order_epoch = None, -1
  for step in range(start_step, total_steps):
    epoch = step // steps_per_epoch
    if epoch != order_epoch:
      order = epoch_order(seed, epoch, len(prepared.train_ends), steps_per_epoch * batch_size)
      order_epoch = epoch
    global_idx = order[(step - epoch * steps_per_epoch) * batch_size:][:batch_size]
    local_idx = global_idx[process_index * local:][:local]
    yield step, epoch, gather_batch(prepared, prepared.train_ends[local_idx], context_length,
                                    trading)
