"""Pre-training then LoRA (issue #8): three fine-tuning arms on one budget, scored out of sample.

  python launch/pretrain_compare.py --workdir=runs/pretrain_compare --seeds=0,1,2

Trains `configs/pretrain.py:pretrain` once (seed 0), then for every seed the arms
`finetune` (LoRA on the pre-trained frozen base), `full_finetune` (every weight, from the same
run) and `scratch_lora` (LoRA on a random frozen base, the seed's recipe), each with the same
data, steps, batch and optimiser. Each run's best checkpoint (by validation loss) is scored on
`config.data.test` (BTC 2025-2026, never seen in training or model selection): class-weighted
loss, NLL, accuracy, balanced accuracy, predicted-action shares and, where `himari_jax.backtest`
is available, a backtest with the seed's position policy. The pre-trained model without
fine-tuning is scored too, as a reference.

The `finetune` arm's adapters are exported to `adapters/finetune_seed<s>.npz`, reloaded onto
the pre-trained base, merged, and their logits compared with the unmerged run's.

Writes `<workdir>/pretrain_compare.json` and `<workdir>/pretrain_compare.md`. Re-running
reuses finished runs (training resumes from, and stops at, their last checkpoint).
`--tiny` runs the same pipeline at test sizes in seconds.
"""

from __future__ import annotations

import importlib.util
import json
import os
import pathlib
from collections.abc import Sequence
from typing import Any

import jax
import ml_collections
import numpy as np
import pandas as pd
from absl import app, flags, logging

from himari_jax import cli, constants
from himari_jax import config as config_lib
from himari_jax.data import features as features_lib
from himari_jax.data import input_pipeline
from himari_jax.data import labels as labels_lib
from himari_jax.data import ohlcv as data_lib
from himari_jax.inference import predict as predict_lib
from himari_jax.model import adapters as adapters_lib
from himari_jax.model import checkpoint as checkpoint_lib
from himari_jax.stats import diagnostics
from himari_jax.training import train as train_lib
from himari_jax.training import validation as validation_lib

ARMS = ('finetune', 'full_finetune', 'scratch_lora')
REFERENCE = 'pretrained_only'
HAS_BACKTEST = importlib.util.find_spec('himari_jax.backtest') is not None

_WORKDIR = flags.DEFINE_string('workdir', None, 'Root folder of the runs and the results.')
_SEEDS = flags.DEFINE_list('seeds', ['0'], 'Seeds of the fine-tuning arms.')
_ARMS = flags.DEFINE_list('arms', list(ARMS), 'Fine-tuning arms to run.')
_TINY = flags.DEFINE_bool('tiny', False, 'Test sizes (seconds per run).')


def load_arm_config(arm: str, *, tiny: bool = False) -> ml_collections.ConfigDict:
  """The config `configs/pretrain.py:<arm>[,tiny]` gives."""
  return config_lib.pretrain_config(f'{arm},tiny' if tiny else arm)


def label_test_bars(config: ml_collections.ConfigDict,
                df: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
  """(labels int32 (N,), valid bool (N,)) of the test bars under the run's label rule."""
  return labels_lib.make_labels(df, config.labels.kind,
                                **input_pipeline.label_params(config.labels))


def score_logits(logits: np.ndarray, labels: np.ndarray, valid: np.ndarray,
                 class_weights: np.ndarray) -> dict[str, Any]:
  """Out-of-sample classification metrics of `logits: (N, 3)` (NaN rows = unavailable).

  The same metrics as training's validation (`validation.validation_metrics`), prefixed `test_`.
  """
  scored = valid & ~np.isnan(logits).any(axis=1)
  logits, targets = logits[scored].astype(np.float64), labels[scored]
  log_probs = logits - np.logaddexp.reduce(logits, axis=1, keepdims=True)
  nll = -log_probs[np.arange(len(targets)), targets]
  weights = np.asarray(class_weights, np.float64)[targets]
  confusion = np.zeros((3, 3))
  np.add.at(confusion, (targets, logits.argmax(axis=1)), 1.0)
  sums = {'weighted_nll': (weights * nll).sum(), 'weight': weights.sum(), 'nll': nll.sum(),
          'count': float(len(targets)), 'confusion': confusion}
  metrics = validation_lib.validation_metrics(sums, diagnostics.COLLAPSE_THRESHOLD)
  return {'test_' + k.removeprefix('val_'): v for k, v in metrics.items()}


def decisions(logits: np.ndarray,
              decision: ml_collections.ConfigDict) -> tuple[np.ndarray, np.ndarray]:
  """(actions (N,), confidence (N,)) after the logit bias; unavailable bars HOLD at 0."""
  available = ~np.isnan(logits).any(axis=1)
  corrected = np.where(available[:, None], logits, 0.0) + np.asarray(decision.logit_bias)
  probs = np.exp(corrected - np.logaddexp.reduce(corrected, axis=1, keepdims=True))
  actions = np.where(available, probs.argmax(axis=1), constants.HOLD)
  confidence = np.where(available, probs.max(axis=1), 0.0)
  return actions.astype(np.int32), confidence


def backtest_table(df: pd.DataFrame, signals: dict[str, tuple[np.ndarray, np.ndarray]]
                   ) -> dict[str, dict[str, float]]:
  """Seed-policy backtest metrics per signal name, plus 'buy_and_hold'."""
  from himari_jax.backtest import engine as backtest  # optional stage, checked by HAS_BACKTEST
  from himari_jax.stats import metrics

  params = backtest.make_params()
  names = list(signals)
  table = backtest.sweep(df, np.stack([signals[n][0] for n in names]),
                         np.stack([signals[n][1] for n in names]), params, signal_names=names)
  keys = ('sharpe', 'total_return', 'max_drawdown', 'num_trades', 'exposure')
  out = {row['signal']: {k: float(row[k]) for k in keys} for _, row in table.iterrows()}
  market = metrics.market_returns(np.asarray(df['close'], np.float64))
  held = metrics.compute_metrics(backtest.buy_and_hold(df, params), market,
                                 params.initial_capital)
  out['buy_and_hold'] = {k: float(held[k]) for k in keys}
  return out


def check_adapters(run_dir: str, base_dir: str, path: str, df: pd.DataFrame,
                   logits: np.ndarray) -> dict[str, Any]:
  """Exports a LoRA run's adapters, reloads them onto the base and compares logits.

  Returns the file size, the run's parameter and checkpoint bytes and the largest |logit|
  difference between the merged adapters and the unmerged run.
  """
  size = adapters_lib.save_adapters(adapters_lib.adapters_from_run(run_dir), path)
  adapted = adapters_lib.adapted_model(adapters_lib.load_base_params(base_dir),
                                       adapters_lib.load_adapters(path))
  merged = predict_lib.predict_logits(adapted, df).logits
  run = checkpoint_lib.load_model(run_dir)
  param_bytes = sum(np.asarray(x).nbytes for x in jax.tree.leaves(run.params))
  checkpoint_bytes = sum(f.stat().st_size for f in pathlib.Path(run.path).rglob('*')
                         if f.is_file())
  available = ~np.isnan(logits).any(axis=1)
  return {'file': os.path.basename(path), 'file_bytes': size, 'param_bytes': param_bytes,
          'checkpoint_bytes': checkpoint_bytes,
          'max_abs_logit_diff': float(np.abs(merged - logits)[available].max())}


def unmerged_logits(loaded: checkpoint_lib.LoadedModel, df: pd.DataFrame) -> np.ndarray:
  """Logits (N, 3) with the adapters kept apart from the base (no merge)."""
  feats = loaded.normalizer.apply(features_lib.compute_features(df))
  return predict_lib.predict_logits_from_features(
      loaded.params, loaded.model_config, feats, int(loaded.config.train.context_length),
      merge=False)


def run_comparison(workdir: str, *, seeds: Sequence[int] = (0,), arms: Sequence[str] = ARMS,
                   tiny: bool = False) -> dict[str, Any]:
  """Pre-trains, fine-tunes every arm for every seed, scores them; writes JSON + markdown."""
  unknown = set(arms) - set(ARMS)
  if unknown or not arms:
    raise ValueError(f'arms {sorted(unknown) or "(none)"}: choose from {", ".join(ARMS)}.')
  workdir = os.path.abspath(workdir)
  pretrain_dir = os.path.join(workdir, 'pretrain')
  pretrain_config = load_arm_config('pretrain', tiny=tiny)
  train_lib.train_and_evaluate(pretrain_config, pretrain_dir)
  reference = load_arm_config('finetune', tiny=tiny)
  df = data_lib.load_dataset(reference.data.test, fill_gaps=reference.data.fill_gaps)
  labels, valid = label_test_bars(reference, df)

  results: dict[str, list[dict[str, Any]]] = {arm: [] for arm in (*arms, REFERENCE)}
  class_weights = None
  signals = {}
  for seed in seeds:
    for arm in arms:
      config = load_arm_config(arm, tiny=tiny)
      config.seed = int(seed)
      if arm != 'scratch_lora':
        config.train.init_from = pretrain_dir
      run_dir = os.path.join(workdir, f'{arm}_seed{seed}')
      train_lib.train_and_evaluate(config, run_dir)
      loaded = checkpoint_lib.load_model(run_dir)
      # Every arm trains on the same data, so one set of class weights scores them all.
      class_weights = np.asarray(loaded.meta['class_weights'])
      logits = unmerged_logits(loaded, df)
      record = {'seed': int(seed), 'run': os.path.basename(run_dir), 'step': loaded.step,
                'best_val_loss': loaded.meta['epoch_metrics']['val_loss'],
                'trainable_params': loaded.meta['param_counts']['trainable'],
                'total_params': loaded.meta['param_counts']['total'],
                'steps': loaded.meta['total_steps'],
                **score_logits(logits, labels, valid, class_weights)}
      if arm == 'finetune':
        record['adapters'] = check_adapters(
            run_dir, pretrain_dir, os.path.join(workdir, 'adapters', f'finetune_seed{seed}.npz'),
            df, logits)
      signals[f'{arm}_seed{seed}'] = decisions(logits, loaded.config.decision)
      results[arm].append(record)
  pretrained = checkpoint_lib.load_model(pretrain_dir)
  logits = unmerged_logits(pretrained, df)
  results[REFERENCE].append({
      'seed': 0, 'run': 'pretrain', 'step': pretrained.step,
      'best_val_loss': pretrained.meta['epoch_metrics']['val_loss'],
      'trainable_params': 0, 'total_params': pretrained.meta['param_counts']['total'],
      'steps': 0,
      **score_logits(logits, labels, valid, class_weights)})
  signals[f'{REFERENCE}_seed0'] = decisions(logits, pretrained.config.decision)

  backtests = backtest_table(df, signals) if HAS_BACKTEST else {}
  for arm, records in results.items():
    for record in records:
      record['backtest'] = backtests.get(f'{arm}_seed{record["seed"]}')
  summary = {
      'test_data': reference.data.test, 'test_bars': len(df),
      'test_first': str(df.index[0]), 'test_last': str(df.index[-1]),
      'test_label_shares': labels_lib.label_distribution(labels, valid),
      'class_weights': class_weights.tolist(), 'seeds': [int(s) for s in seeds], 'tiny': tiny,
      'pretrain': {'data': pretrain_config.data.train, 'steps': pretrained.meta['total_steps'],
                   'best_step': pretrained.step},
      'finetune_data': reference.data.train,
      'budget': {k: reference.train[k] for k in ('num_epochs', 'steps_per_epoch', 'batch_size',
                                                 'context_length', 'learning_rate',
                                                 'warmup_steps', 'class_weights')},
      'model': {k: reference.model[k] for k in ('d_model', 'num_layers', 'num_heads',
                                                'dim_feedforward', 'lora_rank')},
      'buy_and_hold': backtests.get('buy_and_hold'),
      'device': str(jax.devices()[0].device_kind), 'backend': jax.default_backend(),
      'arms': results,
  }
  with open(os.path.join(workdir, 'pretrain_compare.json'), 'w') as f:
    json.dump(summary, f, indent=1, default=float)
  table = markdown_table(summary)
  with open(os.path.join(workdir, 'pretrain_compare.md'), 'w') as f:
    f.write(table)
  return summary


def _mean_std(values: Sequence[float], fmt: str) -> str:
  values = np.asarray(values, np.float64)
  if len(values) == 1:
    return format(values[0], fmt)
  return f'{format(values.mean(), fmt)} ± {format(values.std(ddof=1), fmt)}'


BACKTEST_COLUMNS = (('Sharpe', 'sharpe', '.2f'), ('total return', 'total_return', '.2%'),
                    ('max drawdown', 'max_drawdown', '.2%'), ('trades', 'num_trades', '.0f'))


def markdown_table(summary: dict[str, Any]) -> str:
  """The comparison as markdown: one row per arm, mean ± std over seeds."""
  header = ['arm', 'trainable / total params', 'best val loss', 'test loss', 'test NLL',
            'test acc', 'test bal. acc', 'pred. SELL / HOLD / BUY']
  with_backtest = summary['buy_and_hold'] is not None
  if with_backtest:
    header += [name for name, _, _ in BACKTEST_COLUMNS]
  lines = ['| ' + ' | '.join(header) + ' |', '|' + '---|' * len(header)]
  for arm, records in summary['arms'].items():
    first = records[0]
    shares = ' / '.join(f'{np.mean([r[f"test_pred_share_{a}"] for r in records]):.2f}'
                        for a in constants.ACTION_NAMES)
    row = [arm, f'{first["trainable_params"]:,} / {first["total_params"]:,}',
           *(_mean_std([r[k] for r in records], '.4f') for k in
             ('best_val_loss', 'test_loss', 'test_nll', 'test_accuracy',
              'test_balanced_accuracy')), shares]
    if with_backtest:
      row += [_mean_std([r['backtest'][k] for r in records], fmt)
              for _, k, fmt in BACKTEST_COLUMNS]
    lines.append('| ' + ' | '.join(row) + ' |')
  if with_backtest:
    held = summary['buy_and_hold']
    lines.append('| buy and hold |' + ' |' * 7 + ' ' + ' | '.join(
        format(held[k], fmt) for _, k, fmt in BACKTEST_COLUMNS) + ' |')
  return '\n'.join(lines) + '\n'


def main(argv):
  if len(argv) > 1:
    raise app.UsageError('Too many command-line arguments.')
  checkpoint_lib.quiet_orbax_logging()
  summary = run_comparison(_WORKDIR.value, seeds=[int(s) for s in _SEEDS.value],
                           arms=_ARMS.value, tiny=_TINY.value)
  logging.info('results in %s:\n%s', _WORKDIR.value, markdown_table(summary))


if __name__ == '__main__':
  flags.mark_flags_as_required(['workdir'])
  cli.run(main)
