"""The benchmark's assets and folds: which bars each trial trains, validates and is tested on,
the file names of a benchmark run, and the policy grid every model's selection tries.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os

import ml_collections
import numpy as np
import pandas as pd

from himari_jax import config as config_lib
from himari_jax.backtest import engine as backtest_lib
from himari_jax.backtest import policy as policy_lib
from himari_jax.constants import BUY, HOLD
from himari_jax.data import features as features_lib
from himari_jax.data import input_pipeline
from himari_jax.data import labels as labels_lib
from himari_jax.data import ohlcv as data_lib
from himari_jax.research import walkforward
from himari_jax.stats import metrics as metrics_lib
from himari_jax.stats import signal_metrics as signal_lib

RESULTS = 'results.jsonl'
REPORT = 'benchmark.md'
SUMMARY = 'summary.json'
TEST_ARRAYS = 'test.npz'
TRAIN_FILE = 'train.csv'


def benchmark_policy_grid(policy_config: ml_collections.ConfigDict, *, allow_short: bool = False,
                          max_position_pct: float = 0.10) -> policy_lib.PolicyParams:
  """The policies every model's selection tries: margin policies plus seed policies."""
  grids = []
  for entry in policy_config.entries:
    grids.append(policy_lib.make_policy_grid(
        dict(entry=entry, band=policy_config.band, allow_short=allow_short,
             max_position_pct=max_position_pct, max_leverage=max_position_pct),
        exit=sorted({round(entry - gap, 4) for gap in policy_config.exit_gaps}),
        min_hold=tuple(policy_config.min_holds), sizing=tuple(policy_config.sizings)))
  seeds = [policy_lib.seed_policy(t, max_position_pct=max_position_pct, allow_short=allow_short)
           for t in policy_config.seed_thresholds]
  return policy_lib.stack_policies([*grids, *seeds])


# The market rows of every table: always long from each test window's first bar, at the
# benchmark's position cap and with the whole equity.
MARKET_MODELS = ('buy_and_hold_cap', 'buy_and_hold_full')


@dataclasses.dataclass(frozen=True)
class Asset:
  """One asset's whole series and its folds."""

  name: str
  spec: str
  df: pd.DataFrame
  folds: list[walkforward.Fold]


def asset_spec(item: str) -> tuple[str, str]:
  """(asset name, dataset spec) of one `config.assets` item.

  'btc' -> every bundled BTC era; a bundled dataset name or a CSV path -> itself; several
  files of one asset joined with '+' -> those, oldest first.
  """
  parts = [p.strip() for p in item.split('+') if p.strip()]
  if not parts:
    raise config_lib.ConfigError(f'config.assets has an empty item in {item!r}')
  if len(parts) == 1 and '/' not in parts[0] and not parts[0].endswith(('.csv', '.gz')) and \
      parts[0] not in data_lib.builtin_dataset_names():
    return parts[0], ','.join(walkforward.asset_datasets(parts[0]))
  for part in parts:
    if part not in data_lib.builtin_dataset_names() and not os.path.exists(part):
      raise data_lib.DataError(f'config.assets: {part!r} is neither a bundled dataset nor '
                               'an existing CSV file')
  return input_pipeline.asset_name(parts[0]), ','.join(parts)


def fold_prep_config(config: ml_collections.ConfigDict,
                     base: ml_collections.ConfigDict | None = None,
                     train_file: str = '', seed: int = 0) -> ml_collections.ConfigDict:
  """A training config holding the benchmark's data, labels and split (and `base`'s model)."""
  out = (base or config_lib.default_config()).copy_and_resolve_references()
  out.data.train = train_file
  out.data.max_bars = None
  out.data.val_fraction = config.data.val_fraction
  out.data.embargo = embargo_of(config)
  out.labels = config.labels.copy_and_resolve_references()
  out.train.init_from = ''
  out.seed = seed
  return out


def embargo_of(config: ml_collections.ConfigDict) -> int:
  """`config.data.embargo`, or the label horizon when None."""
  if config.data.embargo is not None and config.data.embargo >= 0:
    return int(config.data.embargo)
  return labels_lib.label_horizon(config.labels.kind,
                                  **input_pipeline.label_params(config.labels))


def load_assets(config: ml_collections.ConfigDict) -> list[Asset]:
  """Every asset's series and its walk-forward folds."""
  assets = []
  embargo = embargo_of(config)
  f = config.folds
  for item in config_lib.split_list(config.assets):
    name, spec = asset_spec(item)
    df = walkforward.load_series(spec)
    try:
      folds = walkforward.make_folds(
          len(df), train_bars=f.train_bars, test_bars=f.test_bars,
          step_bars=f.step_bars or None, mode=f.mode, embargo=embargo,
          val_fraction=config.data.val_fraction,
          first_test=walkforward.first_bar_at(df.index, f.test_start) if f.test_start else None,
          end=walkforward.first_bar_at(df.index, f.test_end) if f.test_end else None)
    except ValueError as e:
      raise config_lib.ConfigError(f'asset {name} ({spec}): {e}') from e
    assets.append(Asset(name=name, spec=spec, df=df, folds=folds))
  if len({a.name for a in assets}) != len(assets):
    raise config_lib.ConfigError(f'config.assets={config.assets!r} names an asset twice')
  return assets


@dataclasses.dataclass(frozen=True)
class FoldData:
  """What every model of one (asset, fold) is given; rows are the span data.start..test.stop.

  raw: float32 (S, 60) unnormalised features of the span (causal, so its first rows are the
  training file's); features: (S, 60) normalised with the fold's normaliser; close: (S,);
  labels, train_mask, val_mask: (S,) from the training file's pipeline (False past it);
  test_labels, test_mask: (S,) labels of the test rows (from bars up to h after them);
  forward: (S,) forward h-bar returns; sigma: (S,) annualised volatility (bars <= t);
  val, test: row slices; prior: (3,) training label frequencies; file: the training bars
  (the fold's training file); span: the bars of the rows (file, embargo, test window).
  """

  raw: np.ndarray
  features: np.ndarray
  close: np.ndarray
  labels: np.ndarray
  train_mask: np.ndarray
  val_mask: np.ndarray
  test_labels: np.ndarray
  test_mask: np.ndarray
  forward: np.ndarray
  sigma: np.ndarray
  val: slice
  test: slice
  prior: np.ndarray
  file: pd.DataFrame
  span: pd.DataFrame


def fold_data(config: ml_collections.ConfigDict, asset: Asset,
              fold: walkforward.Fold) -> FoldData:
  """Features, labels, masks and prices of one fold, shared by every model."""
  df = asset.df
  file = df.iloc[fold.data]
  prepared = input_pipeline.prepare_data(fold_prep_config(config), {asset.name: file})
  horizon = labels_lib.label_horizon(config.labels.kind,
                                     **input_pipeline.label_params(config.labels))
  span = df.iloc[fold.data.start:fold.test.stop]
  # Labels and forward returns of the test bars read up to h bars past the window.
  ahead = df.iloc[fold.data.start:min(len(df), fold.test.stop + horizon)]
  raw = features_lib.compute_features(span).astype(np.float32)
  n_file, n = len(file), len(span)
  rows = np.arange(n)
  val = slice(fold.val.start - fold.data.start, fold.val.stop - fold.data.start)
  test = slice(fold.test.start - fold.data.start, n)
  labels = np.zeros(n, np.int32)
  labels[:n_file] = prepared.labels
  valid = np.zeros(n, bool)
  valid[:n_file] = prepared.valid
  train_mask = valid & (rows >= fold.train.start - fold.data.start) & \
      (rows < fold.train.stop - fold.data.start)
  val_mask = valid & (rows >= val.start) & (rows < val.stop)
  ahead_labels, ahead_valid = labels_lib.make_labels(
      ahead, config.labels.kind, **input_pipeline.label_params(config.labels))
  test_mask = np.zeros(n, bool)
  test_mask[test] = ahead_valid[test]
  test_labels = np.where(test_mask, ahead_labels[:n], 0).astype(np.int32)
  forward = signal_lib.forward_returns(ahead['close'].to_numpy(), horizon)[:n]
  close = span['close'].to_numpy(np.float64)
  return FoldData(
      raw=raw, features=prepared.normalizer.apply(raw).astype(np.float32), close=close,
      labels=labels, train_mask=train_mask, val_mask=val_mask, test_labels=test_labels,
      test_mask=test_mask, forward=forward,
      sigma=policy_lib.annualized_volatility(close,
                                             periods_per_year=config.backtest.periods_per_year),
      val=val, test=test, prior=signal_lib.label_prior(labels, train_mask), file=file,
      span=span)


def buy_and_hold_returns(config: ml_collections.ConfigDict, asset: Asset) -> dict[str, dict]:
  """Per-bar net and gross returns of always holding the asset over its test windows.

  Each test window starts flat, buys on its first bar with the benchmark's costs and fill
  timing and holds to its end: `buy_and_hold_cap` at `config.backtest.max_position_pct` of
  equity (the most any model may hold), `buy_and_hold_full` with the whole equity
  (`engine.buy_and_hold`). Windows are stitched in time order, as the models' test returns.

  Returns:
    {name in MARKET_MODELS: {'net': (T,), 'gross': (T,)}} over the T test bars of every fold.
  """
  params = backtest_lib.params_from_config(config.backtest)
  capped = params.replace(sizing=np.int32(backtest_lib.SIZINGS.index('fixed')),
                          confidence_threshold=np.float64(0.0), allow_short=np.int32(0))
  capital = float(config.backtest.initial_capital)
  out = {name: {'net': [], 'gross': []} for name in MARKET_MODELS}
  for fold in asset.folds:
    bars = asset.df.iloc[fold.test]
    prices = backtest_lib.Prices(bars['open'].to_numpy(np.float64),
                                 bars['close'].to_numpy(np.float64))
    actions = np.full(len(bars), HOLD, np.int32)
    actions[0] = BUY
    results = {'buy_and_hold_cap': backtest_lib.run_backtest(prices, actions,
                                                             np.ones(len(bars)), capped),
               'buy_and_hold_full': backtest_lib.buy_and_hold(prices, params)}
    for name, result in results.items():
      out[name]['net'].append(metrics_lib.period_returns(
          np.asarray(result.equity, np.float64), capital))
      out[name]['gross'].append(metrics_lib.period_returns(
          np.asarray(metrics_lib.gross_equity(result), np.float64), capital))
  return {name: {kind: np.concatenate(parts) for kind, parts in series.items()}
          for name, series in out.items()}


def array_hash(*arrays: np.ndarray) -> str:
  """A short content hash of arrays (labels and masks): equal data, equal hash."""
  h = hashlib.sha256()
  for a in arrays:
    a = np.ascontiguousarray(a)
    h.update(str(a.dtype).encode() + str(a.shape).encode() + a.tobytes())
  return h.hexdigest()[:16]


@dataclasses.dataclass(frozen=True)
class Trial:
  """One (model, asset, fold, seed) cell of the benchmark; rule models use seed 0 only."""

  model: str
  asset: str
  fold: int
  seed: int

  @property
  def key(self) -> tuple[str, str, int, int]:
    return (self.model, self.asset, self.fold, self.seed)

  def directory(self, workdir: str) -> str:
    return os.path.join(workdir, 'trials', self.model, self.asset, f'fold_{self.fold:03d}',
                        f'seed_{self.seed}')


def format_seconds(seconds: float) -> str:
  seconds = int(round(seconds))
  return f'{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}'
