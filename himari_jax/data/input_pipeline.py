"""Dataset preparation shared by training, evaluation, walk-forward and baselines.

One pipeline, as the Flax examples keep `input_pipeline.py` beside `train.py`:

  frames -> features of `config.data.feature_set` (SPEC 3) -> labels (SPEC 4) ->
  chronological split with embargo (train | embargo | validation per frame) -> one
  normaliser per asset, fitted on that asset's training rows -> end bars of the training
  and validation windows.

Entry points:
- `prepare_data(config)` loads `config.data.train` (builtin names or CSV paths, or a
  universe `universe:PATH[@SYM1,SYM2]`: every coin of a folder or glob, one asset each);
  `prepare_data(config, frames)` takes in-memory OHLCV frames instead (benchmarks, placebo
  runs on synthetic data), keyed by name.
- `epoch_order` (every window equally likely) or `balanced_epoch_order` (every asset equally
  often) and `gather_batch` turn window ends into training batches on the host, so no window
  array is ever materialised.

Pooled training on a universe (SPEC 12): each coin's rows are its own bars
(`universe.Panel.frame`, gaps not filled: the panel marks them), its features are its own
('himari') or its own plus the panel's causal market context ('himari_market',
`market_features.panel_features`), and it gets its own normaliser. The split is one calendar
cut for every coin (`config.data.split='time'`), so no coin trains on hours another
validates on; batches draw every coin equally often (`config.train.sampling='assets'`).

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
from himari_jax.data import market_features, plausibility
from himari_jax.data import ohlcv as data_lib
from himari_jax.data import universe as universe_lib
from himari_jax.data import windows as windows_lib

_TIMEFRAME = re.compile(r'[_-]\d+[mhdw](?:[_-]|$)')
UNIVERSE_PREFIX = 'universe:'
SPLITS = ('rows', 'time')
SAMPLINGS = ('windows', 'assets')


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


def is_universe(spec: str | None) -> bool:
  """Whether a `config.data.train` value names a universe (`universe:PATH[@SYM1,SYM2]`)."""
  return isinstance(spec, str) and spec.strip().startswith(UNIVERSE_PREFIX)


def parse_universe(spec: str) -> tuple[str, list[str] | None]:
  """'universe:data/universe@BTC,ETH' -> ('data/universe', ['BTC', 'ETH']); without '@...',
  every coin (None).

  Raises:
    ConfigError: not a universe spec, or one without a path.
  """
  if not is_universe(spec):
    raise config_lib.ConfigError(f'{spec!r} is not a universe; write universe:PATH or '
                                 'universe:PATH@SYM1,SYM2')
  path, _, symbols = spec.strip()[len(UNIVERSE_PREFIX):].partition('@')
  if not path.strip():
    raise config_lib.ConfigError(f'{spec!r} names no folder or glob after {UNIVERSE_PREFIX!r}')
  chosen = [s.upper() for s in config_lib.split_list(symbols)]
  return path.strip(), chosen or None


def split_of(config: ml_collections.ConfigDict) -> str:
  """`config.data.split`: None is 'time' for a universe, 'rows' otherwise (`SPLITS`)."""
  split = config.data.get('split')
  if split is None:
    return 'time' if is_universe(config.data.train) else 'rows'
  if split not in SPLITS:
    raise config_lib.ConfigError(f'config.data.split={split!r}: use one of {", ".join(SPLITS)}')
  return split


def sampling_of(config: ml_collections.ConfigDict) -> str:
  """`config.train.sampling`: None is 'assets' for a universe, 'windows' otherwise."""
  sampling = config.train.get('sampling')
  if sampling is None:
    return 'assets' if is_universe(config.data.get('train')) else 'windows'
  if sampling not in SAMPLINGS:
    raise config_lib.ConfigError(f'config.train.sampling={sampling!r}: use one of '
                                 f'{", ".join(SAMPLINGS)}')
  return sampling


def universe_frames(panel: universe_lib.Panel, feature_set: str
                    ) -> tuple[dict[str, pd.DataFrame], dict[str, np.ndarray] | None]:
  """A panel's coins as `prepare_data` inputs: (source path -> the coin's own bars, and for
  'himari_market' source path -> its raw (rows, 60) features from the whole panel, else None).

  Keys are the source paths so `asset_name` names each coin's normaliser ('btc_usdt').
  """
  frames = {source: panel.frame(symbol)
            for symbol, source in zip(panel.symbols, panel.sources, strict=True)}
  if features_lib.get_feature_set(feature_set).name != 'himari_market':
    return frames, None
  state = market_features.panel_features(panel)
  return frames, {source: state[symbol]
                  for symbol, source in zip(panel.symbols, panel.sources, strict=True)}


def load_frames(config: ml_collections.ConfigDict) -> dict[str, pd.DataFrame]:
  """`config.data.train` loaded: name or path -> OHLCV frame, in the order given (a
  universe's coins in its panel order)."""
  if is_universe(config.data.train):
    return load_training_data(config)[0]
  items = config_lib.split_list(config.data.train)
  frames = data_lib.load_datasets(items, fill_gaps=config.data.fill_gaps)
  if len(set(items)) != len(items):
    raise config_lib.ConfigError(f'config.data.train={config.data.train!r} lists a dataset '
                                 'twice.')
  return dict(zip(items, frames, strict=True))


def load_training_data(config: ml_collections.ConfigDict
                       ) -> tuple[dict[str, pd.DataFrame], dict[str, np.ndarray] | None]:
  """`config.data.train` as (frames, precomputed raw features or None): a universe's panel
  features for 'himari_market' (`universe_frames`); None wherever `compute_features` applies.
  """
  if not is_universe(config.data.train):
    return load_frames(config), None
  path, symbols = parse_universe(config.data.train)
  panel = universe_lib.load_universe(path, symbols=symbols)
  return universe_frames(panel, features_lib.feature_set_of(config))


def time_split_start(frames: Mapping[str, pd.DataFrame], val_fraction: float) -> pd.Timestamp:
  """The first validation bar time of a 'time' split: the last `val_fraction` of the span from
  the earliest first bar to the latest last bar of `frames`, on the hour."""
  first = min(df.index[0] for df in frames.values() if len(df))
  last = max(df.index[-1] for df in frames.values() if len(df))
  return (first + (last - first) * (1.0 - val_fraction)).ceil('h')


def prepare_data(config: ml_collections.ConfigDict,
                 frames: Mapping[str, pd.DataFrame] | None = None,
                 features: Mapping[str, np.ndarray] | None = None) -> PreparedData:
  """Features, labels, splits, per-asset normalisers and window ends of the training data.

  Args:
    config: a training config (`config.data`, `config.labels`, `config.train` are read:
      feature_set, val_fraction, embargo, max_bars, context_length, window_stride,
      class_weights).
    frames: name -> OHLCV frame (`data.load_ohlcv` layout), oldest first within an asset;
      None loads `config.data.train`. A name's asset is `asset_name(name)`, so
      {'btc_a': ..., 'btc_b': ...} share one normaliser only if both map to 'btc'.
    features: name -> raw float32 (rows, 60) features of that frame, computed elsewhere
      ('himari_market' needs the whole panel: `universe_frames`); None computes them with
      `compute_features`. Without `frames`, a universe's come with it.

  The split (`split_of`): 'rows' holds out the last `val_fraction` of each frame's bars;
  'time' holds out every bar from `time_split_start` of all frames on (one calendar cut).

  Raises:
    ConfigError: a frame too short for one training and one validation window.
  """
  if frames is None:
    frames, features = load_training_data(config)
  frames = dict(frames)
  if not frames:
    raise config_lib.ConfigError('prepare_data got no frames; set config.data.train.')
  feature_set = features_lib.feature_set_of(config)
  max_bars = config.data.max_bars
  if features is not None:
    for name, df in frames.items():
      if len(features[name]) != len(df):
        raise ValueError(f'{name}: {len(features[name])} feature rows for {len(df)} bars')
    features = {name: features[name][-max_bars:] if max_bars else features[name]
                for name in frames}
  if max_bars:
    frames = {name: df.iloc[-max_bars:] for name, df in frames.items()}
  split_mode = split_of(config)
  val_start = (time_split_start(frames, config.data.val_fraction) if split_mode == 'time'
               else None)
  kind = config.labels.kind
  params = label_params(config.labels)
  embargo = embargo_bars(config)
  context = config.train.context_length
  assets: dict[str, int] = {}
  parts, train_rows, asset_ids, files = [], [], [], []
  train_ends, val_ends = [], []
  offset = 0
  for name, df in frames.items():
    checks = plausibility.check_bars(
        df, source=name, expected_interval=plausibility.interval_of(constants.PERIODS_PER_YEAR),
        interval_setting='training (features and objectives of hourly bars)',
        max_bar_move=config.data.get('max_bar_move', plausibility.MAX_BAR_MOVE),
        refuse_large_moves=config.data.get('refuse_large_moves', False),
        setting_prefix='--config.data.', log=logging.info, warn=logging.warning)
    n = len(df)
    feats = (features_lib.compute_features(df, feature_set) if features is None
             else np.asarray(features[name], np.float32).copy())
    labels, valid = labels_lib.make_labels(df, kind, **params)
    warm = np.arange(n) >= features_lib.WARMUP_BARS
    valid = valid & warm
    # Per file, before concatenation: the last bar of one file has no next bar in the next.
    ahead = labels_lib.next_bar_returns(df['close'].to_numpy())
    split = (windows_lib.chronological_split(df.index, val=val_start, embargo=embargo)
             if val_start is not None else
             windows_lib.chronological_split(n, val=config.data.val_fraction, embargo=embargo))
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
    if not (train_rows & rows).any():
      raise config_lib.ConfigError(f'{asset} has no training bars before the validation start; '
                                   'leave it out of config.data.train or use more bars')
    normalizers[asset] = features_lib.fit_normalizer(feature_set, feats, train_rows & rows)
    normalized[rows] = normalizers[asset].apply(feats[rows])
  weights = labels_lib.class_weights(labels[train_rows], valid[train_rows],
                                     config.train.class_weights)
  summary = {'feature_set': feature_set, 'files': files, 'embargo': embargo,
             'split': split_mode, 'val_start': None if val_start is None else str(val_start),
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


def balanced_epoch_order(seed: int, epoch: int, window_assets: np.ndarray,
                         num_samples: int) -> np.ndarray:
  """Window indices of one epoch with every asset drawn equally often, a function of
  (seed, epoch, window_assets) only.

  Samples come in rounds of one window per asset (the assets in a random order each round);
  each asset's windows are taken from successive permutations of its own, so an asset with
  few windows repeats them and one with many is subsampled.

  Args:
    window_assets: int (W,) asset id of each training window.
    num_samples: indices wanted.

  Returns:
    int64 (num_samples,) indices into the W windows.
  """
  window_assets = np.asarray(window_assets)
  assets = np.unique(window_assets)
  rng = np.random.default_rng([seed, epoch, len(assets)])
  rounds = math.ceil(num_samples / len(assets))
  slots = np.concatenate([rng.permutation(assets) for _ in range(rounds)])[:num_samples]
  order = np.empty(num_samples, np.int64)
  for k, asset in enumerate(assets):
    own = np.flatnonzero(window_assets == asset)
    where = np.flatnonzero(slots == asset)
    passes = max(1, math.ceil(len(where) / len(own)))
    picks = np.concatenate([np.random.default_rng([seed, epoch, k, p]).permutation(len(own))
                            for p in range(passes)])[:len(where)]
    order[where] = own[picks]
  return order


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
                  process_index: int = 0, process_count: int = 1, trading: bool = False,
                  sampling: str = 'windows'
                  ) -> Iterator[tuple[int, int, dict[str, np.ndarray]]]:
  """(step, epoch, batch) for steps `start_step` .. `total_steps - 1`, both 0-based.

  The global batch of a step is a function of (seed, step) only (`epoch_order`, or
  `balanced_epoch_order` for `sampling='assets'`), so a run resumed at any step replays the
  same batches; each process gets its contiguous slice of `batch_size // process_count`
  windows (`gather_batch` layout; `trading` as there).
  """
  if sampling not in SAMPLINGS:
    raise ValueError(f'sampling={sampling!r}: use one of {", ".join(SAMPLINGS)}')
  local = batch_size // process_count
  window_assets = prepared.asset_ids[prepared.train_ends]
  order, order_epoch = None, -1
  for step in range(start_step, total_steps):
    epoch = step // steps_per_epoch
    if epoch != order_epoch:
      num_samples = steps_per_epoch * batch_size
      order = (balanced_epoch_order(seed, epoch, window_assets, num_samples)
               if sampling == 'assets' else
               epoch_order(seed, epoch, len(prepared.train_ends), num_samples))
      order_epoch = epoch
    global_idx = order[(step - epoch * steps_per_epoch) * batch_size:][:batch_size]
    local_idx = global_idx[process_index * local:][:local]
    yield step, epoch, gather_batch(prepared, prepared.train_ends[local_idx], context_length,
                                    trading)
