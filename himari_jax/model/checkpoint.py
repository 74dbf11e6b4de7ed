"""Orbax checkpoints of training runs, and loading a trained model for inference.

Layout (docs/ARCHITECTURE.md): `<workdir>/checkpoints/<step>/` holds two items,

  state  the `TrainState` pytree {params, opt_state, step, rng} (`ocp.args.StandardSave`);
  meta   JSON: the config, the feature set, the normalisation statistics, class weights,
         the data summary and the epoch's metrics (`ocp.args.JsonSave`).

Retention: the `keep_latest` newest steps (mid-epoch saves included, so a pre-empted run
loses little) and the best step by `config.train.best_metric` among epoch-end saves, which
carry validation metrics. The best metric is named as in the config: `val_loss` is
minimised, a leading '-' (`-val_accuracy`, `-val_net_sharpe`) means larger is better; an
undefined value (NaN, e.g. the Sharpe ratio of a flat position) ranks last.

Saves are asynchronous (the arrays are copied to the host, then written by a background
thread while training goes on); `train.py` waits for them before it exits, pre-empted or
not. A save cut short (kill -9, a lost machine) leaves an Orbax temporary folder, not a
step: it is never read and is removed when the next manager opens the directory.

Integrity: once Orbax has finished a save (`finish_saves`, also called by the next `save`),
the step gets a manifest `SHA256SUMS` (the sha256 of every file of the step, the format of
`sha256sum -c`). Every restore checks it first (`verify_step`), then that the restored
params are finite, and refuses a damaged step with one line naming the step and the file
or parameter. Steps saved before manifests existed (or by a process killed between its
save and the manifest) load unchecked, the finiteness test aside.

`load_model` restores only `state.params` (an Orbax partial restore of the `state` item), as
host numpy arrays, so inference needs neither the optimiser state's structure nor its memory
and the arrays go to whichever device the caller's `jax.jit` runs on.
"""

from __future__ import annotations

import dataclasses
import gc
import hashlib
import os
import sys
import weakref
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import orbax.checkpoint as ocp
from absl import logging
from orbax.checkpoint import checkpoint_managers, multihost

from himari_jax import config as config_lib
from himari_jax import json_types
from himari_jax.data import features as features_lib
from himari_jax.data import input_pipeline
from himari_jax.model import flag_trader as model_lib

CHECKPOINT_SUBDIR = 'checkpoints'
DAMAGED_SUBDIR = 'damaged_checkpoints'  # beside it: steps a resume could not restore
CLASSIFICATION_METRICS = ('val_loss', 'val_nll', 'val_accuracy', 'val_balanced_accuracy')
# Trading objectives ('sharpe' / 'utility' / 'reinforce'; objectives.evaluate_positions).
TRADING_METRICS = ('val_loss', 'val_net_sharpe', 'val_gross_sharpe', 'val_mean_net_return',
                   'val_turnover_per_year', 'val_ic', 'val_accuracy')
VALIDATION_METRICS = tuple(dict.fromkeys(CLASSIFICATION_METRICS + TRADING_METRICS))
MANIFEST = 'SHA256SUMS'  # in each step folder
# Steps a manager has saved whose manifests are not written yet (their save may be running).
_UNSEALED: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


class CheckpointError(ValueError):
  """A checkpoint path is missing, empty or unreadable; the message says what was expected."""


class _OrbaxChatterFilter:
  """Drops Orbax's per-save INFO records and the warnings this module triggers by design
  (mid-epoch saves carry no metrics; `load_model` opens runs read-only)."""

  EXPECTED = ('did not provide metrics', 'read_only=True', 'is read only')

  def filter(self, record) -> bool:
    if '/orbax/' not in record.pathname.replace(os.sep, '/'):
      return True
    message = record.getMessage()
    return (record.levelno >= logging.converter.STANDARD_WARNING
            and not any(text in message for text in self.EXPECTED))


def quiet_orbax_logging() -> None:
  """Keeps the console readable: training logs, Orbax warnings and errors only."""
  absl_logger = logging.get_absl_logger()
  if not any(isinstance(f, _OrbaxChatterFilter) for f in absl_logger.filters):
    absl_logger.addFilter(_OrbaxChatterFilter())


def parse_best_metric(spec: str) -> tuple[str, str]:
  """'val_loss' -> ('val_loss', 'min'); '-val_accuracy' -> ('val_accuracy', 'max')."""
  name, mode = (spec[1:], 'max') if spec.startswith('-') else (spec, 'min')
  if name not in VALIDATION_METRICS:
    raise ValueError(f'unknown best metric {spec!r}; use one of {", ".join(VALIDATION_METRICS)} '
                     "(prefix '-' to keep the largest, e.g. '-val_accuracy')")
  return name, mode


def ranking_metrics(metrics: dict[str, Any], best_metric: str) -> dict[str, float]:
  """The validation metrics of `metrics` that rank a step, NaN/None replaced by the worst
  value for `best_metric`'s direction (so an undefined ratio is never "best")."""
  name, mode = parse_best_metric(best_metric)
  worst = -np.inf if mode == 'max' else np.inf
  out = {}
  for key in VALIDATION_METRICS:
    if key in metrics:
      value = metrics[key]
      out[key] = worst if value is None or not np.isfinite(value) else float(value)
  if name not in out:
    raise ValueError(f'best metric {best_metric!r} is not among the validation metrics '
                     f'({", ".join(out)})')
  return out


def checkpoint_dir(path: str | os.PathLike) -> str:
  """The `checkpoints/` folder of a workdir; a path that already is one is returned as is."""
  path = os.path.abspath(os.fspath(path))
  sub = os.path.join(path, CHECKPOINT_SUBDIR)
  return sub if os.path.isdir(sub) or not _has_steps(path) else path


def _has_steps(path: str) -> bool:
  return os.path.isdir(path) and any(name.isdigit() for name in os.listdir(path))


def make_manager(directory: str | os.PathLike, *, best_metric: str = 'val_loss',
                 keep_latest: int = 2, read_only: bool = False) -> ocp.CheckpointManager:
  """A CheckpointManager over `directory` keeping the `keep_latest` newest and the best step.

  Items 'state' and 'meta'; asynchronous saves; a writable manager removes the temporary
  folders of saves that a crash interrupted.
  """
  name, mode = parse_best_metric(best_metric)

  def metric_of(metrics):
    return metrics[name]

  policy = checkpoint_managers.AnyPreservationPolicy([
      checkpoint_managers.LatestN(n=max(1, keep_latest)),
      # BestN keeps the end of an ascending sort, so minimising sorts in reverse.
      checkpoint_managers.BestN(get_metric_fn=metric_of, reverse=mode == 'min', n=1,
                                keep_checkpoints_without_metrics=False),
  ])
  options = ocp.CheckpointManagerOptions(
      best_fn=metric_of, best_mode=mode, preservation_policy=policy, read_only=read_only,
      create=not read_only, enable_async_checkpointing=True,
      cleanup_tmp_directories=not read_only)
  return ocp.CheckpointManager(os.fspath(directory), options=options,
                               item_names=('state', 'meta'))


def save(manager: ocp.CheckpointManager, step: int, state: Any, meta: dict[str, Any],
         metrics: dict[str, float] | None = None) -> None:
  """Saves `state` and the JSON `meta` at `step` (asynchronously; see `finish_saves`).

  `metrics` (validation metrics of an epoch end) rank the step for the best-checkpoint
  policy; steps saved without them are kept only while among the latest. The previous
  save is finished (and its manifest written) first, as Orbax would wait for it anyway.
  """
  finish_saves(manager)
  saved = manager.save(
      step, args=ocp.args.Composite(state=ocp.args.StandardSave(state),
                                    meta=ocp.args.JsonSave(json_types.to_json_types(meta))),
      metrics=metrics)
  if saved:
    _UNSEALED.setdefault(manager, []).append(step)


def finish_saves(manager: ocp.CheckpointManager) -> None:
  """Waits for `manager`'s pending saves, then writes the manifest of each step they saved
  (process 0; a step the retention policy already removed is skipped)."""
  manager.wait_until_finished()
  steps = _UNSEALED.pop(manager, [])
  if jax.process_index():
    return
  for step in steps:
    step_dir = os.path.join(os.fspath(manager.directory), str(step))
    if os.path.isdir(step_dir):
      write_manifest(step_dir)


def _sha256(path: str) -> str:
  with open(path, 'rb') as f:
    return hashlib.file_digest(f, 'sha256').hexdigest()


def _step_files(step_dir: str) -> list[str]:
  """Paths of the files of a step folder, relative to it, sorted; the manifest left out."""
  out = []
  for root, dirs, files in os.walk(step_dir):
    dirs.sort()
    out += [os.path.relpath(os.path.join(root, name), step_dir) for name in sorted(files)]
  return [path for path in out if path not in (MANIFEST, MANIFEST + '.tmp')]


def write_manifest(step_dir: str | os.PathLike) -> str:
  """Writes `<step_dir>/SHA256SUMS`, one `<sha256>  <relative path>` line per file (atomically:
  a manifest is complete or absent). Returns its path."""
  step_dir = os.fspath(step_dir)
  lines = [f'{_sha256(os.path.join(step_dir, rel))}  {rel}\n' for rel in _step_files(step_dir)]
  path = os.path.join(step_dir, MANIFEST)
  with open(path + '.tmp', 'w') as f:
    f.writelines(lines)
    f.flush()
    os.fsync(f.fileno())
  os.replace(path + '.tmp', path)
  return path


def verify_step(step_dir: str | os.PathLike) -> None:
  """Checks the files of a step folder against its manifest (none: nothing to check).

  Raises:
    CheckpointError: a listed file is missing or its bytes changed, naming the step and file.
  """
  step_dir = os.fspath(step_dir)
  path = os.path.join(step_dir, MANIFEST)
  if not os.path.exists(path):
    return
  step = os.path.basename(os.path.normpath(step_dir))
  with open(path) as f:
    for line in f:
      digest, _, rel = line.rstrip('\n').partition('  ')
      full = os.path.join(step_dir, rel)
      if not os.path.isfile(full):
        raise CheckpointError(f'checkpoint step {step} is damaged: {full} is missing (listed in '
                              f'{path})')
      if _sha256(full) != digest:
        raise CheckpointError(f'checkpoint step {step} is damaged: {full} does not match its '
                              f'checksum in {path}')


def check_finite_params(params: Any, step_dir: str | os.PathLike) -> None:
  """Refuses params with a NaN or inf (weights a damaged file decoded to).

  Raises:
    CheckpointError: naming the step and the first non-finite parameter.
  """
  finite = jax.device_get(jax.tree.map(lambda x: jnp.isfinite(x).all(), params))
  for path, ok in jax.tree_util.tree_flatten_with_path(finite)[0]:
    if not ok:
      name = '/'.join(str(getattr(k, 'key', k)) for k in path)
      step = os.path.basename(os.path.normpath(os.fspath(step_dir)))
      raise CheckpointError(f'checkpoint step {step} is damaged: parameter {name} has NaN or '
                            f'inf values ({step_dir})')


def restore(manager: ocp.CheckpointManager, step: int, abstract_state: Any) -> tuple[Any, dict]:
  """(state, meta) of `step`, with arrays laid out as `abstract_state` (ShapeDtypeStructs with
  shardings, e.g. `abstract_like(state)`).

  Raises:
    CheckpointError: the step fails its manifest, or its params are not finite.
  """
  step_dir = os.path.join(os.fspath(manager.directory), str(step))
  verify_step(step_dir)
  _drop_closed_loop_noise()
  restored = manager.restore(step, args=ocp.args.Composite(
      state=ocp.args.StandardRestore(abstract_state), meta=ocp.args.JsonRestore()))
  check_finite_params(restored['state'].params, step_dir)
  return restored['state'], restored['meta']


def training_meta(config: ml_collections.ConfigDict, prepared: input_pipeline.PreparedData,
                  **extra: Any) -> dict[str, Any]:
  """The `meta` item of a training run's steps: the config, and the feature set, normalisers,
  class weights and data summary of `prepared`, then `extra` (parameter counts, steps);
  epoch-end saves add the epoch's metrics under 'epoch_metrics'."""
  return {'config': config.to_dict(), 'feature_set': prepared.feature_set,
          'normalizer': prepared.normalizer.to_dict(),
          'normalizers': {k: v.to_dict() for k, v in prepared.normalizers.items()},
          'class_weights': prepared.class_weights, 'data': prepared.summary, **extra}


def restore_latest(manager: ocp.CheckpointManager, state: Any) -> tuple[Any, int]:
  """(state, step) of the newest intact step, laid out like `state`; (`state`, 0) without steps.

  A newer step that fails its manifest, its restore or the finiteness check is reported in
  one warning line and moved to `<workdir>/damaged_checkpoints/` (the run saves that step
  number again, and the files stay for a look).

  Raises:
    CheckpointError: no step can be restored (then nothing is moved).
  """
  directory = os.fspath(manager.directory)
  failed = []
  for step in sorted(manager.all_steps(), reverse=True):
    try:
      restored, _ = restore(manager, step, abstract_like(state))
    except Exception as e:  # Orbax and TensorStore raise many kinds
      gc.collect()  # closes the failed read's coroutines now, not noisily at exit
      failed.append((step, _one_line(e, step)))
      continue
    for bad, reason in failed:
      moved = _move_aside(directory, bad)
      logging.warning('%s; moved it to %s and resuming from step %d', reason, moved, step)
    if failed:
      manager.reload()
    logging.info('resumed from %s/%d', directory, step)
    return restored, step
  if failed:
    raise CheckpointError(f'{directory}: no checkpoint step can be restored ('
                          + '; '.join(reason for _, reason in failed)
                          + '); move the folder away to start afresh')
  return state, 0


def _drop_closed_loop_noise() -> None:
  """Installs (once) an unraisable-exception hook that drops 'RuntimeError: Event loop is
  closed': when one read of a damaged step fails, Orbax closes its event loop and each read
  still in flight would print that traceback as it lands (some after the error is reported).
  Every other unraisable exception goes to the previous hook."""
  previous = sys.unraisablehook
  if getattr(previous, 'drops_closed_loop', False):
    return

  def hook(unraisable):
    if not (isinstance(unraisable.exc_value, RuntimeError)
            and str(unraisable.exc_value) == 'Event loop is closed'):
      previous(unraisable)

  hook.drops_closed_loop = True
  sys.unraisablehook = hook


def _one_line(error: BaseException, step: int | str) -> str:
  """A restore failure as one line: its root cause's first line (Orbax's errors wrap the
  reader's and carry whole TensorStore specs)."""
  if isinstance(error, CheckpointError):
    return str(error)
  while error.__cause__ is not None:
    error = error.__cause__
  first = (str(error).strip().splitlines() or [''])[0][:300]
  return f'checkpoint step {step} cannot be restored ({type(error).__name__}: {first})'


def _move_aside(directory: str, step: int) -> str:
  """Moves step folder `step` of `directory` into a sibling `damaged_checkpoints/` (process 0;
  the others wait for it). Returns where it went."""
  target = os.path.join(os.path.dirname(directory), DAMAGED_SUBDIR, str(step))
  suffix = 0
  while os.path.exists(target + (f'.{suffix}' if suffix else '')):
    suffix += 1
  target += f'.{suffix}' if suffix else ''
  if not jax.process_index():
    os.makedirs(os.path.dirname(target), exist_ok=True)
    os.replace(os.path.join(directory, str(step)), target)
  if jax.process_count() > 1:
    multihost.sync_global_processes(f'himari_move_aside_{step}')
  return target


def final_metrics(manager: ocp.CheckpointManager, best_metric: str,
                  epoch_metrics: dict[str, Any]) -> dict[str, Any]:
  """The last epoch's metrics and the best step, then closes `manager`.

  Returns:
    `epoch_metrics` (read back from the latest step when empty, as when a finished run is
    rerun) plus `best_step`, `best_checkpoint` (its directory) and `best_<metric>`.
  """
  best = manager.best_step()
  best = manager.latest_step() if best is None else best
  metric_name, _ = parse_best_metric(best_metric)
  best_metrics = read_meta(manager, best).get('epoch_metrics', {})
  if not epoch_metrics:
    epoch_metrics = read_meta(manager, manager.latest_step()).get('epoch_metrics', {})
  manager.close()
  return {**epoch_metrics, 'best_step': best,
          'best_checkpoint': os.path.join(os.fspath(manager.directory), str(best)),
          f'best_{metric_name}': best_metrics.get(metric_name)}


def abstract_like(tree: Any) -> Any:
  """ShapeDtypeStructs (with the arrays' shardings) describing `tree`, a restore target."""
  return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding),
                      tree)



@dataclasses.dataclass(frozen=True)
class LoadedModel:
  """A trained model ready for inference.

  Attributes:
    config: the full training config (ConfigDict), e.g. `config.train.context_length`; a run
      older than some fields has them filled (`config.upgrade_saved_config`).
    model_config: `model.ModelConfig` built from `config.model`.
    params: the Flax parameter tree, host numpy arrays.
    normalizer: the feature normaliser the model scores with: that of its first (or only)
      training asset.
    meta: the checkpoint's JSON metadata (class weights, data summary, epoch metrics).
    step: the training step of the checkpoint.
    path: the step directory it was read from.
    normalizers: asset name -> normaliser fitted on that asset's training rows (runs on
      several assets); empty for checkpoints that store one normaliser only.
  """

  config: ml_collections.ConfigDict
  model_config: model_lib.ModelConfig
  params: Any
  normalizer: features_lib.Normalizer
  meta: dict[str, Any]
  step: int
  path: str
  normalizers: dict[str, features_lib.Normalizer] = dataclasses.field(default_factory=dict)

  @property
  def objective(self) -> str:
    """`config.train.objective`: 'classification' or 'reinforce' (logits are action scores),
    or 'sharpe' / 'utility' (a position model: `predict.predicted_positions` reads them)."""
    return self.config.train.objective

  @property
  def feature_set(self) -> str:
    """The feature set the model was trained on (or converted for): the meta's record, else
    `config.data.feature_set` ('himari' for runs written before feature sets existed)."""
    return self.meta.get('feature_set') or features_lib.feature_set_of(self.config)

  def check_feature_set(self, requested: str | None) -> str:
    """The set to score this model with: its own; `requested` (None = its own) must match.

    Raises:
      features.FeatureSetError: `requested` is another set (a run trained on one set refuses
        to be scored with another).
    """
    features_lib.check_feature_set(self.feature_set, requested or self.feature_set)
    return self.feature_set

  def for_asset(self, asset: str | None) -> LoadedModel:
    """This model scoring with `asset`'s normaliser (`input_pipeline.asset_name`).

    An asset it did not train on (or None) keeps `normalizer`, the first asset's.
    """
    if asset is None or asset not in self.normalizers:
      return self
    return dataclasses.replace(self, normalizer=self.normalizers[asset])


def read_meta(manager: ocp.CheckpointManager, step: int) -> dict[str, Any]:
  """The JSON `meta` item of `step`."""
  return manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))['meta']


def load_model(path: str | os.PathLike, which: str | int = 'best') -> LoadedModel:
  """Loads params, config and normaliser of a training run for inference.

  Args:
    path: a workdir written by `train.train_and_evaluate`, or its `checkpoints/` folder.
    which: 'best' (by the run's `train.best_metric`; the latest step when no epoch ended
      yet), 'latest', or a step number.

  Raises:
    CheckpointError: the path does not exist, holds no checkpoint, lacks the requested step,
      or a checkpoint cannot be read.
  """
  text = os.fspath(path)
  if text.endswith('.pt'):
    raise CheckpointError(
        f'{text} is a PyTorch checkpoint; load_model reads Orbax training runs. Fine-tune from '
        f'it with --config.train.init_from={text}, or convert it with himari_jax.model.convert.')
  if not os.path.isdir(text):
    raise CheckpointError(f'{text}: no such checkpoint directory; pass a training workdir '
                          '(the --workdir of launch/train.py) or its checkpoints/ folder.')
  directory = checkpoint_dir(text)
  if not _has_steps(directory):
    raise CheckpointError(f'{text}: no checkpoint steps found (looked in {directory}); '
                          'train first with launch/train.py --workdir=...')
  manager, step_dir = None, directory
  _drop_closed_loop_noise()
  try:
    manager = make_manager(directory, read_only=True)
    latest = manager.latest_step()
    step_dir = os.path.join(directory, str(latest))
    verify_step(step_dir)
    meta = read_meta(manager, latest)
    config = config_lib.upgrade_saved_config(meta['config'])
    if which == 'best':
      manager.close()
      manager = make_manager(directory, best_metric=config.train.best_metric, read_only=True)
    step = _select_step(manager, which, directory)
    if step != latest:
      step_dir = os.path.join(directory, str(step))
      verify_step(step_dir)
      meta = read_meta(manager, step)
      config = config_lib.upgrade_saved_config(meta['config'])
    model_config = model_lib.ModelConfig.from_config(config.model)
    target = {'params': jax.tree.map(lambda s: jax.ShapeDtypeStruct(s.shape, s.dtype),
                                     model_lib.param_shapes(model_config))}
    restore_args = jax.tree.map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray), target)
    params = ocp.PyTreeCheckpointer().restore(
        os.path.join(directory, str(step), 'state'),
        args=ocp.args.PyTreeRestore(item=target, restore_args=restore_args,
                                    partial_restore=True))['params']
  except CheckpointError:
    raise
  except Exception as e:  # Orbax and TensorStore raise many kinds
    gc.collect()  # closes the failed read's coroutines now, not noisily at exit
    raise CheckpointError(f'{_one_line(e, os.path.basename(step_dir))}; it may be incomplete '
                          f'or corrupt: delete {step_dir} to fall back to an earlier step.') from e
  finally:
    if manager is not None:
      manager.close()
  check_finite_params(params, step_dir)
  return LoadedModel(config=config, model_config=model_config, params=params,
                     normalizer=features_lib.Normalizer.from_dict(meta['normalizer']),
                     meta=meta, step=step, path=os.path.join(directory, str(step)),
                     normalizers={k: features_lib.Normalizer.from_dict(v)
                                  for k, v in meta.get('normalizers', {}).items()})


def _select_step(manager: ocp.CheckpointManager, which: str | int, directory: str) -> int:
  steps = manager.all_steps()
  if which == 'latest':
    return manager.latest_step()
  if which == 'best':
    best = manager.best_step()
    return manager.latest_step() if best is None else best
  if isinstance(which, int) or str(which).isdigit():
    if int(which) not in steps:
      raise CheckpointError(f'{directory}: no step {which}; available steps: {sorted(steps)}')
    return int(which)
  raise CheckpointError(f"which={which!r}: use 'best', 'latest' or a step number")
