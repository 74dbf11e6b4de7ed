"""From trained models to decisions: load members, predict, calibrate, combine.

The steps every evaluation entry point shares (launch/backtest.py, ensemble_backtest.py,
diagnose.py, quickstart.py, walk-forward): each member is loaded (an Orbax training run or a
PyTorch `.pt`), scored on every bar of a dataset, calibrated on the validation split of its
own training data, and the members' probability vectors are combined into one action and
confidence per bar.
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
from collections.abc import Sequence

import ml_collections
import numpy as np
import pandas as pd

from himari_jax import calibration as calibration_lib
from himari_jax import checkpoint as checkpoint_lib
from himari_jax import config as config_lib
from himari_jax import ensemble as ensemble_lib
from himari_jax import input_pipeline
from himari_jax import labels as labels_lib
from himari_jax import model as model_lib
from himari_jax import predict as predict_lib

# Probability vector given to an ensemble for bars a member cannot score yet (HOLD).
_HOLD_PROBS = np.array([0.0, 1.0, 0.0], np.float32)


def load_member(path: str, which: str = 'best') -> checkpoint_lib.LoadedModel:
  """A training run (workdir or its checkpoints/) or a PyTorch `.pt` file, ready to predict.

  A `.pt` file carries no normalisation statistics and no context length: it is scored at
  T = 1 (as the seed was trained) with a normaliser fitted on the training split of the
  default config's training data (`config.default_config()`), which is what the seed
  trained on.
  """
  if not os.fspath(path).endswith('.pt'):
    return checkpoint_lib.load_model(path, which)
  from himari_jax import convert  # torch is an optional extra

  model_fields, params = convert.load_torch_checkpoint(path)
  config = config_lib.default_config()
  config.model.update(dict(model_fields))
  config.model.causal = False  # the original model has no mask
  config.train.context_length = 1
  prepared = input_pipeline.prepare_data(config)
  return checkpoint_lib.LoadedModel(
      config=config, model_config=model_lib.ModelConfig.from_config(config.model),
      params=params, normalizer=prepared.normalizer, meta={'source': os.fspath(path)}, step=0,
      path=os.fspath(path), normalizers=prepared.normalizers)


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
  """The member's `Calibration` and a JSON-able summary (bias, temperature, ECE before/after)."""
  mode = calibration_config.mode
  if mode not in calibration_lib.MODES:
    raise ValueError(f'calibration.mode={mode!r}; valid: {", ".join(calibration_lib.MODES)}')
  if mode in ('none', 'fixed') and not calibration_config.temperature:
    bias = calibration_config.bias if mode == 'fixed' else (0.0, 0.0, 0.0)
    cal = calibration_lib.Calibration(bias=np.asarray(bias, np.float32), temperature=1.0)
    return cal, {'mode': mode, **cal.to_dict()}
  logits, labels = validation_logits(loaded)
  mask = ~np.isnan(logits).any(axis=1)
  cal = calibration_lib.fit_calibration(logits, labels, mask, mode=mode,
                                        bias=calibration_config.bias,
                                        temperature=calibration_config.temperature)
  bins = calibration_config.get('num_bins', 15)
  before = calibration_lib.Calibration(bias=np.zeros(3, np.float32), temperature=1.0)
  ece = {name: float(calibration_lib.expected_calibration_error(c.apply(logits[mask]),
                                                                labels[mask], num_bins=bins))
         for name, c in (('ece_before', before), ('ece_after', cal))}
  return cal, {'mode': mode, **cal.to_dict(), **ece}


@dataclasses.dataclass
class Decisions:
  """Everything decided on one dataset.

  probs: (M, N, 3) calibrated member probabilities (HOLD vectors where unavailable);
  available: (N,) bool, every member could score the bar; actions: (N,) int32;
  confidence: (N,) float32; calibrations: one summary dict per member.
  """

  index: pd.DatetimeIndex
  probs: np.ndarray
  available: np.ndarray
  actions: np.ndarray
  confidence: np.ndarray
  members: list[str]
  calibrations: list[dict]


def member_probabilities(members: Sequence[checkpoint_lib.LoadedModel], df: pd.DataFrame,
                         calibration_config: ml_collections.ConfigDict, *,
                         asset: str | None = None
                         ) -> tuple[np.ndarray, np.ndarray, list[dict]]:
  """Calibrated probabilities `(M, N, 3)`, availability `(N,)` and calibration summaries.

  `asset` (`input_pipeline.asset_name` of the data) picks each member's normaliser of that
  asset when it trained on several; None or an unseen asset uses its first one.
  """
  probs, available, summaries = [], np.ones(len(df), bool), []
  for loaded in members:
    cal, summary = fit_member_calibration(loaded, calibration_config)
    preds = predict_lib.predict_logits(loaded.for_asset(asset), df)
    member = np.array(cal.apply(np.nan_to_num(preds.logits)), np.float32)
    member[~preds.available] = _HOLD_PROBS
    probs.append(member)
    available &= preds.available
    summaries.append(summary)
  return np.stack(probs), available, summaries


def decide(members: Sequence[checkpoint_lib.LoadedModel], names: Sequence[str],
           df: pd.DataFrame, *, strategy: str, threshold: float,
           weights: Sequence[float] | None,
           calibration_config: ml_collections.ConfigDict, asset: str | None = None) -> Decisions:
  """Calibrated, combined decisions of `members` for every bar of `df` (of `asset`)."""
  probs, available, summaries = member_probabilities(members, df, calibration_config,
                                                     asset=asset)
  actions, confidence = ensemble_lib.combine(probs, strategy, threshold=threshold,
                                             weights=weights)
  actions = np.where(available, np.asarray(actions), ensemble_lib.HOLD).astype(np.int32)
  confidence = np.where(available, np.asarray(confidence), 0.0).astype(np.float32)
  return Decisions(index=df.index, probs=probs, available=available, actions=actions,
                   confidence=confidence, members=list(names), calibrations=summaries)


def diagnostics(logits: np.ndarray, labels: np.ndarray, mask: np.ndarray, *,
                collapse_threshold: float = 0.85) -> dict:
  """What a model predicts against what happened, on the bars in `mask`.

  Args:
    logits: (N, 3) raw (or corrected) logits; labels: (N,) int; mask: (N,) bool.

  Returns:
    JSON-able dict: predicted and label distributions, confusion matrix (rows = labels,
    columns = predictions), per-class precision / recall, mean logits per true class (what
    the seed used to pick its bias by hand), and whether predictions collapse onto one action.
  """
  mask = np.asarray(mask, bool) & ~np.isnan(logits).any(axis=1)
  logits, labels = np.asarray(logits)[mask], np.asarray(labels)[mask]
  preds = logits.argmax(axis=1)
  n = max(len(labels), 1)
  confusion = np.zeros((3, 3), np.int64)
  np.add.at(confusion, (labels, preds), 1)
  predicted, actual = confusion.sum(axis=0), confusion.sum(axis=1)
  names = labels_lib.ACTION_NAMES
  top = int(predicted.argmax())
  out = {
      'bars': int(len(labels)),
      'accuracy': float(np.trace(confusion) / n),
      'confusion': confusion.tolist(),
      'predicted_share': {a: float(predicted[i] / n) for i, a in enumerate(names)},
      'label_share': {a: float(actual[i] / n) for i, a in enumerate(names)},
      'precision': {a: (float(confusion[i, i] / predicted[i]) if predicted[i] else None)
                    for i, a in enumerate(names)},
      'recall': {a: (float(confusion[i, i] / actual[i]) if actual[i] else None)
                 for i, a in enumerate(names)},
      'mean_logits_by_label': {a: (logits[labels == i].mean(axis=0).round(4).tolist()
                                   if actual[i] else None) for i, a in enumerate(names)},
      'mean_logits': logits.mean(axis=0).round(4).tolist() if len(logits) else None,
      'collapsed': bool(predicted[top] / n > collapse_threshold),
  }
  if out['collapsed']:
    out['collapsed_to'] = names[top]
  return out


def resolve_path(path: str) -> str:
  """`path` as given if it exists, else relative to the repository (shipped checkpoints)."""
  if os.path.exists(path) or os.path.isabs(path):
    return path
  in_repo = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), path)
  return in_repo if os.path.exists(in_repo) else path


def _weights(config: ml_collections.ConfigDict, num_members: int) -> list[float] | None:
  weights = [float(w) for w in config_lib.split_list(config.get('weights', '') or '')]
  if weights and len(weights) != num_members:
    raise ValueError(f'weights has {len(weights)} entries for {num_members} checkpoints; give '
                     'one per checkpoint or leave it empty for equal weights')
  return weights or None


def backtest_pipeline(config: ml_collections.ConfigDict, outdir: str, *,
                      sweep: bool = False, log=print) -> dict:
  """checkpoints -> predictions -> calibration -> ensemble -> backtest -> reports.

  Args:
    config: a `configs/backtest.py` config (checkpoints, dataset, strategy, calibration,
      costs and sizing, sweep grid, significance settings).
    outdir: where the reports go.
    sweep: also backtest every (strategy, confidence threshold) of `config.sweep` in one
      compiled call, write `sweep.csv`, and deflate the Sharpe ratio by that many trials.
    log: where progress lines go.

  Returns:
    {'metrics', 'benchmark', 'significance', 'paths', 'sweep' (a DataFrame or None)}.
  """
  from himari_jax import backtest as backtest_lib
  from himari_jax import data as data_lib

  paths = [resolve_path(p) for p in config_lib.split_list(config.checkpoints)]
  if not paths:
    raise ValueError('no checkpoints given: set --checkpoints (or --config.checkpoints) to '
                     'one or more training workdirs or .pt files, comma-separated')
  if config.strategy not in ensemble_lib.STRATEGIES:
    raise ValueError(f'unknown strategy {config.strategy!r}; valid: '
                     f'{", ".join(ensemble_lib.STRATEGIES)}')
  if not 0.0 <= config.confidence_threshold <= 1.0:
    raise ValueError(f'confidence_threshold={config.confidence_threshold} must be in [0, 1]')
  backtest_lib.params_from_config(config)  # validates costs and sizing up front
  weights = _weights(config, len(paths))
  df = data_lib.load_dataset(config.dataset, fill_gaps=True)
  log(f'loading {len(paths)} model(s): {", ".join(paths)}')
  members = [load_member(p, config.which) for p in paths]
  log(f'predicting {len(df)} bars of {config.dataset} '
      f'({df.index[0]:%Y-%m-%d} .. {df.index[-1]:%Y-%m-%d}); calibration: '
      f'{config.calibration.mode}')
  decisions = decide(members, paths, df, strategy=config.strategy,
                     threshold=config.confidence_threshold, weights=weights,
                     calibration_config=config.calibration,
                     asset=input_pipeline.asset_name(config.dataset))

  table = None
  trial_sharpes = None
  if sweep:
    strategies = list(config.sweep.strategies)
    signals = [ensemble_lib.combine(decisions.probs, s, weights=weights) for s in strategies]
    actions = np.stack([np.where(decisions.available, a, ensemble_lib.HOLD) for a, _ in signals])
    confidence = np.stack([np.where(decisions.available, c, 0.0) for _, c in signals])
    grid = backtest_lib.make_grid(backtest_lib.settings_from_config(config),
                                  confidence_threshold=list(config.sweep.confidence_thresholds))
    table = backtest_lib.sweep(df, actions, confidence, grid, signal_names=strategies,
                               periods_per_year=config.periods_per_year,
                               risk_free_rate=config.risk_free_rate,
                               metrics=config.sweep.get('metrics', 'all'))
    os.makedirs(outdir, exist_ok=True)
    table.to_csv(os.path.join(outdir, 'sweep.csv'), index=False)
    trial_sharpes = table['sharpe'].to_numpy(float)
    log(f'sweep: {len(table)} configurations in one compiled call -> '
        f'{os.path.join(outdir, "sweep.csv")}')

  extra = {'models': paths, 'calibration': decisions.calibrations,
           'available_bars': int(decisions.available.sum())}
  outcome = backtest_and_report(df, decisions.actions, decisions.confidence, config, outdir,
                                extra=extra, trial_sharpes=trial_sharpes)
  return {**outcome, 'sweep': table}


def backtest_and_report(df: pd.DataFrame, actions: np.ndarray, confidence: np.ndarray,
                        config: ml_collections.ConfigDict, outdir: str, *,
                        extra: dict | None = None,
                        trial_sharpes: np.ndarray | None = None) -> dict:
  """Backtest of decisions, buy-and-hold, significance and every report file.

  Args:
    df: the OHLCV frame of the N bars decided on.
    actions: (N,) int actions; confidence: (N,) float in [0, 1].
    config: a `configs/backtest.py` config (costs, sizing, significance settings).
    outdir: where the reports go.
    extra: more JSON-able sections for `backtest_results.json`; `significance` is added.
    trial_sharpes: annualised Sharpe ratios of every configuration tried, for the deflated
      Sharpe ratio; None = this one only.

  Returns:
    {'metrics', 'benchmark', 'significance', 'paths'}.
  """
  from himari_jax import backtest as backtest_lib
  from himari_jax import metrics as metrics_lib
  from himari_jax import report as report_lib
  from himari_jax import significance as significance_lib

  params = backtest_lib.params_from_config(config)
  result = backtest_lib.run_backtest(df, actions, confidence, params)
  close = np.asarray(df['close'], np.float64)
  benchmark = backtest_lib.buy_and_hold(df, params)
  capital = params.initial_capital
  equity = np.asarray(result.equity, np.float64)
  # Exposure as set at each fill and held until the next one: the signal whose timing the
  # shuffled-signal null permutes (marking to market between fills is not a decision).
  exposure = np.asarray(result.position, np.float64) * close / np.maximum(equity, 1e-12)
  filled = np.asarray(result.fill_qty) != 0
  exposure = pd.Series(np.where(filled, exposure, np.nan)).ffill().fillna(0.0).to_numpy()
  significance = significance_lib.significance_report(
      np.asarray(metrics_lib.period_returns(result.equity, capital)),
      np.asarray(metrics_lib.period_returns(benchmark.equity, capital)),
      positions=exposure, market_returns=np.asarray(metrics_lib.market_returns(close)),
      num_resamples=config.significance.num_resamples,
      num_shuffles=config.significance.num_shuffles,
      cost_rate=config.commission + config.slippage, seed=config.significance.seed,
      periods_per_year=config.periods_per_year, trial_sharpes=trial_sharpes)
  written = report_lib.write_reports(outdir, result, df, actions, confidence, config,
                                     extra={**(extra or {}), 'significance': significance})
  with open(written['json']) as f:
    results = json.load(f)
  return {'metrics': results['metrics'], 'benchmark': results['benchmark']['metrics'],
          'significance': significance, 'paths': written}


def print_backtest_summary(outcome: dict, top: int = 10) -> None:
  """Console summary of `backtest_pipeline`: metrics vs buy-and-hold, luck, sweep, files."""
  from himari_jax import report as report_lib

  print()
  report_lib.print_metrics_table(outcome['metrics'], outcome['benchmark'])
  print()
  for line in report_lib.significance_lines(outcome['significance']):
    print(f'  {line}')
  table = outcome['sweep']
  if table is not None:
    columns = [c for c in ('signal', 'confidence_threshold', 'total_return', 'sharpe',
                           'max_drawdown', 'num_trades', 'exposure') if c in table]
    best = table.sort_values('sharpe', ascending=False).head(top)[columns]
    print(f'\nsweep: best {len(best)} of {len(table)} configurations by Sharpe')
    print(best.to_string(index=False, float_format=lambda v: f'{v:.4g}'))
  print('\nwrote:')
  for name, path in outcome['paths'].items():
    print(f'  {name:>9}: {path}')


def backtest_command(config: ml_collections.ConfigDict, outdir: str, *, sweep: bool) -> None:
  """What the backtest entry points run: the pipeline, then its console summary.

  A mistake a user can fix (a missing checkpoint, bad data, an invalid setting) ends the
  program with one `error: ...` line instead of a traceback.
  """
  from himari_jax import data as data_lib

  checkpoint_lib.quiet_orbax_logging()
  try:
    outcome = backtest_pipeline(config, outdir, sweep=sweep)
  except (checkpoint_lib.CheckpointError, data_lib.DataError, ValueError, OSError) as e:
    sys.exit(f'error: {e}')
  print_backtest_summary(outcome)
