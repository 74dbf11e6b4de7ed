"""Logging of a training run: metrics.jsonl, TensorBoard scalars and console progress.

`StepLogger` keeps the per-step metrics on the device between logs (no host sync per step),
then checks them for NaN/inf before anything is saved, so a diverged state is never
checkpointed; `MetricWriter` writes the records (process 0 only).
"""

from __future__ import annotations

import json
import math
import os
import time
from typing import Any

import jax
import numpy as np
from absl import logging

from himari_jax import constants, json_types
from himari_jax.data import input_pipeline
from himari_jax.training import tb_events


class TrainingDivergedError(RuntimeError):
  """The loss or gradient became NaN/inf; the last good checkpoint is kept."""


class MetricWriter:
  """metrics.jsonl and TensorBoard scalars, written by process 0 only."""

  def __init__(self, workdir: str, resume_step: int | None):
    self.active = jax.process_index() == 0
    self.path = os.path.join(workdir, 'metrics.jsonl')
    if not self.active:
      return
    if os.path.exists(self.path):
      # Drop records past the checkpoint we resume from (all of them on a fresh start):
      # those steps are replayed. A torn last record is dropped with a warning.
      kept = [r for r in json_types.read_jsonl(self.path) if r['step'] <= (resume_step or 0)]
      with open(self.path, 'w') as f:
        f.writelines(json.dumps(r) + '\n' for r in kept)
    self.tb = tb_events.SummaryWriter(os.path.join(workdir, 'tensorboard'))

  def write(self, record: dict[str, Any]) -> None:
    if not self.active:
      return
    json_types.append_jsonl(self.path, record)
    scalars = {f'{record["kind"]}/{k}': float(v) for k, v in record.items()
               if isinstance(v, (int, float)) and k not in ('step', 'epoch')}
    self.tb.scalars(record['step'], scalars)
    self.tb.flush()

  def close(self) -> None:
    if self.active:
      self.tb.close()


def log_start(mesh: jax.sharding.Mesh, prepared: input_pipeline.PreparedData,
              total_steps: int, batch_size: int) -> None:
  """One line: the process, the mesh, the data and the steps of a run about to start."""
  logging.info('process %d/%d, mesh %s over %d devices; %d training windows, %d validation '
               'bars; %d steps of %d (%d per process)', jax.process_index(),
               jax.process_count(), dict(mesh.shape), jax.device_count(),
               len(prepared.train_ends), len(prepared.val_ends), total_steps, batch_size,
               batch_size // jax.process_count())


def log_preemption(signal_name: str, step: int, total_steps: int, ckpt_dir: str) -> None:
  logging.warning('pre-empted by %s: stopped at step %d of %d with a checkpoint in %s/%d; '
                  'rerun the same command to resume', signal_name, step, total_steps,
                  ckpt_dir, step)


def format_eta(seconds: float) -> str:
  seconds = int(max(seconds, 0))
  return f'{seconds // 3600:d}:{seconds // 60 % 60:02d}:{seconds % 60:02d}'


# -------------------------------------------------------------------------- loop


class StepLogger:
  """Host side of the per-step metrics: kept on the device between logs, then checked for
  NaN/inf, averaged into a `train` record and a progress line with throughput and ETA."""

  def __init__(self, writer: MetricWriter, *, start_step: int, total_steps: int,
               num_epochs: int, batch_size: int, ckpt_dir: str):
    self.writer, self.total_steps, self.num_epochs = writer, total_steps, num_epochs
    self.batch_size, self.ckpt_dir = batch_size, ckpt_dir
    self.start_step = start_step
    self.last_good = start_step if start_step else None  # last step saved to a checkpoint
    self.history: list[tuple[int, dict]] = []
    self.restart_clock(start_step)

  def restart_clock(self, step: int) -> None:
    """Throughput counts from here (after compilation, and excluding validation)."""
    self.tick, self.tick_step = time.time(), step

  def add(self, index: int, metrics: dict[str, jax.Array]) -> None:
    """Metrics of 0-based step `index`, still on the device."""
    self.history.append((index, metrics))
    if index == self.start_step:
      jax.block_until_ready(metrics)
      logging.info('first step (compilation included) took %.1f s', time.time() - self.tick)
      self.restart_clock(index + 1)

  def flush(self, step: int, epoch: int) -> None:
    """Syncs with the device: raises `TrainingDivergedError` before anything is saved."""
    history = jax.device_get(self.history)
    check_finite(history, self.last_good, self.ckpt_dir)
    rate = (step - self.tick_step) / max(time.time() - self.tick, 1e-9)
    record = {'kind': 'train', 'step': step, 'epoch': epoch + 1,
              **{k: float(np.mean([m[k] for _, m in history])) for k in history[0][1]},
              'steps_per_sec': rate, 'samples_per_sec': rate * self.batch_size}
    self.writer.write(record)
    logging.info('step %d/%d epoch %d/%d | loss %.4f acc %.3f | %.1f steps/s %.0f '
                 'samples/s | ETA %s', step, self.total_steps, epoch + 1, self.num_epochs,
                 record['loss'], record['accuracy'], rate, rate * self.batch_size,
                 format_eta((self.total_steps - step) / max(rate, 1e-9)))
    self.history = []
    self.restart_clock(step)

  def log_epoch(self, metrics: dict[str, Any], collapse_threshold: float) -> None:
    """An epoch's validation `metrics`: a `val` record and the console line (`log_epoch`)."""
    self.writer.write({'kind': 'val', **metrics})
    log_epoch(metrics, collapse_threshold)


def check_finite(history: list[tuple[int, dict]], last_good: int | None, ckpt_dir: str) -> None:
  for step, metrics in history:
    values = {k: float(metrics[k]) for k in ('loss', 'grad_norm', 'update_norm')}
    if not all(math.isfinite(v) for v in values.values()):
      kept = (f'the last good checkpoint is step {last_good} in {ckpt_dir}' if last_good
              is not None else 'no checkpoint was saved')
      shown = ', '.join(f'{k}={v}' for k, v in values.items())
      raise TrainingDivergedError(
          f'training diverged at step {step + 1}: {shown}; {kept}. Lower '
          '--config.train.learning_rate, add warm-up steps or check the input data.')


def log_epoch(metrics: dict[str, Any], collapse_threshold: float) -> None:
  """The epoch's validation line: a position model's net Sharpe ratio, turnover and IC, or a
  classifier's loss, accuracies and predicted-action shares (with a collapse warning)."""
  if 'val_net_sharpe' in metrics:
    logging.info('epoch %d: val_loss %.4f net Sharpe %.2f (gross %.2f) turnover %.0f/yr '
                 'mean |position| %.3f IC %.4f directional accuracy %.3f', metrics['epoch'],
                 metrics['val_loss'], metrics['val_net_sharpe'], metrics['val_gross_sharpe'],
                 metrics['val_turnover_per_year'], metrics['val_mean_abs_position'],
                 metrics['val_ic'], metrics['val_accuracy'])
    return
  logging.info('epoch %d: val_loss %.4f val_accuracy %.3f balanced %.3f predicted %s',
               metrics['epoch'], metrics['val_loss'], metrics['val_accuracy'],
               metrics['val_balanced_accuracy'],
               {a: round(metrics[f'val_pred_share_{a}'], 3) for a in constants.ACTION_NAMES})
  if metrics['val_collapsed']:
    action = metrics['val_collapsed_to']
    logging.warning('epoch %d: PREDICTIONS COLLAPSED: %.1f%% of validation bars are %s '
                    '(threshold %.0f%%); try --config.train.class_weights=inverse, a lower '
                    'learning rate or more data', metrics['epoch'],
                    100 * metrics[f'val_pred_share_{action}'], action, 100 * collapse_threshold)
