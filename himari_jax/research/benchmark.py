"""Models compared on equal terms (SPEC 10): models x assets x walk-forward folds x seeds.

Every model sees, per asset and fold, the same bars, features, labels, split and costs:

1. `walkforward.make_folds` cuts each asset's series into folds (training window with its
   validation tail, an embargo of the label horizon, then a test window).
2. The fold's training file goes through `input_pipeline.prepare_data` once: features,
   labels (the file alone, so no training label reads a test bar), the train / validation
   split and the fold's normaliser. FLAG-TRADER is trained by `train.train_and_evaluate` on
   the same file written as a CSV in its trial folder, so it gets the same split and labels
   (its label hash is computed from its own pipeline run and recorded).
3. Every model is fitted on the training rows, scores the validation and test bars, is
   calibrated on its validation bars (`baselines.calibrate_and_decide`), and a decision
   policy is selected on the validation bars (`policy.select_policy` over
   `policy_grid(config.policy)`), then run once on the test bars. Position models (trained on
   the net-of-cost Sharpe ratio: `mlp_sharpe`, `flag_trader_sharpe`) give probabilities whose
   margin `p_buy - p_sell` is their position, skip the calibration and go through the same
   policy selection, so they are decided from their position as the others are from their
   margin. They train with the benchmark's costs and, when it is long-only, long-only.
4. Per trial (model, asset, fold, seed): SPEC 9 signal metrics on the test bars, gross and
   net backtest attribution, the policy trials. Rule models (label prior, buy-and-hold,
   momentum) are deterministic and run once per fold.

Resumable: a trial is done when its line is in `results.jsonl` (written last, with its
`test.npz` of per-bar returns before it); a rerun skips it. A FLAG-TRADER trial that stopped
mid-training resumes from its checkpoints.

Trials are independent: with `ray_address` the unfinished ones run as Ray tasks
(`dispatch.run_trials`; one GPU per FLAG-TRADER trial on a cluster with GPUs, one CPU per
baseline trial), each worker loading its asset and fold itself; their lines reach
`results.jsonl` as they finish, so resumption is the same as in-process.

Run folder:

  <workdir>/results.jsonl       one line per finished trial
  <workdir>/benchmark.md        the table (see `write_report`)
  <workdir>/summary.json        the table's numbers
  <workdir>/ic_per_fold.png, equity_<asset>.png   (with matplotlib)
  <workdir>/trials/<model>/<asset>/fold_<k>/seed_<s>/test.npz (+ FLAG-TRADER's run)
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import time
from collections.abc import Callable, Sequence
from typing import Any

import ml_collections
import numpy as np
import pandas as pd

from himari_jax import config as config_lib
from himari_jax import json_types
from himari_jax.backtest import engine as backtest_lib
from himari_jax.backtest import policy as policy_lib
from himari_jax.data import binance, input_pipeline
from himari_jax.data import features as features_lib
from himari_jax.data import labels as labels_lib
from himari_jax.data import ohlcv as data_lib
from himari_jax.model import objectives as objectives_lib
from himari_jax.research import baselines as baselines_lib
from himari_jax.research import dispatch, walkforward
from himari_jax.stats import metrics as metrics_lib
from himari_jax.stats import signal_metrics as signal_lib
from himari_jax.stats import significance as significance_lib
from himari_jax.training import train as train_lib

RESULTS = 'results.jsonl'
REPORT = 'benchmark.md'
SUMMARY = 'summary.json'
TEST_ARRAYS = 'test.npz'
TRAIN_FILE = 'train.csv'
RULE_MODELS = ('label_prior', 'buy_and_hold', 'momentum')
_HOLD_PROBS = np.array([0.0, 1.0, 0.0], np.float32)


# ---------------------------------------------------------------------------- config


def policy_grid(policy_config: ml_collections.ConfigDict, *, allow_short: bool = False,
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


# ---------------------------------------------------------------------------- data


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
          first_test=walkforward._bar_at(df.index, f.test_start) if f.test_start else None,
          end=walkforward._bar_at(df.index, f.test_end) if f.test_end else None)
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


def array_hash(*arrays: np.ndarray) -> str:
  """A short content hash of arrays (labels and masks): equal data, equal hash."""
  h = hashlib.sha256()
  for a in arrays:
    a = np.ascontiguousarray(a)
    h.update(str(a.dtype).encode() + str(a.shape).encode() + a.tobytes())
  return h.hexdigest()[:16]


# ---------------------------------------------------------------------------- trials


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


def plan_trials(config: ml_collections.ConfigDict, assets: Sequence[Asset],
                models: Sequence[str]) -> list[Trial]:
  """Every trial in run order: asset, fold, model, seed (rule models: seed 0 only)."""
  trials = []
  for asset in assets:
    for fold in asset.folds:
      for model in models:
        seeds = [0] if model in RULE_MODELS else range(config.num_seeds)
        trials.extend(Trial(model, asset.name, fold.index, s) for s in seeds)
  return trials


def model_kinds(config: ml_collections.ConfigDict) -> tuple[list[str], dict[str, str]]:
  """(models to run, {skipped model: why}) of `config.models`.

  Raises:
    ConfigError: a name that is neither a baseline nor a `config.flag_traders` entry.
  """
  available = baselines_lib.available_baselines()
  run, skipped = [], {}
  for name in config_lib.split_list(config.models):
    if name in config.flag_traders:
      run.append(name)
    elif name in available and name != 'flag_trader':
      if available[name] is None:
        run.append(name)
      else:
        skipped[name] = available[name]
    else:
      valid = sorted(set(available) - {'flag_trader'} | set(config.flag_traders))
      raise config_lib.ConfigError(f'config.models: unknown model {name!r}; valid: '
                                   f'{", ".join(valid)}')
  if len(set(run)) != len(run):
    raise config_lib.ConfigError(f'config.models={config.models!r} names a model twice')
  if not run:
    raise config_lib.ConfigError('config.models: no model can run here')
  return run, skipped


def with_benchmark_costs(config: ml_collections.ConfigDict,
                         run_config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """A FLAG-TRADER training config, long-only when the benchmark's backtests are if it
  trains on a trading objective.

  Raises:
    ConfigError: its trading objective would charge other costs than the benchmark's.
  """
  objective = objectives_lib.TradingObjective.from_config(run_config.train)
  if objective is None:
    return run_config
  bt = config.backtest
  if (objective.commission, objective.slippage) != (bt.commission, bt.slippage):
    raise config_lib.ConfigError(
        f'config.backtest costs (commission {bt.commission}, slippage {bt.slippage}) differ '
        f'from those FLAG-TRADER trains on ({objective.commission}, {objective.slippage}); '
        'leave its trading-objective models out of config.models')
  run_config.train.long_only = not bool(bt.allow_short)
  return run_config


def position_settings(config: ml_collections.ConfigDict,
                      settings: dict[str, Any]) -> dict[str, Any]:
  """A position baseline's settings with the benchmark's commission and slippage, and
  long-only when its backtests are (fields set in `config.baselines` win)."""
  bt = config.backtest
  return {'commission': float(bt.commission), 'slippage': float(bt.slippage),
          'long_only': not bool(bt.allow_short), **settings}


def _probs_for(config: ml_collections.ConfigDict, trial: Trial, data: FoldData,
               trial_dir: str) -> tuple[np.ndarray, str, str, bool]:
  """(S, 3) probabilities of a fitted model over the span, the training label hashes, and
  whether they skip the calibration: a position model's (`policy.probs_from_score` of its
  positions) or a FLAG-TRADER trained on net returns, not on the labels ('reinforce')."""
  train_hash = array_hash(data.labels[data.train_mask], np.flatnonzero(data.train_mask))
  val_hash = array_hash(data.labels[data.val_mask], np.flatnonzero(data.val_mask))
  n_file = len(data.file)
  if trial.model in config.flag_traders:
    os.makedirs(trial_dir, exist_ok=True)
    train_file = os.path.join(trial_dir, TRAIN_FILE)
    binance.write_canonical_csv(data.file, train_file)
    run_config = with_benchmark_costs(config, fold_prep_config(
        config, config.flag_traders[trial.model], train_file, trial.seed))
    train_lib.train_and_evaluate(run_config, trial_dir)
    # The labels and split FLAG-TRADER trained on, from its own pipeline run on the CSV.
    own = input_pipeline.prepare_data(run_config)
    rows = np.arange(n_file)
    own_train = np.zeros(len(data.labels), bool)
    own_train[:n_file] = own.valid & (rows >= features_lib.WARMUP_BARS) & \
        (rows < data.val.start - embargo_of(config))
    own_val = np.zeros(len(data.labels), bool)
    own_val[own.val_ends] = True
    own_labels = np.zeros(len(data.labels), np.int32)
    own_labels[:n_file] = own.labels
    train_hash = array_hash(own_labels[own_train], np.flatnonzero(own_train))
    val_hash = array_hash(own_labels[own_val], np.flatnonzero(own_val))
    model = baselines_lib.make_baseline('flag_trader', path=trial_dir)
    model.fit(data.features[:n_file], data.labels[:n_file], data.train_mask[:n_file])
    probs = model.predict(model.normalizer.apply(data.raw).astype(np.float32))
    return probs, train_hash, val_hash, (model.outputs_position
                                         or model.trading_objective is not None)
  settings = dict(config.baselines.get(trial.model, {}) or {})
  if 'seed' in baselines_lib.BASELINES[trial.model].defaults:
    settings['seed'] = trial.seed
  if baselines_lib.BASELINES[trial.model].outputs_position:
    settings = position_settings(config, settings)
  model = baselines_lib.make_baseline(trial.model, **settings)
  model.fit(data.features[:n_file], data.labels[:n_file], data.train_mask[:n_file],
            close=data.close[:n_file])
  return (model.predict(data.features, close=data.close), train_hash, val_hash,
          model.outputs_position)


def settings_hash(config: ml_collections.ConfigDict, model: str) -> str:
  """A hash of everything a trial of `model` depends on besides its fold and seed: labels,
  split, costs, calibration, policy grid and the model's own settings."""
  own = (config.flag_traders[model].to_dict() if model in config.flag_traders
         else dict(config.baselines.get(model, {}) or {}))
  parts = {'labels': config.labels.to_dict(), 'data': config.data.to_dict(),
           'backtest': {k: v for k, v in config.backtest.to_dict().items()
                        if k not in ('significance', 'sweep')},
           'policy': config.policy.to_dict(), 'model': own}
  text = json.dumps(json_types.to_json_types(parts), sort_keys=True, default=str)
  return hashlib.sha256(text.encode()).hexdigest()[:16]


def run_trial(config: ml_collections.ConfigDict, trial: Trial, asset: Asset,
              data: FoldData, workdir: str) -> dict[str, Any]:
  """Fits, calibrates, selects a policy on validation, tests; returns the result line."""
  tick = time.time()
  trial_dir = trial.directory(workdir)
  probs, train_hash, val_hash, uncalibrated = _probs_for(config, trial, data, trial_dir)
  fit_seconds = time.time() - tick
  bt = config.backtest
  val, test = data.val, data.test
  # A position model's margin is its position: calibrating it to label rates would move it.
  decided = baselines_lib.calibrate_and_decide(
      probs[val], data.labels[val], data.val_mask[val],
      np.concatenate([probs[val], probs[test]]),
      mode='skip' if uncalibrated else bt.calibration.mode,
      bias=bt.calibration.bias, temperature=bt.calibration.temperature,
      threshold=bt.confidence_threshold)
  n_val = val.stop - val.start
  calibrated = np.where(decided.available[:, None], decided.probs, _HOLD_PROBS)
  val_probs, test_probs = calibrated[:n_val], calibrated[n_val:]
  params = backtest_lib.params_from_config(bt)
  grid = policy_grid(config.policy, allow_short=bool(bt.allow_short),
                     max_position_pct=float(bt.max_position_pct))
  span = data.span
  selection = policy_lib.select_policy(
      span.iloc[val], val_probs, params, grid=grid, objective=config.policy.objective,
      sigma_annual=data.sigma[val], periods_per_year=bt.periods_per_year)
  result = policy_lib.run_policy(span.iloc[test], test_probs, selection.policy, params,
                                 sigma_annual=data.sigma[test],
                                 periods_per_year=bt.periods_per_year)
  attribution = metrics_lib.attribution(result, bt.initial_capital,
                                        periods_per_year=bt.periods_per_year,
                                        risk_free_rate=bt.risk_free_rate)
  equity = np.asarray(result.equity, np.float64)
  gross = np.asarray(metrics_lib.gross_equity(result), np.float64)
  capital = float(bt.initial_capital)
  net_returns = np.diff(np.concatenate([[capital], equity])) / np.concatenate(
      [[capital], equity[:-1]])
  gross_returns = np.diff(np.concatenate([[capital], gross])) / np.concatenate(
      [[capital], gross[:-1]])
  test_available = decided.available[n_val:]
  scored = data.test_mask[test] & test_available
  signal = signal_lib.signal_metrics(
      np.where(test_available[:, None], decided.probs[n_val:], np.nan), data.test_labels[test],
      scored, np.where(scored, data.forward[test], 0.0), data.prior,
      actions=decided.actions[n_val:])
  trial_sharpes = selection.trial_sharpes
  finite = trial_sharpes[np.isfinite(trial_sharpes)]
  os.makedirs(trial_dir, exist_ok=True)
  partial = os.path.join(trial_dir, 'test.partial.npz')
  np.savez(partial, net_returns=net_returns, gross_returns=gross_returns,
           score=test_probs[:, 2] - test_probs[:, 0], available=test_available,
           position=np.asarray(result.position, np.float64),
           time=span.index[test].asi8)
  os.replace(partial, os.path.join(trial_dir, TEST_ARRAYS))
  fold = asset.folds[trial.fold]
  dd = equity / np.maximum.accumulate(np.concatenate([[capital], equity]))[1:] - 1.0
  return {
      'model': trial.model, 'asset': trial.asset, 'fold': trial.fold, 'seed': trial.seed,
      'settings': settings_hash(config, trial.model), 'fold_bounds': fold.to_dict(),
      'dates': {'train': [str(asset.df.index[fold.train.start]),
                          str(asset.df.index[fold.val.stop - 1])],
                'test': [str(asset.df.index[fold.test.start]),
                         str(asset.df.index[fold.test.stop - 1])]},
      'label_hash': {'train': train_hash, 'val': val_hash,
                     'test': array_hash(data.test_labels[data.test_mask],
                                        np.flatnonzero(data.test_mask))},
      'costs': {'commission': bt.commission, 'slippage': bt.slippage},
      'calibration': json_types.to_json_types(decided.summary),
      'policy': {'index': selection.index, 'settings': json_types.to_json_types(
          policy_lib.policy_to_dict(selection.policy)),
          'val_objective': float(selection.table['objective'].iloc[selection.index]),
          'num_trials': selection.num_trials, 'finite_trials': int(finite.size),
          'trial_sharpe_sum': float(finite.sum()),
          'trial_sharpe_sumsq': float(np.square(finite).sum())},
      'signal': signal,
      'backtest': {**attribution, 'max_drawdown': float(dd.min()),
                   'test_bars': int(len(equity))},
      'fit_seconds': fit_seconds, 'wall_seconds': time.time() - tick,
  }


def read_results(workdir: str) -> list[dict[str, Any]]:
  """The finished trials' lines of `results.jsonl` (none when it does not exist)."""
  path = os.path.join(workdir, RESULTS)
  if not os.path.exists(path):
    return []
  out = []
  with open(path) as f:
    for number, line in enumerate(f, 1):
      if not line.strip():
        continue
      try:
        out.append(json.loads(line))
      except json.JSONDecodeError as e:
        raise ValueError(f'{path}: line {number} is not JSON ({e}); remove it to rerun that '
                         'trial') from e
  return out


def _append_result(workdir: str, record: dict[str, Any]) -> None:
  with open(os.path.join(workdir, RESULTS), 'a') as f:
    f.write(json.dumps(record) + '\n')
    f.flush()
    os.fsync(f.fileno())


def _format_seconds(seconds: float) -> str:
  seconds = int(round(seconds))
  return f'{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}'


# What this process has loaded: {'key': config hash, 'assets': {name: Asset},
# 'fold': ((asset, fold), FoldData)}; one fold's arrays at a time.
_LOADED: dict[str, Any] = {}


def _config_key(config: ml_collections.ConfigDict) -> str:
  return hashlib.sha256(config.to_json_best_effort(sort_keys=True).encode()).hexdigest()


def _remember_assets(config: ml_collections.ConfigDict, assets: Sequence[Asset]) -> None:
  _LOADED.clear()
  _LOADED.update(key=_config_key(config), assets={a.name: a for a in assets})


@dataclasses.dataclass(frozen=True)
class TrialRunner:
  """One trial from its `Trial`, here or in a Ray worker (it pickles as its config and
  workdir): loads the assets once per process and one fold's arrays at a time."""

  config: ml_collections.ConfigDict
  workdir: str

  def __call__(self, trial: Trial) -> dict[str, Any]:
    if _LOADED.get('key') != _config_key(self.config):
      _remember_assets(self.config, load_assets(self.config))
    asset = _LOADED['assets'][trial.asset]
    key = (trial.asset, trial.fold)
    if _LOADED.get('fold', (None,))[0] != key:
      _LOADED.pop('fold', None)
      _LOADED['fold'] = (key, fold_data(self.config, asset, asset.folds[trial.fold]))
    return run_trial(self.config, trial, asset, _LOADED['fold'][1], self.workdir)


def run_benchmark(config: ml_collections.ConfigDict, workdir: str, *,
                  ray_address: str | None = None,
                  log: Callable[[str], None] = print) -> dict[str, Any]:
  """Runs every unfinished trial, then writes `benchmark.md`, `summary.json` and plots.

  Args:
    config: a `benchmark_config` (configs/benchmark.py).
    workdir: the run folder; finished trials in its `results.jsonl` are skipped. With
      `ray_address`, on storage every Ray node sees under the same path.
    ray_address: None runs the trials here, one after another; otherwise the unfinished
      trials run as Ray tasks on that cluster (`dispatch.run_trials`: one GPU per
      FLAG-TRADER trial when the cluster has GPUs, one CPU per baseline trial), with the
      same results and the same `results.jsonl`.
    log: where progress lines go (one per trial, with its wall time and the run's ETA).

  Returns:
    The summary (`summarize`) with `paths`, `skipped` and `run_seconds`.

  Raises:
    ConfigError: unusable settings; DataError: an asset that cannot be loaded;
    ConfigError also for a workdir whose finished trials used other folds or settings;
    ValueError: a results.jsonl line that is not JSON.
  """
  start = time.time()
  workdir = os.path.abspath(workdir)
  os.makedirs(workdir, exist_ok=True)
  backtest_lib.params_from_config(config.backtest)  # costs checked before any work
  models, skipped = model_kinds(config)
  for name, why in skipped.items():
    log(f'{name} skipped: {why}')
  assets = load_assets(config)
  _remember_assets(config, assets)
  by_name = {a.name: a for a in assets}
  for asset in assets:
    log(f'{asset.name}: {asset.spec}, {len(asset.df)} bars; {len(asset.folds)} folds testing '
        f'{asset.df.index[asset.folds[0].test.start]:%Y-%m-%d} .. '
        f'{asset.df.index[asset.folds[-1].test.stop - 1]:%Y-%m-%d}')
  trials = plan_trials(config, assets, models)
  hashes = {model: settings_hash(config, model) for model in models}
  done = {}
  for record in read_results(workdir):
    key = (record['model'], record['asset'], record['fold'], record['seed'])
    asset = by_name.get(record['asset'])
    if asset is None or record['fold'] >= len(asset.folds):
      continue
    if record['fold_bounds'] != asset.folds[record['fold']].to_dict():
      raise config_lib.ConfigError(
          f'{workdir}/{RESULTS}: trial {key} used fold {record["fold_bounds"]}, not '
          f'{asset.folds[record["fold"]].to_dict()}: another config made it; use another '
          '--workdir')
    if record['model'] in models and record.get('settings') != hashes[record['model']]:
      raise config_lib.ConfigError(
          f'{workdir}/{RESULTS}: trial {key} was run with other labels, costs, policies or '
          f'{record["model"]} settings than config; use another --workdir')
    done[key] = record
  todo = [t for t in trials if t.key not in done]
  where = f' on Ray at {ray_address}' if ray_address is not None else ''
  log(f'{len(trials)} trials ({len(models)} models x {len(assets)} assets x folds x seeds); '
      f'{len(trials) - len(todo)} done, {len(todo)} to run{where}')
  seconds: dict[str, list[float]] = {}
  for record in done.values():
    seconds.setdefault(record['model'], []).append(record['wall_seconds'])
  remaining = {t.key: t for t in todo}
  trial_seconds_this_run = []

  def finished(_: int, record: dict[str, Any]) -> None:
    trial = remaining.pop((record['model'], record['asset'], record['fold'], record['seed']))
    _append_result(workdir, record)
    done[trial.key] = record
    seconds.setdefault(trial.model, []).append(record['wall_seconds'])
    trial_seconds_this_run.append(record['wall_seconds'])
    # Trial seconds still to run, scaled by how many ran side by side so far (1 here).
    mean_all = np.mean([s for v in seconds.values() for s in v])
    parallel = sum(trial_seconds_this_run) / max(time.time() - start, 1e-9)
    eta = sum(np.mean(seconds.get(t.model, [mean_all])) for t in remaining.values()) / max(
        parallel, 1.0)
    log(f'[{len(done)}/{len(trials)}] {trial.model} {trial.asset} fold {trial.fold} seed '
        f'{trial.seed}: IC {record["signal"]["ic"]:+.3f}, bal.acc '
        f'{record["signal"]["balanced_accuracy"]:.3f}, net Sharpe '
        f'{record["backtest"]["net_sharpe"]:+.2f} | {record["wall_seconds"]:.1f} s | '
        f'elapsed {_format_seconds(time.time() - start)}, ETA {_format_seconds(eta)}')

  try:
    dispatch.run_trials(TrialRunner(config, workdir), todo, ray_address,
                        uses_gpu=lambda t: t.model in config.flag_traders, on_result=finished)
  finally:
    _LOADED.clear()
  records = [done[t.key] for t in trials]
  summary = summarize(config, records, assets, workdir)
  summary['skipped'] = skipped
  summary['run_seconds'] = time.time() - start
  paths = {'results': os.path.join(workdir, RESULTS)}
  if config.plots:
    paths.update(write_plots(summary, records, workdir, log=log))
  paths['report'] = write_report(config, summary, workdir, plots=paths)
  with open(os.path.join(workdir, SUMMARY), 'w') as f:
    json.dump(json_types.to_json_types({k: v for k, v in summary.items() if k != 'series'}), f,
              indent=1)
  paths['summary'] = os.path.join(workdir, SUMMARY)
  summary['paths'] = paths
  log(f'wrote {paths["report"]} ({_format_seconds(summary["run_seconds"])} this run)')
  return summary


# ---------------------------------------------------------------------------- summary


def _stitched(records: Sequence[dict], workdir: str) -> dict[str, np.ndarray]:
  """Net and gross test returns of one (model, asset), folds in time order, seed-averaged.

  Averaging the seeds' per-bar returns is an equal-weight portfolio of the seeds' runs, the
  fair reading of a model whose result depends on its initialisation.
  """
  by_fold: dict[int, list[dict]] = {}
  for r in records:
    by_fold.setdefault(r['fold'], []).append(r)
  net, gross, score = [], [], []
  for k in sorted(by_fold):
    arrays = []
    for r in by_fold[k]:
      path = os.path.join(Trial(r['model'], r['asset'], r['fold'], r['seed']).directory(
          workdir), TEST_ARRAYS)
      with np.load(path) as saved:
        arrays.append({name: saved[name] for name in ('net_returns', 'gross_returns', 'score')})
    net.append(np.mean([a['net_returns'] for a in arrays], axis=0))
    gross.append(np.mean([a['gross_returns'] for a in arrays], axis=0))
    score.append(np.mean([a['score'] for a in arrays], axis=0))
  return {'net': np.concatenate(net), 'gross': np.concatenate(gross),
          'score': np.concatenate(score)}


def _max_drawdown(returns: np.ndarray) -> float:
  equity = np.cumprod(1.0 + returns)
  return float(np.min(equity / np.maximum.accumulate(np.concatenate([[1.0], equity]))[1:] - 1))


def _pooled_trials(records: Sequence[dict[str, Any]],
                   num_observations: int) -> tuple[int, float]:
  """(policies tried, variance of their per-period Sharpe ratios at `num_observations` bars).

  The policies' Sharpe ratios are measured on the validation bars; the spread of a Sharpe
  estimate shrinks as 1 / sqrt(bars), so their variance is rescaled by validation bars /
  `num_observations` to be the spread expected over the tested bars (without it, a short
  validation window would set the deflation bar too high).
  """
  num_trials = sum(r['policy']['num_trials'] for r in records)
  count = sum(r['policy']['finite_trials'] for r in records)
  total = sum(r['policy']['trial_sharpe_sum'] for r in records)
  total_sq = sum(r['policy']['trial_sharpe_sumsq'] for r in records)
  variance = (total_sq - total ** 2 / count) / (count - 1) if count > 1 else math.nan
  val_bars = np.mean([r['fold_bounds']['val'][1] - r['fold_bounds']['val'][0] for r in records])
  return num_trials, variance * val_bars / num_observations


def summarize(config: ml_collections.ConfigDict, records: Sequence[dict[str, Any]],
              assets: Sequence[Asset], workdir: str) -> dict[str, Any]:
  """Per (model, asset): signal metrics across folds, stitched gross / net Sharpe with CIs,
  turnover, drawdown, deflated Sharpe over all trials, paired bootstrap vs the best baseline.
  """
  sig = config.significance
  ppy = float(config.backtest.periods_per_year)
  # Every policy tried in every trial is a trial of the benchmark (SPEC 8 and 10).
  num_trials = sum(r['policy']['num_trials'] for r in records)
  models = list(dict.fromkeys(r['model'] for r in records))
  rows, series = {}, {}
  for asset in assets:
    for model in models:
      mine = [r for r in records if r['model'] == model and r['asset'] == asset.name]
      if not mine:
        continue
      folds = {}
      for r in mine:
        folds.setdefault(r['fold'], []).append(r['signal'])
      per_fold = [{m: float(np.nanmean([s[m] for s in folds[k]])) if any(
          np.isfinite(s[m]) for s in folds[k]) else math.nan for m in signal_lib.METRICS}
          for k in sorted(folds)]
      stitched = _stitched(mine, workdir)
      series[(model, asset.name)] = stitched
      row = {'model': model, 'asset': asset.name, 'trials': len(mine),
             'seeds': len({r['seed'] for r in mine}), 'folds': len(folds),
             'signal': signal_lib.aggregate_folds(per_fold), 'ic_per_fold':
                 [f['ic'] for f in per_fold],
             'turnover_per_year': float(np.mean([r['backtest']['turnover_per_year']
                                                 for r in mine])),
             'num_trades': float(np.mean([r['backtest']['num_trades'] for r in mine])),
             'max_drawdown': _max_drawdown(stitched['net']),
             'wall_seconds': float(sum(r['wall_seconds'] for r in mine))}
      for kind in ('gross', 'net'):
        if np.std(stitched[kind]) > 0:
          ci = significance_lib.block_bootstrap_ci(
              stitched[kind], num_resamples=sig.num_resamples, seed=sig.seed,
              periods_per_year=ppy)
          row[f'{kind}_sharpe'] = {'estimate': ci['estimate'], 'low': ci['low'],
                                   'high': ci['high']}
        else:
          row[f'{kind}_sharpe'] = {'estimate': math.nan, 'low': math.nan, 'high': math.nan}
      row['net_total_return'] = float(np.prod(1.0 + stitched['net']) - 1.0)
      moments = significance_lib.return_moments(stitched['net']) if np.std(
          stitched['net']) > 0 else None
      # Deflated over all trials of the benchmark, and over this row's own policy trials
      # only (what a reader who picked this model in advance would have to count).
      n_obs = len(stitched['net'])
      for key, trials in (('deflated_sharpe', records), ('deflated_sharpe_own', mine)):
        n_trials, var = _pooled_trials(trials, n_obs)
        row[key] = math.nan if moments is None or not np.isfinite(var) else \
            significance_lib.deflated_sharpe_ratio(
                moments['sharpe'], moments['num_observations'], moments['skewness'],
                moments['kurtosis'], num_trials=max(n_trials, 1), trial_sharpe_variance=var)
        row[f'{key}_bar'] = significance_lib.expected_max_sharpe(
            max(n_trials, 1), var) * math.sqrt(ppy) if np.isfinite(var) else math.nan
      row['own_trials'] = sum(r['policy']['num_trials'] for r in mine)
      rows[(model, asset.name)] = row
  best = {}
  for asset in assets:
    candidates = [(rows[(m, asset.name)]['net_sharpe']['estimate'], m) for m in models
                  if (m, asset.name) in rows and m not in config.flag_traders
                  and np.isfinite(rows[(m, asset.name)]['net_sharpe']['estimate'])]
    if not candidates:
      continue
    best[asset.name] = max(candidates)[1]
    reference = series[(best[asset.name], asset.name)]['net']
    for model in models:
      if (model, asset.name) not in rows or model == best[asset.name]:
        continue
      mine = series[(model, asset.name)]['net']
      if np.std(mine) > 0:
        paired = significance_lib.paired_block_bootstrap(
            mine, reference, num_resamples=sig.num_resamples, seed=sig.seed,
            periods_per_year=ppy)
        rows[(model, asset.name)]['vs_best'] = {
            k: paired[k] for k in ('estimate', 'low', 'high', 'p_value')}
  market = {}
  for asset in assets:
    close = np.concatenate([asset.df['close'].to_numpy()[f.test.start - 1:f.test.stop]
                            for f in asset.folds[:1]] +
                           [asset.df['close'].to_numpy()[f.test] for f in asset.folds[1:]])
    returns = np.diff(close) / close[:-1]
    market[asset.name] = {'sharpe': significance_lib.sharpe_ratio(returns, ppy),
                          'total_return': float(close[-1] / close[0] - 1)}
  wall = {}
  for r in records:
    w = wall.setdefault(r['model'], {'trials': 0, 'seconds': 0.0})
    w['trials'] += 1
    w['seconds'] += r['wall_seconds']
  return {'rows': list(rows.values()), 'best_baseline': best, 'num_trials': num_trials,
          'market': market, 'wall': wall,
          'models': models, 'assets': {a.name: {'spec': a.spec, 'folds': [
              f.to_dict() for f in a.folds], 'test': [
              str(a.df.index[a.folds[0].test.start]),
              str(a.df.index[a.folds[-1].test.stop - 1])]} for a in assets},
          'series': series}


# ---------------------------------------------------------------------------- outputs


def _fmt(value: float, spec: str = '+.3f') -> str:
  return '-' if value is None or not np.isfinite(value) else format(value, spec)


def _ci(entry: dict[str, float]) -> str:
  return (f'{_fmt(entry["estimate"], "+.2f")} ({_fmt(entry["low"], "+.2f")} .. '
          f'{_fmt(entry["high"], "+.2f")})')


def write_report(config: ml_collections.ConfigDict, summary: dict[str, Any], workdir: str, *,
                 plots: dict[str, str] | None = None) -> str:
  """`benchmark.md`: setup, one table per asset, skipped models, wall times, plots."""
  bt = config.backtest
  f = config.folds
  lines = [f'# Model benchmark (`{config.variant}`)', '',
           f'Models: {", ".join(summary["models"])}. Seeds: {config.num_seeds} per learned '
           f'model (rule models once per fold). Labels: {config.labels.kind} '
           f'{dict(input_pipeline.label_params(config.labels))}. Folds: {f.mode}, '
           f'{f.train_bars} training bars (last {config.data.val_fraction:.0%} validation), '
           f'embargo {embargo_of(config)} bars, {f.test_bars}-bar test windows. Costs: '
           f'commission {bt.commission:.2%}, slippage {bt.slippage:.2%} per side; position cap '
           f'{bt.max_position_pct:.0%} of equity, '
           f'{"long/short" if bt.allow_short else "long-only"}.', '']
  lines += ['Every model: fitted on the fold\'s training rows, calibrated on its validation '
            f'rows ({bt.calibration.mode}; position models, whose margin `p_buy - p_sell` is '
            'their position, and models trained on net returns are not), decision policy '
            'selected on validation out of '
            f'{np.size(policy_grid(config.policy).entry)} policies, then tested once. '
            f'Trials in the deflated Sharpe ratio: {summary["num_trials"]:,} (every policy '
            'tried in every model x asset x fold x seed).', '']
  for name, why in (summary.get('skipped') or {}).items():
    lines += [f'**{name} skipped**: {why}', '']
  header = ('| model | IC (t, ICIR) | rank IC (t, ICIR) | log-loss skill | Brier skill | '
            'bal. acc | macro F1 | gross Sharpe (95% CI) | net Sharpe (95% CI) | '
            'turnover / yr | max DD | DSR (all / own trials) | '
            'net vs best baseline (95% CI, p) |')
  rule = '|' + '---|' * 13
  for asset, info in summary['assets'].items():
    best = summary['best_baseline'].get(asset)
    market = summary['market'][asset]
    lines += [f'## {asset}', '',
              f'`{info["spec"]}`; test bars {info["test"][0][:10]} .. {info["test"][1][:10]} '
              f'({len(info["folds"])} folds). Market (fully invested buy-and-hold) over the '
              f'test bars: Sharpe {market["sharpe"]:+.2f}, return '
              f'{market["total_return"]:+.1%}. Best baseline by net Sharpe: {best or "-"}.',
              '', header, rule]
    for row in summary['rows']:
      if row['asset'] != asset:
        continue
      s = row['signal']
      vs = row.get('vs_best')
      versus = 'best baseline' if row['model'] == best else '-' if vs is None else (
          f'{_fmt(vs["estimate"], "+.2f")} ({_fmt(vs["low"], "+.2f")} .. '
          f'{_fmt(vs["high"], "+.2f")}), p {vs["p_value"]:.2f}')
      lines.append(
          f'| {row["model"]} | {_fmt(s["ic"]["mean"])} ({_fmt(s["ic"]["t_stat"], "+.1f")}, '
          f'{_fmt(s["ic"]["icir"], "+.2f")}) | {_fmt(s["rank_ic"]["mean"])} '
          f'({_fmt(s["rank_ic"]["t_stat"], "+.1f")}, {_fmt(s["rank_ic"]["icir"], "+.2f")}) | '
          f'{_fmt(s["log_loss_skill"]["mean"])} | {_fmt(s["brier_skill"]["mean"])} | '
          f'{_fmt(s["balanced_accuracy"]["mean"], ".3f")} | '
          f'{_fmt(s["macro_f1"]["mean"], ".3f")} | {_ci(row["gross_sharpe"])} | '
          f'{_ci(row["net_sharpe"])} | {_fmt(row["turnover_per_year"], ".1f")} | '
          f'{_fmt(row["max_drawdown"], ".2%")} | {_fmt(row["deflated_sharpe"], ".3f")} / '
          f'{_fmt(row["deflated_sharpe_own"], ".3f")} | '
          f'{versus} |')
    lines.append('')
  lines += ['IC and rank IC: Pearson / Spearman correlation of `p_buy - p_sell` with the '
            'forward return over the label horizon, mean over folds of the seed-mean, '
            'with its t-statistic and ICIR (mean / std across folds). Skill scores: '
            '`1 - loss / loss of the training label prior`. Sharpe: annualised, of the test '
            'windows stitched in time order, per-bar returns averaged over seeds, with a '
            'stationary block-bootstrap CI. DSR: probability that the true Sharpe ratio '
            'beats the best of all benchmark trials under no skill (all: every policy of '
            'every trial; own: the row\'s own policy trials; the trials\' Sharpe variance '
            'comes from the validation sweeps, rescaled to the tested bars). Last column: paired '
            'block bootstrap of the net Sharpe difference to the best baseline (one-sided '
            'p of "better"). A `-` Sharpe: the selected policy never traded on the test '
            'bars (a constant prediction, such as the label prior or buy-and-hold, calibrated '
            'to the validation label rates has HOLD as its argmax and a margin '
            '`p_buy - p_sell` below every entry threshold); the market line above is the '
            'fully invested buy-and-hold.', '', '## Wall time', '',
            '| model | trials | total | per trial |', '|---|---:|---:|---:|']
  for model, w in summary['wall'].items():
    lines.append(f'| {model} | {w["trials"]} | {_format_seconds(w["seconds"])} | '
                 f'{w["seconds"] / max(w["trials"], 1):.1f} s |')
  total = sum(w['seconds'] for w in summary['wall'].values())
  lines += ['', f'Sum of trial wall times {_format_seconds(total)}; this invocation '
            f'{_format_seconds(summary.get("run_seconds", 0.0))} (trials finished earlier '
            'are read back, not rerun).', '']
  images = [p for k, p in (plots or {}).items() if k.startswith('plot')]
  if images:
    lines += ['## Plots', ''] + [f'![{os.path.basename(p)}]({os.path.basename(p)})'
                                 for p in images] + ['']
  elif config.plots:
    lines += ['Plots: not drawn (matplotlib is not installed).', '']
  path = os.path.join(workdir, REPORT)
  with open(path, 'w') as fh:
    fh.write('\n'.join(lines))
  return path


def write_plots(summary: dict[str, Any], records: Sequence[dict], workdir: str, *,
                log: Callable[[str], None] = print) -> dict[str, str]:
  """IC per fold (one panel per asset) and seed-mean net equity curves per model and asset."""
  del records
  try:
    import matplotlib

    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
  except ImportError:
    log('plots skipped: matplotlib is not installed')
    return {}
  paths = {}
  assets = list(summary['assets'])
  fig, axes = plt.subplots(1, len(assets), figsize=(6 * len(assets), 4), squeeze=False)
  for ax, asset in zip(axes[0], assets, strict=True):
    for row in summary['rows']:
      if row['asset'] == asset:
        ax.plot(range(len(row['ic_per_fold'])), row['ic_per_fold'], marker='o',
                label=row['model'])
    ax.axhline(0.0, color='grey', lw=0.8)
    ax.set(title=f'{asset}: IC per fold', xlabel='fold', ylabel='IC')
    ax.legend(fontsize=7)
  fig.tight_layout()
  paths['plot_ic'] = os.path.join(workdir, 'ic_per_fold.png')
  fig.savefig(paths['plot_ic'], dpi=100)
  plt.close(fig)
  for asset in assets:
    fig, ax = plt.subplots(figsize=(9, 4))
    for (model, name), s in summary['series'].items():
      if name == asset:
        ax.plot(np.cumprod(1.0 + s['net']), label=model, lw=1)
    ax.set(title=f'{asset}: net equity of the stitched test windows (seed mean)',
           xlabel='test bar', ylabel='equity / initial')
    ax.legend(fontsize=7)
    fig.tight_layout()
    paths[f'plot_equity_{asset}'] = os.path.join(workdir, f'equity_{asset}.png')
    fig.savefig(paths[f'plot_equity_{asset}'], dpi=100)
    plt.close(fig)
  return paths
