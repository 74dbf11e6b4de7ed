"""Validation of a training run: every validation bar scored as at inference.

Each validation bar is scored from the last position of its own trailing window, exactly as
`predict.py` does: a classifier's loss, accuracies, confusion and collapse flag
(`validation_metrics`, the same logic as launch/diagnose.py), or a position model's net /
gross Sharpe ratio, turnover and IC (`objectives.evaluate_positions`). Batches are global
(`eval_batch_size`), each process gathering its contiguous slice, sharded over the mesh's
'data' axis; the last batch is padded by repeating the last bar, masked out.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from himari_jax import constants
from himari_jax.data import input_pipeline
from himari_jax.model import flag_trader as model_lib
from himari_jax.model import objectives as objectives_lib
from himari_jax.stats import diagnostics as diagnostics_lib
from himari_jax.training import mesh as mesh_lib


def make_evaluator(model: model_lib.FlagTrader, mesh: jax.sharding.Mesh, *,
                   objective: objectives_lib.TradingObjective | None, class_weights: jax.Array,
                   context_length: int, batch_size: int,
                   collapse_threshold: float) -> Callable[..., dict[str, Any]]:
  """`evaluate(params, prepared) -> metrics` of every validation bar, its step jitted on `mesh`.

  `validate_positions` for a trading `objective`, else `validate` (classification);
  `batch_size` is the global evaluation batch, a multiple of the mesh size.
  """
  replicated, data_sharding = NamedSharding(mesh, P()), NamedSharding(mesh, P('data'))
  if objective:
    position_step = jax.jit(make_position_step(model, objective.long_only, objective.acts),
                            in_shardings=(replicated, data_sharding), out_shardings=replicated)
    return functools.partial(validate_positions, position_step, context_length=context_length,
                             batch_size=batch_size, sharding=data_sharding, objective=objective)
  eval_step = jax.jit(make_eval_step(model, class_weights),
                      in_shardings=(replicated, data_sharding), out_shardings=replicated)
  return functools.partial(validate, eval_step, context_length=context_length,
                           batch_size=batch_size, sharding=data_sharding,
                           collapse_threshold=collapse_threshold)


def make_eval_step(model: model_lib.FlagTrader, class_weights: jax.Array) -> Callable:
  """`eval_step(params, batch) -> sums` scoring the last position of each window.

  batch: inputs (B, T, 60), targets int32 (B,), mask bool (B,) (False on padding).
  Returns sums over the batch: weighted nll, weight, nll, count, confusion (3, 3)
  [true action, predicted action].
  """

  def eval_step(params, batch):
    logits = model.apply({'params': params}, batch['inputs'], deterministic=True)[:, -1]
    targets, mask = batch['targets'], batch['mask']
    log_probs = jax.nn.log_softmax(logits, axis=-1)
    nll = -jnp.take_along_axis(log_probs, targets[:, None], axis=-1)[:, 0]
    weights = class_weights[targets] * mask
    preds = jnp.argmax(logits, axis=-1)
    confusion = jnp.zeros((constants.NUM_ACTIONS,) * 2, jnp.float32).at[targets, preds].add(
        mask.astype(jnp.float32))
    return {'weighted_nll': jnp.sum(weights * nll), 'weight': jnp.sum(weights),
            'nll': jnp.sum(nll * mask), 'count': jnp.sum(mask.astype(jnp.float32)),
            'confusion': confusion}

  return eval_step


def validation_metrics(sums: dict[str, np.ndarray], collapse_threshold: float) -> dict[str, Any]:
  """Loss, accuracy, per-class accuracy, confusion matrix and predicted-action shares.

  The shares, accuracies and collapse flag are `diagnostics.confusion_summary`'s (the same
  logic as launch/diagnose.py), under `val_` keys.
  """
  summary = diagnostics_lib.confusion_summary(sums['confusion'], collapse_threshold)
  count = max(float(sums['count']), 1.0)
  metrics: dict[str, Any] = {
      'val_loss': float(sums['weighted_nll']) / max(float(sums['weight']), 1e-12),
      'val_nll': float(sums['nll']) / count,
      'val_accuracy': summary['accuracy'],
      'val_balanced_accuracy': summary['balanced_accuracy'],
      'val_confusion': summary['confusion'],
  }
  for action in constants.ACTION_NAMES:
    # A class absent from validation has no accuracy: None in JSON, left out of TensorBoard.
    metrics[f'val_accuracy_{action}'] = summary['recall'][action]
    metrics[f'val_pred_share_{action}'] = summary['predicted_share'][action]
  metrics['val_collapsed'] = summary['collapsed']
  if summary['collapsed']:
    metrics['val_collapsed_to'] = summary['collapsed_to']
  return metrics


def validate(eval_step: Callable, params: Any, prepared: input_pipeline.PreparedData,
             context_length: int, batch_size: int, sharding: NamedSharding,
             collapse_threshold: float) -> dict[str, Any]:
  """`validation_metrics` of every validation bar, in global batches of `batch_size`.

  Each process gathers its contiguous slice of a batch; the last batch is padded by
  repeating the last bar, masked out.
  """
  ends = prepared.val_ends
  local = batch_size // jax.process_count()
  totals = None
  for start in range(0, len(ends), batch_size):
    idx = np.arange(start, start + batch_size)[jax.process_index() * local:][:local]
    batch_ends = ends[np.minimum(idx, len(ends) - 1)]
    batch = input_pipeline.gather_eval_batch(prepared, batch_ends, context_length,
                                             idx < len(ends))
    sums = eval_step(params, mesh_lib.shard_batch(batch, sharding, batch_size))
    totals = sums if totals is None else jax.tree.map(jnp.add, totals, sums)
  return validation_metrics(jax.device_get(totals), collapse_threshold)


def make_position_step(model: model_lib.FlagTrader, long_only: bool,
                       acts: bool = False) -> Callable:
  """`position_step(params, batch) -> (B,)` positions at the last position of each window
  (`objectives.positions`), batch: inputs (B, T, 60). With `acts` (an action policy), the
  greedy action there instead (0 / 1 / 2, as float32), which `validate_positions` turns
  into the position it holds."""

  def position_step(params, batch):
    logits = model.apply({'params': params}, batch['inputs'], deterministic=True)[:, -1]
    if acts:
      return jnp.argmax(logits, -1).astype(jnp.float32)
    return objectives_lib.positions(logits.astype(jnp.float32), long_only)

  return position_step


def validate_positions(position_step: Callable, params: Any,
                       prepared: input_pipeline.PreparedData, context_length: int,
                       batch_size: int, sharding: NamedSharding,
                       objective: objectives_lib.TradingObjective) -> dict[str, Any]:
  """`objectives.evaluate_positions` of a position model over every validation bar.

  Each validation bar is scored from its own trailing window, as `predict.py` does; the
  bars of each file form one contiguous series (one row of `evaluate_positions`, so costs
  are charged between consecutive bars of a file only), masked where the next return is
  unknown. An action policy's greedy actions become the positions they hold along each
  file (`objectives.sampled_positions`: HOLD keeps the position, every file starts flat).
  """
  ends = prepared.val_ends
  local = batch_size // jax.process_count()
  held = []
  for start in range(0, len(ends), batch_size):
    idx = np.arange(start, start + batch_size)[jax.process_index() * local:][:local]
    batch_ends = ends[np.minimum(idx, len(ends) - 1)]
    inputs = input_pipeline.gather_eval_batch(prepared, batch_ends, context_length,
                                              idx < len(ends))['inputs']
    out = position_step(params, mesh_lib.shard_batch({'inputs': inputs}, sharding, batch_size))
    held.append(np.asarray(jax.device_get(out))[:min(batch_size, len(ends) - start)])
  position = np.concatenate(held)
  offsets = [f['offset'] for f in prepared.summary['files']][1:]
  rows = np.split(np.arange(len(ends)), np.searchsorted(ends, offsets))
  rows = [r for r in rows if len(r)]
  width = max(len(r) for r in rows)
  grid = {k: np.zeros((len(rows), width)) for k in ('position', 'forward_return')}
  mask = np.zeros((len(rows), width), bool)
  for i, r in enumerate(rows):
    grid['position'][i, :len(r)] = position[r]
    grid['forward_return'][i, :len(r)] = prepared.forward_returns[ends[r]]
    mask[i, :len(r)] = prepared.trade_mask[ends[r]]
  if objective.acts:
    grid['position'] = np.asarray(objectives_lib.sampled_positions(
        jnp.asarray(grid['position'], jnp.int32), jnp.asarray(mask), objective.long_only))
  return objectives_lib.evaluate_positions(grid['position'], grid['forward_return'], mask,
                                           objective)
