"""Training loop: `train_and_evaluate(config, workdir)`, in the style of the Flax examples.

Data flow (input_pipeline.py): `prepare_data` loads the training files, computes features and
labels, splits each file chronologically (train | embargo | validation), fits one normaliser
per asset on its training rows only and lists the end bars of the training windows. A batch
is gathered on the host from window end indices, so no window array is ever materialised.

Objective (`config.train.objective`): 'classification' is class-weighted cross-entropy over
every valid position of every window (labels without a known future and feature warm-up rows
are masked), normalised like PyTorch's weighted `CrossEntropyLoss`: `sum(w[y] * nll) /
sum(w[y])` over the global batch. 'sharpe' and 'utility' read the logits as a position
(objectives.py) and minimise the negative net-of-cost Sharpe ratio (or utility) of the
windows' next-bar returns (`PreparedData.forward_returns`, per file), costs included.
'reinforce' trains the logits as a SELL / HOLD / BUY policy by REINFORCE on the same net
return (`objectives.reinforce_loss`; `reinforce_samples` plays per window, `entropy_coef`);
it is validated, and trades, by its greedy action.

Parallelism: one `jax.jit`-compiled step over a 1-D device mesh ('data', mesh.py); the batch
is sharded over 'data', params and optimiser state are replicated. The same code runs on one
CPU, several GPUs, or several hosts after `jax.distributed.initialize()`: each process
gathers only its slice of the global batch (`jax.make_array_from_process_local_data`).

Initial params (initialization.py): fresh, or those of `config.train.init_from`.

Freezing: `optax.multi_transform` with `set_to_zero` on the frozen base weights, and the
gradient is taken with respect to the trainable subtree only (frozen weights enter the loss
as a non-differentiated argument). XLA also prunes the frozen weight gradients of a full-tree
gradient inside this jitted step, since `set_to_zero` discards them (benchmarks/bench_train.py
measures the same FLOPs for both); the split guarantees it instead of relying on dead-code
elimination, which a full-tree gradient norm or clip would defeat (+46 % FLOPs at seed size).

One run at a time per workdir: a second one is refused (`lock_workdir`), naming the first's PID.

Checkpoints (checkpoint.py): every `checkpoint_every_steps` steps and at every epoch end,
keeping the latest few and the best by `best_metric`; a workdir with checkpoints resumes (the
`TrainState` holds the epoch's loss sums too). A NaN/inf loss, gradient or update raises
`TrainingDivergedError` before anything is saved (train_logging.py).

Pre-emption (preemption.py): SIGTERM (how spot machines are stopped) or SIGINT during
training finishes the step in flight, logs the metrics so far, saves a checkpoint of that
step, waits for the pending saves and returns with `preempted` set (launch/train.py then
exits with status 0); a second signal stops at once. Rerunning the same command resumes
bit-identically.

Determinism: the window order of epoch e is a function of (seed, e) and the dropout key of
step s is `fold_in(rng, s)`, so a run resumed from any checkpoint replays the same batches.

Validation (validation.py, every epoch end) scores each validation bar from the last
position of its own trailing window, exactly as `predict.py` does at inference: loss,
accuracies and confusion of a classifier, or a position model's net / gross Sharpe ratio,
turnover and IC (`objectives.evaluate_positions`; rank checkpoints with
`best_metric='-val_net_sharpe'`).
"""

from __future__ import annotations

import contextlib
import os
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

from himari_jax import config as config_lib
from himari_jax import locks
from himari_jax.data import features as features_lib
from himari_jax.data import input_pipeline
from himari_jax.data import labels as labels_lib
from himari_jax.data import ohlcv as data_lib
from himari_jax.model import checkpoint as checkpoint_lib
from himari_jax.model import flag_trader as model_lib
from himari_jax.model import objectives as objectives_lib
from himari_jax.training import initialization, preemption, train_logging, validation
from himari_jax.training import mesh as mesh_lib

CLASS_WEIGHT_MODES = ('fixed', 'inverse', 'sqrt', 'none')
COMPUTE_DTYPES = ('float32', 'bfloat16', 'float16')
ConfigError = config_lib.ConfigError  # raised here for an unusable config; kept importable
TrainingDivergedError = train_logging.TrainingDivergedError
WORKDIR_LOCK = 'train.lock'  # in the workdir: one run writes into it at a time


# ----------------------------------------------------------------------------- config


def validate_config(config: ml_collections.ConfigDict) -> model_lib.ModelConfig:
  """Fails fast, before any data is read, on settings that cannot work: every numeric field
  in its range (`config.TRAINING_RANGES`), then the combinations below.

  Returns:
    The model config built from `config.model`.

  Raises:
    ConfigError: naming the field and the change that fixes it.
  """
  t = config.train
  devices = jax.device_count()
  config_lib.check_ranges(config, config_lib.TRAINING_RANGES)
  try:
    model_config = model_lib.ModelConfig.from_config(config.model)
  except ValueError as e:
    raise ConfigError(str(e)) from e
  if config.model.dtype not in COMPUTE_DTYPES:
    raise ConfigError(f'config.model.dtype={config.model.dtype!r} is not supported; use one '
                      f'of {", ".join(COMPUTE_DTYPES)}.')
  for name in ('batch_size', 'eval_batch_size'):
    value = t[name]
    if value % devices:
      lower, upper = value // devices * devices, (value // devices + 1) * devices
      raise ConfigError(
          f'config.train.{name}={value} is not divisible by the {devices} devices; set '
          f'--config.train.{name} to a multiple of {devices}, e.g. '
          f'{f"{lower} or " if lower else ""}{upper}.')
  if not config.model.causal and t.context_length > 1:
    raise ConfigError(
        f'config.model.causal=False with config.train.context_length={t.context_length}: '
        'without the causal mask each position of a window sees the later bars that decide '
        'its label; set --config.model.causal=True, or --config.train.context_length=1 (as '
        'the unmasked original was trained).')
  if t.context_length > config.model.max_length:
    raise ConfigError(
        f'config.train.context_length={t.context_length} exceeds config.model.max_length='
        f'{config.model.max_length}; lower the context or raise --config.model.max_length.')
  if t.class_weights not in CLASS_WEIGHT_MODES:
    raise ConfigError(f'config.train.class_weights={t.class_weights!r} is unknown; use one '
                      f'of {", ".join(CLASS_WEIGHT_MODES)}.')
  if config.labels.kind not in labels_lib.RULES:
    raise ConfigError(f"config.labels.kind={config.labels.kind!r} is unknown; use one of "
                      f"{', '.join(labels_lib.RULES)}.")
  objective = trading_objective(config)
  try:
    metric, _ = checkpoint_lib.parse_best_metric(t.best_metric)
  except ValueError as e:
    raise ConfigError(f'config.train.best_metric: {e}') from e
  metrics = checkpoint_lib.TRADING_METRICS if objective else checkpoint_lib.CLASSIFICATION_METRICS
  if metric not in metrics:
    raise ConfigError(f'config.train.best_metric={t.best_metric!r} is not reported for '
                      f"objective '{t.objective}'; use one of "
                      f'{", ".join(metrics)} (e.g. '
                      f"{'-val_net_sharpe' if objective else 'val_loss'}).")
  if objective and t.context_length < 2:
    raise ConfigError(f"config.train.objective='{objective.kind}' needs "
                      f'config.train.context_length >= 2 (the cost is charged on position '
                      f'changes inside a window); got {t.context_length}.')
  universe = input_pipeline.is_universe(config.data.train)
  items = [] if universe else config_lib.split_list(config.data.train)
  if universe:
    input_pipeline.parse_universe(config.data.train)  # a folder or glob; load_universe checks
  elif not items:
    raise ConfigError('config.data.train is empty; give a builtin dataset name '
                      f'({", ".join(data_lib.builtin_dataset_names())}) or a CSV path.')
  builtin = set(data_lib.builtin_dataset_names())
  for item in items:
    if item not in builtin and not os.path.isfile(item):
      raise ConfigError(f'config.data.train: {item!r} is neither a builtin dataset nor an '
                        f'existing file; builtin names: {", ".join(sorted(builtin))}.')
  try:
    features_lib.check_training_feature_set(features_lib.feature_set_of(config),
                                            bool(config.data.allow_lookahead))
  except features_lib.FeatureSetError as e:
    raise ConfigError(str(e)) from e
  if t.init_from and not os.path.exists(t.init_from):
    raise ConfigError(f'config.train.init_from={t.init_from!r} does not exist; give a '
                      'training workdir, its checkpoints/ folder or a PyTorch .pt file.')
  return model_config


# ------------------------------------------------------------------- loss, optimiser


def trading_objective(config: ml_collections.ConfigDict) -> objectives_lib.TradingObjective | None:
  """`config.train`'s trading objective (`objectives.TradingObjective.from_config`), None for
  'classification'.

  Raises:
    ConfigError: an unknown objective or an invalid cost / penalty, naming the field.
  """
  try:
    return objectives_lib.TradingObjective.from_config(config.train)
  except ValueError as e:
    raise ConfigError(str(e)) from e


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
  """Everything a restart needs besides the data: step, params, optimiser state, RNG key,
  and the training-loss sum and step count of the epoch in progress (so a resumed epoch
  reports the same mean loss as an uninterrupted one)."""

  step: jax.Array
  params: Any
  opt_state: Any
  rng: jax.Array
  loss_sum: jax.Array = np.float32(0.0)
  loss_count: jax.Array = np.int32(0)


def create_train_state(config: ml_collections.ConfigDict, model_config: model_lib.ModelConfig,
                       root: jax.Array, sharding: NamedSharding,
                       total_steps: int) -> tuple[TrainState, optax.GradientTransformation, Any]:
  """Step 0 of a run, replicated: initial params (initialization.py), optimiser state, RNG.

  Returns:
    (state, optimizer, labels): the optimiser of `make_optimizer` and the params' label tree
    ('trainable' / 'frozen').
  """
  params = initialization.initial_params(config, model_config, jax.random.fold_in(root, 0),
                                         sharding)
  labels = model_lib.param_labels(params, freeze_base=model_config.freeze_base)
  logging.info('parameters: %s', model_lib.count_params(params, labels))
  optimizer = make_optimizer(config.train, labels, total_steps)
  state = jax.jit(lambda p: TrainState(
      step=jnp.zeros((), jnp.int32), params=p, opt_state=optimizer.init(p),
      rng=jax.random.fold_in(root, 1), loss_sum=jnp.zeros((), jnp.float32),
      loss_count=jnp.zeros((), jnp.int32)), out_shardings=sharding)(params)
  return state, optimizer, labels


def make_train_step(model: model_lib.FlagTrader, optimizer: optax.GradientTransformation,
                    labels: Any, class_weights: jax.Array, schedule: optax.Schedule, *,
                    trainable_only_grad: bool = True,
                    steps_per_epoch: int | None = None,
                    objective: objectives_lib.TradingObjective | None = None) -> Callable:
  """`step(state, batch) -> (state, metrics)`, not yet jitted.

  The loss is `weighted_cross_entropy` on a classification batch (inputs, targets, mask), or,
  with a trading `objective`, its net-of-cost loss (`objectives.make_loss_fn`) on a trading
  batch (inputs, forward_return, mask; `input_pipeline.gather_batch(..., trading=True)`).
  metrics: loss, the loss's aux scalars (accuracy; for a trading objective also sharpe,
  gross_sharpe, mean_return, turnover, mean_abs_position), grad_norm, update_norm,
  learning_rate.

  `trainable_only_grad=False` differentiates the whole parameter tree (the naive way; the
  benchmark compares the two). The state's loss sums restart at every multiple of
  `steps_per_epoch` (None: they never restart).
  """

  trading_loss = objectives_lib.make_loss_fn(objective) if objective else None

  def loss_fn(params, batch, rng):
    logits = model.apply({'params': params}, batch['inputs'], deterministic=False,
                         rngs={'dropout': rng})
    if trading_loss:  # 'reinforce' draws its actions from a key of its own
      return trading_loss(logits.astype(jnp.float32), batch, jax.random.fold_in(rng, 1))
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
    metrics = {'loss': loss, **aux,
               'grad_norm': optax.tree.norm(trainable_grads),
               'update_norm': optax.tree.norm(split_params(updates, labels)[0]),
               'learning_rate': schedule(state.step)}
    fresh = state.step % steps_per_epoch == 0 if steps_per_epoch else False
    loss_sum = jnp.where(fresh, 0.0, state.loss_sum) + loss.astype(jnp.float32)
    loss_count = jnp.where(fresh, 0, state.loss_count) + 1
    return state.replace(step=state.step + 1, params=params, opt_state=opt_state,
                         loss_sum=loss_sum, loss_count=loss_count), metrics

  return step


# -------------------------------------------------------------------------- loop


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str,
                       prepared: input_pipeline.PreparedData | None = None) -> dict[str, Any]:
  """Trains FLAG-TRADER per `config`, checkpointing into `workdir` and resuming from it.

  `prepared`: the training data when a caller already built it (`input_pipeline.prepare_data`
  of `config` on frames and features it holds, e.g. one fold of a universe); None loads
  `config.data.train`.

  Returns:
    The last epoch's metrics plus `best_step`, `best_checkpoint` (its step directory) and
    `best_<metric>`; after a SIGTERM / SIGINT also `preempted` (the signal's name) and
    `preempted_step` (the step saved, where a rerun resumes).

  Raises:
    ConfigError: an unusable config, before any work is done.
    data.DataError: training data it refuses (`plausibility.check_bars`), before anything
      is written.
    locks.LockError: another run is writing into `workdir`; nothing is written.
    TrainingDivergedError: a NaN/inf loss or gradient; no checkpoint of the bad state is saved.
  """
  model_config = validate_config(config)
  if prepared is None:  # data errors before anything is written
    prepared = input_pipeline.prepare_data(config)
  workdir = os.path.abspath(workdir)
  os.makedirs(workdir, exist_ok=True)
  with lock_workdir(workdir):
    return _train_and_evaluate(config, workdir, model_config, prepared)


def lock_workdir(workdir: str) -> contextlib.AbstractContextManager:
  """The workdir's lock (`WORKDIR_LOCK`), held by process 0 while a run writes into it.

  Raises:
    locks.LockError: another run holds it (naming its PID); nothing has been written.
  """
  if jax.process_index():
    return contextlib.nullcontext()  # the hosts of one run share process 0's lock
  return locks.hold_lock(os.path.join(workdir, WORKDIR_LOCK), f'the training workdir {workdir}')


def _train_and_evaluate(config: ml_collections.ConfigDict, workdir: str,
                        model_config: model_lib.ModelConfig,
                        prepared: input_pipeline.PreparedData) -> dict[str, Any]:
  t = config.train
  steps_per_epoch = t.steps_per_epoch or max(1, len(prepared.train_ends) // t.batch_size)
  total_steps = steps_per_epoch * t.num_epochs
  mesh = mesh_lib.make_mesh()
  replicated, data_sharding = NamedSharding(mesh, P()), NamedSharding(mesh, P('data'))
  train_logging.log_start(mesh, prepared, total_steps, t.batch_size)

  model = model_lib.FlagTrader(model_config)
  state, optimizer, labels = create_train_state(
      config, model_config, jax.random.PRNGKey(config.seed), replicated, total_steps)
  class_weights = jnp.asarray(prepared.class_weights)
  objective = trading_objective(config)
  train_step = jax.jit(
      make_train_step(model, optimizer, labels, class_weights,
                      learning_rate_schedule(t, total_steps), steps_per_epoch=steps_per_epoch,
                      objective=objective),
      in_shardings=(replicated, data_sharding), out_shardings=(replicated, replicated),
      donate_argnums=0)
  collapse = t.collapse_threshold
  evaluate = validation.make_evaluator(
      model, mesh, objective=objective, class_weights=class_weights,
      context_length=t.context_length, batch_size=t.eval_batch_size,
      collapse_threshold=collapse)

  ckpt_dir = os.path.join(workdir, checkpoint_lib.CHECKPOINT_SUBDIR)
  manager = checkpoint_lib.make_manager(ckpt_dir, best_metric=t.best_metric,
                                        keep_latest=t.keep_latest)
  state, start_step = checkpoint_lib.restore_latest(manager, state)
  meta = checkpoint_lib.training_meta(
      config, prepared, param_counts=model_lib.count_params(state.params, labels),
      steps_per_epoch=steps_per_epoch, total_steps=total_steps)
  every = t.checkpoint_every_steps
  writer = train_logging.MetricWriter(workdir, start_step or None)
  logger = train_logging.StepLogger(writer, start_step=start_step, total_steps=total_steps,
                                    num_epochs=t.num_epochs, batch_size=t.batch_size,
                                    ckpt_dir=ckpt_dir)
  batches = input_pipeline.train_batches(
      prepared, seed=config.seed, batch_size=t.batch_size, context_length=t.context_length,
      steps_per_epoch=steps_per_epoch, start_step=start_step, total_steps=total_steps,
      process_index=jax.process_index(), process_count=jax.process_count(),
      trading=objective is not None, sampling=input_pipeline.sampling_of(config))
  epoch_metrics: dict[str, Any] = {}
  saved, preempted = start_step, None
  try:
    with preemption.stop_requests(manager) as stop_requested:
      for index, epoch, batch in batches:
        state, metrics = train_step(state, mesh_lib.shard_batch(batch, data_sharding,
                                                                t.batch_size))
        logger.add(index, metrics)
        step = index + 1
        epoch_end, periodic_save = step % steps_per_epoch == 0, every and step % every == 0
        preempted = stop_requested(step) if step < total_steps else None  # the last finishes
        if step % t.log_every_steps == 0 or epoch_end or periodic_save or preempted:
          logger.flush(step, epoch)  # always before a save: a diverged state is never saved
        if epoch_end:
          loss_sum, loss_count = jax.device_get((state.loss_sum, state.loss_count))
          epoch_metrics = {'step': step, 'epoch': epoch + 1,
                           'train_loss': float(loss_sum) / int(loss_count),
                           **evaluate(state.params, prepared)}
          logger.log_epoch(epoch_metrics, collapse)
          checkpoint_lib.save(manager, step, state, {**meta, 'epoch_metrics': epoch_metrics},
                              checkpoint_lib.ranking_metrics(epoch_metrics, t.best_metric))
          logger.restart_clock(step)  # throughput excludes validation
        elif periodic_save or preempted:
          checkpoint_lib.save(manager, step, state, meta)
        if epoch_end or periodic_save or preempted:
          logger.last_good = saved = step
        if preempted:
          break
  finally:
    # Also on divergence or interruption: pending saves of good states complete.
    checkpoint_lib.finish_saves(manager)
    writer.close()
  if not preempted:
    return checkpoint_lib.final_metrics(manager, t.best_metric, epoch_metrics)
  train_logging.log_preemption(preempted, saved, total_steps, ckpt_dir)
  return {**checkpoint_lib.final_metrics(manager, t.best_metric, epoch_metrics),
          'preempted': preempted, 'preempted_step': saved}
