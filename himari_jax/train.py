"""Training loop: `train_and_evaluate(config, workdir)`, in the style of the Flax examples.

Data flow (input_pipeline.py): `prepare_data` loads the training files, computes features and
labels, splits each file chronologically (train | embargo | validation), fits one normaliser
per asset on its training rows only and lists the end bars of the training windows. A batch
is gathered on the host from window end indices, so no window array is ever materialised.

Objective: class-weighted cross-entropy over every valid position of every window (labels
without a known future and feature warm-up rows are masked), normalised like PyTorch's
weighted `CrossEntropyLoss`: `sum(w[y] * nll) / sum(w[y])` over the global batch.

Parallelism: one `jax.jit`-compiled step over a 1-D device mesh ('data'); the batch is
sharded over 'data', params and optimiser state are replicated. The same code runs on one
CPU, several GPUs, or several hosts after `jax.distributed.initialize()`: each process
gathers only its slice of the global batch (`jax.make_array_from_process_local_data`).

Freezing: `optax.multi_transform` with `set_to_zero` on the frozen base weights, and the
gradient is taken with respect to the trainable subtree only (frozen weights enter the loss
as a non-differentiated argument). XLA also prunes the frozen weight gradients of a full-tree
gradient inside this jitted step, since `set_to_zero` discards them (benchmarks/bench_train.py
measures the same FLOPs for both); the split guarantees it instead of relying on dead-code
elimination, which a full-tree gradient norm or clip would defeat (+46 % FLOPs at seed size).

Checkpoints (checkpoint.py): every `checkpoint_every_steps` steps and at every epoch end,
keeping the latest few and the best by `best_metric`; a workdir with checkpoints resumes.
A NaN/inf loss, gradient or update raises `TrainingDivergedError` before anything is saved.

Determinism: the window order of epoch e is a function of (seed, e) and the dropout key of
step s is `fold_in(rng, s)`, so a run resumed from any checkpoint replays the same batches.

Validation (every epoch end) scores each validation bar from the last position of its own
trailing window, exactly as `predict.py` does at inference.
"""

from __future__ import annotations

import functools
import json
import math
import os
import time
from collections.abc import Callable
from typing import Any

import flax
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from absl import logging
from flax import traverse_util
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from himari_jax import adapters as adapters_lib
from himari_jax import checkpoint as checkpoint_lib
from himari_jax import config as config_lib
from himari_jax import constants, input_pipeline, tb_writer
from himari_jax import data as data_lib
from himari_jax import model as model_lib

CLASS_WEIGHT_MODES = ('fixed', 'inverse', 'sqrt', 'none')
COMPUTE_DTYPES = ('float32', 'bfloat16', 'float16')
ConfigError = config_lib.ConfigError  # raised here for an unusable config; kept importable


class TrainingDivergedError(RuntimeError):
  """The loss or gradient became NaN/inf; the last good checkpoint is kept."""


def train_option(config: ml_collections.ConfigDict, name: str) -> Any:
  """`config.train.<name>`, or the package default when the config predates the field."""
  return config.train.get(name, config_lib.default_config().train[name])


# ----------------------------------------------------------------------------- config


def validate_config(config: ml_collections.ConfigDict) -> model_lib.ModelConfig:
  """Fails fast, before any data is read, on settings that cannot work.

  Returns:
    The model config built from `config.model`.

  Raises:
    ConfigError: naming the field and the change that fixes it.
  """
  t = config.train
  devices = jax.device_count()
  try:
    model_config = model_lib.ModelConfig.from_config(config.model)
  except ValueError as e:
    raise ConfigError(str(e)) from e
  if config.model.dtype not in COMPUTE_DTYPES:
    raise ConfigError(f'config.model.dtype={config.model.dtype!r} is not supported; use one '
                      f'of {", ".join(COMPUTE_DTYPES)}.')
  for name in ('batch_size', 'num_epochs', 'context_length', 'window_stride', 'log_every_steps'):
    if t[name] < 1:
      raise ConfigError(f'config.train.{name}={t[name]} must be >= 1.')
  for name in ('batch_size', 'eval_batch_size'):
    value = t.batch_size if name == 'batch_size' else train_option(config, name)
    if value % devices:
      lower, upper = value // devices * devices, (value // devices + 1) * devices
      raise ConfigError(
          f'config.train.{name}={value} is not divisible by the {devices} devices; set '
          f'--config.train.{name} to a multiple of {devices}, e.g. '
          f'{f"{lower} or " if lower else ""}{upper}.')
  if t.context_length > config.model.max_length:
    raise ConfigError(
        f'config.train.context_length={t.context_length} exceeds config.model.max_length='
        f'{config.model.max_length}; lower the context or raise --config.model.max_length.')
  if (t.steps_per_epoch or 0) < 0 or train_option(config, 'checkpoint_every_steps') < 0:
    raise ConfigError('config.train.steps_per_epoch and checkpoint_every_steps must be >= 0.')
  if not t.learning_rate > 0:
    raise ConfigError(f'config.train.learning_rate={t.learning_rate} must be positive.')
  if t.class_weights not in CLASS_WEIGHT_MODES:
    raise ConfigError(f'config.train.class_weights={t.class_weights!r} is unknown; use one '
                      f'of {", ".join(CLASS_WEIGHT_MODES)}.')
  if config.labels.kind not in ('threshold', 'sharpe'):
    raise ConfigError(f"config.labels.kind={config.labels.kind!r} is unknown; use "
                      "'threshold' or 'sharpe'.")
  try:
    checkpoint_lib.parse_best_metric(t.best_metric)
  except ValueError as e:
    raise ConfigError(f'config.train.best_metric: {e}') from e
  if not 0.0 < config.data.val_fraction < 1.0:
    raise ConfigError(f'config.data.val_fraction={config.data.val_fraction} must be in (0, 1): '
                      'validation picks the best checkpoint.')
  items = config_lib.split_list(config.data.train)
  if not items:
    raise ConfigError('config.data.train is empty; give a builtin dataset name '
                      f'({", ".join(data_lib.builtin_dataset_names())}) or a CSV path.')
  builtin = set(data_lib.builtin_dataset_names())
  for item in items:
    if item not in builtin and not os.path.isfile(item):
      raise ConfigError(f'config.data.train: {item!r} is neither a builtin dataset nor an '
                        f'existing file; builtin names: {", ".join(sorted(builtin))}.')
  if t.init_from and not os.path.exists(t.init_from):
    raise ConfigError(f'config.train.init_from={t.init_from!r} does not exist; give a '
                      'training workdir, its checkpoints/ folder or a PyTorch .pt file.')
  return model_config


# ------------------------------------------------------------------- loss, optimiser


def weighted_cross_entropy(logits: jax.Array, targets: jax.Array, mask: jax.Array,
                           class_weights: jax.Array) -> tuple[jax.Array, dict[str, jax.Array]]:
  """Class-weighted mean cross-entropy over the valid positions.

  Args:
    logits: (..., 3); targets: int (...); mask: bool (...); class_weights: (3,).

  Returns:
    (loss, {'accuracy': share of valid positions predicted right}).
  """
  log_probs = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
  nll = -jnp.take_along_axis(log_probs, targets[..., None], axis=-1)[..., 0]
  weights = class_weights[targets] * mask
  loss = jnp.sum(weights * nll) / jnp.maximum(jnp.sum(weights), 1e-12)
  correct = (jnp.argmax(logits, axis=-1) == targets) & mask
  accuracy = jnp.sum(correct) / jnp.maximum(jnp.sum(mask), 1)
  return loss, {'accuracy': accuracy}


def learning_rate_schedule(train_config: ml_collections.ConfigDict,
                           total_steps: int) -> optax.Schedule:
  """Linear warm-up to `learning_rate` over `warmup_steps`, then cosine decay to 0."""
  warmup = min(train_config.warmup_steps, total_steps - 1)
  if warmup <= 0:
    return optax.cosine_decay_schedule(train_config.learning_rate, total_steps)
  return optax.warmup_cosine_decay_schedule(0.0, train_config.learning_rate, warmup,
                                            total_steps)


def make_optimizer(train_config: ml_collections.ConfigDict, labels: Any,
                   total_steps: int) -> optax.GradientTransformation:
  """AdamW with global-norm clipping on 'trainable' leaves, `set_to_zero` on 'frozen' ones."""
  trainable = optax.adamw(learning_rate_schedule(train_config, total_steps),
                          weight_decay=train_config.weight_decay)
  if train_config.grad_clip > 0:
    trainable = optax.chain(optax.clip_by_global_norm(train_config.grad_clip), trainable)
  return optax.multi_transform({'trainable': trainable, 'frozen': optax.set_to_zero()}, labels)


def split_params(params: Any, labels: Any) -> tuple[dict, dict]:
  """(trainable, frozen) flat dicts keyed by parameter path tuples."""
  flat_labels = traverse_util.flatten_dict(labels)
  flat = traverse_util.flatten_dict(params)
  trainable = {k: v for k, v in flat.items() if flat_labels[k] == 'trainable'}
  frozen = {k: v for k, v in flat.items() if flat_labels[k] != 'trainable'}
  return trainable, frozen


def merge_params(trainable: dict, frozen: dict) -> Any:
  """Inverse of `split_params`."""
  return traverse_util.unflatten_dict({**trainable, **frozen})


@flax.struct.dataclass
class TrainState:
  """Everything a restart needs besides the data: step, params, optimiser state, RNG key."""

  step: jax.Array
  params: Any
  opt_state: Any
  rng: jax.Array


def make_train_step(model: model_lib.FlagTrader, optimizer: optax.GradientTransformation,
                    labels: Any, class_weights: jax.Array, schedule: optax.Schedule, *,
                    trainable_only_grad: bool = True) -> Callable:
  """`step(state, batch) -> (state, metrics)`, not yet jitted.

  `trainable_only_grad=False` differentiates the whole parameter tree (the naive way; the
  benchmark compares the two).
  """

  def loss_fn(params, batch, rng):
    logits = model.apply({'params': params}, batch['inputs'], deterministic=False,
                         rngs={'dropout': rng})
    return weighted_cross_entropy(logits, batch['targets'], batch['mask'], class_weights)

  def step(state, batch):
    rng = jax.random.fold_in(state.rng, state.step)
    if trainable_only_grad:
      trainable, frozen = split_params(state.params, labels)
      (loss, aux), trainable_grads = jax.value_and_grad(
          lambda t: loss_fn(merge_params(t, frozen), batch, rng), has_aux=True)(trainable)
      grads = merge_params(trainable_grads, jax.tree.map(jnp.zeros_like, frozen))
    else:
      (loss, aux), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params, batch, rng)
      trainable_grads, _ = split_params(grads, labels)
    updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    # A finite loss and gradient can still give an infinite update (e.g. a huge learning
    # rate); its norm over the trainable leaves (frozen updates are zero) catches that.
    metrics = {'loss': loss, 'accuracy': aux['accuracy'],
               'grad_norm': optax.tree.norm(trainable_grads),
               'update_norm': optax.tree.norm(split_params(updates, labels)[0]),
               'learning_rate': schedule(state.step)}
    return state.replace(step=state.step + 1, params=params, opt_state=opt_state), metrics

  return step


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
    confusion = jnp.zeros((3, 3), jnp.float32).at[targets, preds].add(mask.astype(jnp.float32))
    return {'weighted_nll': jnp.sum(weights * nll), 'weight': jnp.sum(weights),
            'nll': jnp.sum(nll * mask), 'count': jnp.sum(mask.astype(jnp.float32)),
            'confusion': confusion}

  return eval_step


def validation_metrics(sums: dict[str, np.ndarray], collapse_threshold: float) -> dict[str, Any]:
  """Loss, accuracy, per-class accuracy, confusion matrix and predicted-action shares."""
  confusion = np.asarray(sums['confusion'], np.float64)
  count = max(float(sums['count']), 1.0)
  support = confusion.sum(axis=1)
  per_class = np.divide(np.diag(confusion), support, out=np.full(3, np.nan), where=support > 0)
  # A class absent from validation has no accuracy: None in JSON, left out of TensorBoard.
  predicted = confusion.sum(axis=0) / count
  metrics: dict[str, Any] = {
      'val_loss': float(sums['weighted_nll']) / max(float(sums['weight']), 1e-12),
      'val_nll': float(sums['nll']) / count,
      'val_accuracy': float(np.trace(confusion)) / count,
      'val_balanced_accuracy': float(np.nanmean(per_class)),
      'val_confusion': confusion.astype(np.int64).tolist(),
  }
  for i, action in enumerate(constants.ACTION_NAMES):
    metrics[f'val_accuracy_{action}'] = float(per_class[i]) if support[i] else None
    metrics[f'val_pred_share_{action}'] = float(predicted[i])
  top = int(np.argmax(predicted))
  metrics['val_collapsed'] = bool(predicted[top] > collapse_threshold)
  if metrics['val_collapsed']:
    metrics['val_collapsed_to'] = constants.ACTION_NAMES[top]
  return metrics


def evaluate(eval_step: Callable, params: Any, prepared: input_pipeline.PreparedData,
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
    sums = eval_step(params, shard_batch(batch, sharding, batch_size))
    totals = sums if totals is None else jax.tree.map(jnp.add, totals, sums)
  return validation_metrics(jax.device_get(totals), collapse_threshold)


# ------------------------------------------------------------------- params, sharding


def make_mesh() -> jax.sharding.Mesh:
  """A 1-D mesh ('data',) over every device of every process.

  Auto axes: shardings of intermediates are left to the compiler (jax >= 0.7 would make
  `jax.make_mesh` axes Explicit, which types every intermediate's sharding).
  """
  return jax.make_mesh((jax.device_count(),), ('data',),
                       axis_types=(jax.sharding.AxisType.Auto,))


def replicate(tree: Any, sharding: NamedSharding) -> Any:
  """Host arrays -> global arrays replicated over the mesh (each process passes the same)."""
  return jax.tree.map(
      lambda x: jax.make_array_from_process_local_data(sharding, np.asarray(x)), tree)


def shard_batch(batch: dict[str, np.ndarray], sharding: NamedSharding,
                global_batch: int) -> dict[str, jax.Array]:
  """This process's slice of a batch -> global arrays sharded over the 'data' axis."""
  return {k: jax.make_array_from_process_local_data(sharding, v, (global_batch, *v.shape[1:]))
          for k, v in batch.items()}


def initial_params(config: ml_collections.ConfigDict, model_config: model_lib.ModelConfig,
                   rng: jax.Array, sharding: NamedSharding) -> Any:
  """Fresh params (torch-style init), or those of `config.train.init_from`, replicated.

  With `config.train.fresh_adapters` the checkpoint's adapters are merged into its base and
  new ones start at `lora_B = 0` (`adapters.with_fresh_adapters`): LoRA on a pre-trained base.
  """
  init_from = config.train.init_from
  if not init_from:
    init = functools.partial(model_lib.init_params, model_config,
                             context_length=config.train.context_length)
    return jax.jit(init, out_shardings=sharding)(rng)
  if init_from.endswith('.pt'):
    from himari_jax import convert  # optional module (PyTorch conversion), imported on demand
    source, params = convert.load_torch_checkpoint(init_from)
    source = model_lib.ModelConfig.from_config(source)
  else:
    loaded = checkpoint_lib.load_model(init_from)
    source, params = loaded.model_config, loaded.params
  if train_option(config, 'fresh_adapters'):
    params = adapters_lib.with_fresh_adapters(params, source, model_config, rng)
  expected = jax.tree.map(lambda s: s.shape, model_lib.param_shapes(model_config))
  got = jax.tree.map(lambda x: tuple(np.shape(x)), params)
  if got != expected:
    flat_e, flat_g = traverse_util.flatten_dict(expected), traverse_util.flatten_dict(got)
    diff = sorted('/'.join(k) for k in set(flat_e) ^ set(flat_g)
                  | {k for k in set(flat_e) & set(flat_g) if flat_e[k] != flat_g[k]})
    raise ConfigError(f'config.train.init_from={init_from}: its parameters do not match '
                      f'config.model (differing: {", ".join(diff[:6])}); set the '
                      '--config.model.* sizes to those of the checkpoint.')
  return replicate(jax.tree.map(lambda x: np.asarray(x, np.float32), params), sharding)


# ----------------------------------------------------------------------- logging


class MetricWriter:
  """metrics.jsonl and TensorBoard scalars, written by process 0 only."""

  def __init__(self, workdir: str, resume_step: int | None):
    self.active = jax.process_index() == 0
    self.path = os.path.join(workdir, 'metrics.jsonl')
    if not self.active:
      return
    if os.path.exists(self.path):
      # Drop records past the checkpoint we resume from (all of them on a fresh start):
      # those steps are replayed.
      with open(self.path) as f:
        kept = [line for line in f
                if line.strip() and json.loads(line)['step'] <= (resume_step or 0)]
      with open(self.path, 'w') as f:
        f.writelines(kept)
    self.tb = tb_writer.SummaryWriter(os.path.join(workdir, 'tensorboard'))

  def write(self, record: dict[str, Any]) -> None:
    if not self.active:
      return
    with open(self.path, 'a') as f:
      f.write(json.dumps(record) + '\n')
    scalars = {f'{record["kind"]}/{k}': float(v) for k, v in record.items()
               if isinstance(v, (int, float)) and k not in ('step', 'epoch')}
    self.tb.scalars(record['step'], scalars)
    self.tb.flush()

  def close(self) -> None:
    if self.active:
      self.tb.close()


def _format_eta(seconds: float) -> str:
  seconds = int(max(seconds, 0))
  return f'{seconds // 3600:d}:{seconds // 60 % 60:02d}:{seconds % 60:02d}'


# -------------------------------------------------------------------------- loop


def _check_finite(history: list[tuple[int, dict]], last_good: int | None, ckpt_dir: str) -> None:
  for step, metrics in history:
    values = {k: float(metrics[k]) for k in ('loss', 'grad_norm', 'update_norm')}
    if not all(math.isfinite(v) for v in values.values()):
      kept = (f'the last good checkpoint is step {last_good} in {ckpt_dir}' if last_good
              is not None else 'no checkpoint was saved')
      shown = ', '.join(f'{k}={v}' for k, v in values.items())
      raise TrainingDivergedError(
          f'training diverged at step {step + 1}: {shown}; {kept}. Lower '
          '--config.train.learning_rate, add warm-up steps or check the input data.')


def _log_epoch(metrics: dict[str, Any], collapse_threshold: float) -> None:
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


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
  """Trains FLAG-TRADER per `config`, checkpointing into `workdir` and resuming from it.

  Returns:
    The last epoch's metrics plus `best_step`, `best_checkpoint` (its step directory) and
    `best_<metric>`.

  Raises:
    ConfigError: an unusable config, before any work is done.
    TrainingDivergedError: a NaN/inf loss or gradient; no checkpoint of the bad state is saved.
  """
  model_config = validate_config(config)
  workdir = os.path.abspath(workdir)
  os.makedirs(workdir, exist_ok=True)
  t = config.train
  prepared = input_pipeline.prepare_data(config)
  num_windows = len(prepared.train_ends)
  steps_per_epoch = t.steps_per_epoch or max(1, num_windows // t.batch_size)
  total_steps = steps_per_epoch * t.num_epochs

  mesh = make_mesh()
  replicated = NamedSharding(mesh, P())
  data_sharding = NamedSharding(mesh, P('data'))
  local_batch = t.batch_size // jax.process_count()
  logging.info('process %d/%d, mesh %s over %d devices; %d training windows, %d validation '
               'bars; %d steps of %d (%d per process)', jax.process_index(),
               jax.process_count(), dict(mesh.shape), jax.device_count(), num_windows,
               len(prepared.val_ends), total_steps, t.batch_size, local_batch)

  model = model_lib.FlagTrader(model_config)
  root = jax.random.PRNGKey(config.seed)
  params = initial_params(config, model_config, jax.random.fold_in(root, 0), replicated)
  labels = model_lib.param_labels(params, freeze_base=model_config.freeze_base)
  counts = model_lib.count_params(params, labels)
  logging.info('parameters: %s', counts)
  optimizer = make_optimizer(t, labels, total_steps)
  schedule = learning_rate_schedule(t, total_steps)
  class_weights = jnp.asarray(prepared.class_weights)

  def init_state(params):
    return TrainState(step=jnp.zeros((), jnp.int32), params=params,
                      opt_state=optimizer.init(params), rng=jax.random.fold_in(root, 1))

  state = jax.jit(init_state, out_shardings=replicated)(params)
  del params  # the state owns them; its buffers are donated to the train step
  train_step = jax.jit(
      make_train_step(model, optimizer, labels, class_weights, schedule),
      in_shardings=(replicated, data_sharding), out_shardings=(replicated, replicated),
      donate_argnums=0)
  eval_step = jax.jit(make_eval_step(model, class_weights),
                      in_shardings=(replicated, data_sharding), out_shardings=replicated)

  ckpt_dir = os.path.join(workdir, checkpoint_lib.CHECKPOINT_SUBDIR)
  manager = checkpoint_lib.make_manager(ckpt_dir, best_metric=t.best_metric,
                                        keep_latest=train_option(config, 'keep_latest'))
  resume_step = manager.latest_step()
  # Training-loss sum and count of the epoch in progress, so a resumed epoch reports the
  # same mean as an uninterrupted one.
  epoch_loss = {'sum': 0.0, 'count': 0}
  if resume_step is not None:
    state, restored_meta = checkpoint_lib.restore(manager, resume_step,
                                                  checkpoint_lib.abstract_like(state))
    epoch_loss = restored_meta.get('epoch_loss', epoch_loss)
    logging.info('resumed from %s/%d', ckpt_dir, resume_step)
  writer = MetricWriter(workdir, resume_step)
  meta = {'config': config.to_dict(), 'normalizer': prepared.normalizer.to_dict(),
          'normalizers': {k: v.to_dict() for k, v in prepared.normalizers.items()},
          'class_weights': prepared.class_weights, 'data': prepared.summary,
          'param_counts': counts, 'steps_per_epoch': steps_per_epoch,
          'total_steps': total_steps}
  eval_batch = train_option(config, 'eval_batch_size')
  collapse = train_option(config, 'collapse_threshold')
  every = train_option(config, 'checkpoint_every_steps')

  step = start_step = int(resume_step or 0)
  last_good = resume_step
  history: list[tuple[int, dict]] = []
  epoch_metrics: dict[str, Any] = {}
  order_epoch = -1
  tick, tick_step = time.time(), step
  try:
    while step < total_steps:
      epoch = step // steps_per_epoch
      if epoch != order_epoch:
        order = input_pipeline.epoch_order(config.seed, epoch, num_windows,
                                           steps_per_epoch * t.batch_size)
        order_epoch = epoch
        if step % steps_per_epoch == 0:  # a fresh epoch, not one resumed part-way
          epoch_loss = {'sum': 0.0, 'count': 0}
      global_idx = order[(step - epoch * steps_per_epoch) * t.batch_size:][:t.batch_size]
      local_idx = global_idx[jax.process_index() * local_batch:][:local_batch]
      batch = input_pipeline.gather_batch(prepared, prepared.train_ends[local_idx],
                                          t.context_length)
      state, metrics = train_step(state, shard_batch(batch, data_sharding, t.batch_size))
      history.append((step, metrics))
      if step == start_step:
        jax.block_until_ready(metrics)
        logging.info('first step (compilation included) took %.1f s', time.time() - tick)
        tick, tick_step = time.time(), step + 1
      step += 1
      epoch_end = step % steps_per_epoch == 0
      periodic_save = every and step % every == 0
      if step % t.log_every_steps == 0 or epoch_end or periodic_save:
        # Syncs with the device only here, and always before a save: a diverged state is
        # never checkpointed.
        history = jax.device_get(history)
        _check_finite(history, last_good, ckpt_dir)
        for _, m in history:
          epoch_loss = {'sum': epoch_loss['sum'] + float(m['loss']),
                        'count': epoch_loss['count'] + 1}
        rate = (step - tick_step) / max(time.time() - tick, 1e-9)
        record = {'kind': 'train', 'step': step, 'epoch': epoch + 1,
                  **{k: float(np.mean([m[k] for _, m in history])) for k in history[0][1]},
                  'steps_per_sec': rate, 'samples_per_sec': rate * t.batch_size}
        writer.write(record)
        logging.info('step %d/%d epoch %d/%d | loss %.4f acc %.3f | %.1f steps/s %.0f '
                     'samples/s | ETA %s', step, total_steps, epoch + 1, t.num_epochs,
                     record['loss'], record['accuracy'], rate, rate * t.batch_size,
                     _format_eta((total_steps - step) / max(rate, 1e-9)))
        history, tick, tick_step = [], time.time(), step
      if epoch_end:
        epoch_metrics = {'step': step, 'epoch': epoch + 1,
                         'train_loss': epoch_loss['sum'] / epoch_loss['count'],
                         **evaluate(eval_step, state.params, prepared, t.context_length,
                                    eval_batch, data_sharding, collapse)}
        writer.write({'kind': 'val', **epoch_metrics})
        _log_epoch(epoch_metrics, collapse)
        checkpoint_lib.save(manager, step, state,
                            {**meta, 'epoch_metrics': epoch_metrics, 'epoch_loss': epoch_loss},
                            {k: epoch_metrics[k] for k in checkpoint_lib.VALIDATION_METRICS})
        last_good = step
        tick = time.time()  # throughput excludes validation
      elif periodic_save:
        checkpoint_lib.save(manager, step, state, {**meta, 'epoch_loss': epoch_loss})
        last_good = step
  finally:
    # Also on divergence or interruption: pending saves of good states complete.
    manager.wait_until_finished()
    writer.close()
  best = manager.best_step()
  best = manager.latest_step() if best is None else best
  metric_name, _ = checkpoint_lib.parse_best_metric(t.best_metric)
  best_metrics = checkpoint_lib.read_meta(manager, best).get('epoch_metrics', {})
  if not epoch_metrics:  # resumed from a finished run: report its last epoch
    epoch_metrics = checkpoint_lib.read_meta(manager, manager.latest_step()).get(
        'epoch_metrics', {})
  manager.close()
  return {**epoch_metrics, 'best_step': best,
          'best_checkpoint': os.path.join(ckpt_dir, str(best)),
          f'best_{metric_name}': best_metrics.get(metric_name)}
