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
   calibrated on its validation bars (`baselines.calibrate_and_decide`, the steps of
   inference/decisions.py that FLAG-TRADER members take), and a decision
   policy is selected on the validation bars (`policy.select_policy` over
   `benchmark_folds.benchmark_policy_grid(config.policy)`), then run once on the test bars.
   Position models (trained on
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
  <workdir>/benchmark.md        the table (see `benchmark_report.write_report`)
  <workdir>/summary.json        the table's numbers
  <workdir>/ic_per_fold.png, equity_<asset>.png   (with matplotlib)
  <workdir>/trials/<model>/<asset>/fold_<k>/seed_<s>/test.npz (+ FLAG-TRADER's run)
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import time
from collections.abc import Callable, Sequence
from typing import Any

import ml_collections
import numpy as np

from himari_jax import config as config_lib
from himari_jax import json_types
from himari_jax.backtest import decider as decider_lib
from himari_jax.backtest import engine as backtest_lib
from himari_jax.backtest import policy as policy_lib
from himari_jax.data import binance, input_pipeline
from himari_jax.data import features as features_lib
from himari_jax.model import objectives as objectives_lib
from himari_jax.research import baselines as baselines_lib
from himari_jax.research import benchmark_folds as folds_lib
from himari_jax.research import benchmark_report, dispatch
from himari_jax.stats import metrics as metrics_lib
from himari_jax.stats import selection as selection_lib
from himari_jax.stats import signal_metrics as signal_lib
from himari_jax.stats import significance as significance_lib
from himari_jax.training import train as train_lib

RULE_MODELS = ('label_prior', 'buy_and_hold', 'momentum')


# ---------------------------------------------------------------------------- config


# ---------------------------------------------------------------------------- data


# ---------------------------------------------------------------------------- trials


def plan_trials(config: ml_collections.ConfigDict, assets: Sequence[folds_lib.Asset],
                models: Sequence[str]) -> list[folds_lib.Trial]:
  """Every trial in run order: asset, fold, model, seed (rule models: seed 0 only)."""
  trials = []
  for asset in assets:
    for fold in asset.folds:
      for model in models:
        seeds = [0] if model in RULE_MODELS else range(config.num_seeds)
        trials.extend(folds_lib.Trial(model, asset.name, fold.index, s) for s in seeds)
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
    raise config_lib.ConfigError('config.models: no model can run here' + ''.join(
        f'; {name}: {reason}' for name, reason in skipped.items()))
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


def _probs_for(config: ml_collections.ConfigDict, trial: folds_lib.Trial, data: folds_lib.FoldData,
               trial_dir: str) -> tuple[np.ndarray, str, str, bool]:
  """(S, 3) probabilities of a fitted model over the span, the training label hashes, and
  whether they skip the calibration: a position model's (`policy.probs_from_score` of its
  positions) or a FLAG-TRADER trained on net returns, not on the labels ('reinforce')."""
  train_hash = folds_lib.array_hash(data.labels[data.train_mask], np.flatnonzero(data.train_mask))
  val_hash = folds_lib.array_hash(data.labels[data.val_mask], np.flatnonzero(data.val_mask))
  n_file = len(data.file)
  if trial.model in config.flag_traders:
    os.makedirs(trial_dir, exist_ok=True)
    train_file = os.path.join(trial_dir, folds_lib.TRAIN_FILE)
    binance.write_canonical_csv(data.file, train_file)
    run_config = with_benchmark_costs(config, folds_lib.fold_prep_config(
        config, config.flag_traders[trial.model], train_file, trial.seed))
    train_lib.train_and_evaluate(run_config, trial_dir)
    # The labels and split FLAG-TRADER trained on, from its own pipeline run on the CSV.
    own = input_pipeline.prepare_data(run_config)
    rows = np.arange(n_file)
    own_train = np.zeros(len(data.labels), bool)
    own_train[:n_file] = own.valid & (rows >= features_lib.WARMUP_BARS) & \
        (rows < data.val.start - folds_lib.embargo_of(config))
    own_val = np.zeros(len(data.labels), bool)
    own_val[own.val_ends] = True
    own_labels = np.zeros(len(data.labels), np.int32)
    own_labels[:n_file] = own.labels
    train_hash = folds_lib.array_hash(own_labels[own_train], np.flatnonzero(own_train))
    val_hash = folds_lib.array_hash(own_labels[own_val], np.flatnonzero(own_val))
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


def run_trial(config: ml_collections.ConfigDict, trial: folds_lib.Trial, asset: folds_lib.Asset,
              data: folds_lib.FoldData, workdir: str) -> dict[str, Any]:
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
      threshold=bt.confidence_threshold, name=trial.model)
  n_val = val.stop - val.start
  calibrated = decided.probs[0]  # HOLD where unavailable
  val_probs, test_probs = calibrated[:n_val], calibrated[n_val:]
  params = backtest_lib.params_from_config(bt)
  grid = folds_lib.benchmark_policy_grid(config.policy, allow_short=bool(bt.allow_short),
                                         max_position_pct=float(bt.max_position_pct))
  span = data.span
  selection = policy_lib.select_policy(
      span.iloc[val], val_probs, params, grid=grid, objective=config.policy.objective,
      sigma_annual=data.sigma[val], periods_per_year=bt.periods_per_year)
  decider = decider_lib.Decider(params, selection.policy,
                                periods_per_year=float(bt.periods_per_year))
  result, _ = decider.trade(span.iloc[test], probs=test_probs, sigma=data.sigma[test])
  # The search is deflated where it ran: the winner on the validation bars (SPEC 11).
  winner, _ = decider.trade(span.iloc[val], probs=val_probs, sigma=data.sigma[val])
  winner_returns = np.asarray(metrics_lib.period_returns(winner.equity, bt.initial_capital))
  # What the best baseline is chosen by: the test bars stay unseen until the comparison.
  val_net_sharpe = (significance_lib.sharpe_ratio(winner_returns, bt.periods_per_year)
                    if np.std(winner_returns) > 0 else np.nan)
  deflated = None
  if np.std(winner_returns) > 0:
    deflated = json_types.to_json_types(selection_lib.selection_deflated_sharpe(
        winner_returns, selection.table['sharpe'].to_numpy(np.float64),
        periods_per_year=bt.periods_per_year), finite_only=True)
  attribution = metrics_lib.attribution(result, bt.initial_capital,
                                        periods_per_year=bt.periods_per_year,
                                        risk_free_rate=bt.risk_free_rate)
  equity = np.asarray(result.equity, np.float64)
  gross = np.asarray(metrics_lib.gross_equity(result), np.float64)
  capital = float(bt.initial_capital)
  net_returns = metrics_lib.period_returns(equity, capital)
  gross_returns = metrics_lib.period_returns(gross, capital)
  test_available = decided.available[n_val:]
  scored = data.test_mask[test] & test_available
  signal = signal_lib.signal_metrics(
      np.where(test_available[:, None], test_probs, np.nan), data.test_labels[test],
      scored, np.where(scored, data.forward[test], 0.0), data.prior,
      actions=decided.actions[n_val:])
  os.makedirs(trial_dir, exist_ok=True)
  partial = os.path.join(trial_dir, 'test.partial.npz')
  np.savez(partial, net_returns=net_returns, gross_returns=gross_returns,
           score=test_probs[:, 2] - test_probs[:, 0], available=test_available,
           position=np.asarray(result.position, np.float64),
           forward=np.where(scored, data.forward[test], np.nan),
           time=span.index[test].asi8)
  os.replace(partial, os.path.join(trial_dir, folds_lib.TEST_ARRAYS))
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
                     'test': folds_lib.array_hash(data.test_labels[data.test_mask],
                                        np.flatnonzero(data.test_mask))},
      'costs': {'commission': bt.commission, 'slippage': bt.slippage},
      'calibration': json_types.to_json_types(decided.calibrations[0]),
      'policy': {'index': selection.index, 'settings': json_types.to_json_types(
          policy_lib.policy_to_dict(selection.policy)),
          'val_objective': float(selection.table['objective'].iloc[selection.index]),
          'val_net_sharpe': val_net_sharpe,
          'num_trials': selection.num_trials, 'selection': deflated},
      'signal': signal,
      'backtest': {**attribution, 'max_drawdown': float(dd.min()),
                   'test_bars': int(len(equity))},
      'fit_seconds': fit_seconds, 'wall_seconds': time.time() - tick,
  }


def read_results(workdir: str) -> list[dict[str, Any]]:
  """The finished trials' lines of `results.jsonl` (none when it does not exist); a torn last
  line (a trial killed while writing it) is left out, so that trial runs again."""
  path = os.path.join(workdir, folds_lib.RESULTS)
  return json_types.read_jsonl(path) if os.path.exists(path) else []


def _append_result(workdir: str, record: dict[str, Any]) -> None:
  json_types.append_jsonl(os.path.join(workdir, folds_lib.RESULTS), record)


# What this process has loaded: {'key': config hash, 'assets': {name: folds_lib.Asset},
# 'fold': ((asset, fold), folds_lib.FoldData)}; one fold's arrays at a time.
_LOADED: dict[str, Any] = {}


def _config_key(config: ml_collections.ConfigDict) -> str:
  return hashlib.sha256(config.to_json_best_effort(sort_keys=True).encode()).hexdigest()


def _remember_assets(config: ml_collections.ConfigDict, assets: Sequence[folds_lib.Asset]) -> None:
  _LOADED.clear()
  _LOADED.update(key=_config_key(config), assets={a.name: a for a in assets})


@dataclasses.dataclass(frozen=True)
class TrialRunner:
  """One trial from its `folds_lib.Trial`, here or in a Ray worker (it pickles as its config and
  workdir): loads the assets once per process and one fold's arrays at a time."""

  config: ml_collections.ConfigDict
  workdir: str

  def __call__(self, trial: folds_lib.Trial) -> dict[str, Any]:
    if _LOADED.get('key') != _config_key(self.config):
      _remember_assets(self.config, folds_lib.load_assets(self.config))
    asset = _LOADED['assets'][trial.asset]
    key = (trial.asset, trial.fold)
    if _LOADED.get('fold', (None,))[0] != key:
      _LOADED.pop('fold', None)
      _LOADED['fold'] = (key, folds_lib.fold_data(self.config, asset, asset.folds[trial.fold]))
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
    The summary (`benchmark_report.summarize_benchmark`) with `paths`, `skipped` and `run_seconds`.

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
  assets = folds_lib.load_assets(config)
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
          f'{workdir}/{folds_lib.RESULTS}: trial {key} used fold {record["fold_bounds"]}, not '
          f'{asset.folds[record["fold"]].to_dict()}: another config made it; use another '
          '--workdir')
    if record['model'] in models and record.get('settings') != hashes[record['model']]:
      raise config_lib.ConfigError(
          f'{workdir}/{folds_lib.RESULTS}: trial {key} was run with other labels, costs, '
          f'policies or {record["model"]} settings than config; use another --workdir')
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
    # folds_lib.Trial seconds still to run, scaled by how many ran side by side so far (1 here).
    mean_all = np.mean([s for v in seconds.values() for s in v])
    parallel = sum(trial_seconds_this_run) / max(time.time() - start, 1e-9)
    eta = sum(np.mean(seconds.get(t.model, [mean_all])) for t in remaining.values()) / max(
        parallel, 1.0)
    log(f'[{len(done)}/{len(trials)}] {trial.model} {trial.asset} fold {trial.fold} seed '
        f'{trial.seed}: IC {record["signal"]["ic"]:+.3f}, bal.acc '
        f'{record["signal"]["balanced_accuracy"]:.3f}, net Sharpe '
        f'{record["backtest"]["net_sharpe"]:+.2f} | {record["wall_seconds"]:.1f} s | '
        f'elapsed {folds_lib.format_seconds(time.time() - start)}, '
        f'ETA {folds_lib.format_seconds(eta)}')

  try:
    dispatch.run_trials(TrialRunner(config, workdir), todo, ray_address,
                        uses_gpu=lambda t: t.model in config.flag_traders, on_result=finished)
  finally:
    _LOADED.clear()
  records = [done[t.key] for t in trials]
  summary = benchmark_report.summarize_benchmark(config, records, assets, workdir)
  summary['skipped'] = skipped
  summary['run_seconds'] = time.time() - start
  paths = {'results': os.path.join(workdir, folds_lib.RESULTS)}
  if config.plots:
    paths.update(benchmark_report.write_plots(summary, records, workdir, log=log))
  paths['report'] = benchmark_report.write_report(config, summary, workdir, plots=paths)
  with open(os.path.join(workdir, folds_lib.SUMMARY), 'w') as f:
    json.dump(json_types.to_json_types({k: v for k, v in summary.items() if k != 'series'}), f,
              indent=1)
  paths['summary'] = os.path.join(workdir, folds_lib.SUMMARY)
  summary['paths'] = paths
  log(f'wrote {paths["report"]} ({folds_lib.format_seconds(summary["run_seconds"])} this run)')
  return summary


# ---------------------------------------------------------------------------- summary


# ---------------------------------------------------------------------------- outputs


