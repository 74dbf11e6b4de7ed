"""JAX vs PyTorch on the seed-size FLAG-TRADER (88M parameters), same CPU, same process.

  python benchmarks/bench_vs_torch.py            # all rows, 5 interleaved repeats
  taskset -c 0 python benchmarks/bench_vs_torch.py --repeats=3   # one core for both

Rows:
  train step   batch 64, T = 1, class-weighted cross-entropy, AdamW on the trainable params
               (LoRA, LayerNorms, embeddings, head: SPEC's 2,938,371), grad-norm clip 1.0,
               dropout on. PyTorch: the reference model (frozen bases have requires_grad=False).
               JAX: `train.make_train_step` as training runs it (gradient w.r.t. the trainable
               subtree only, jit with the state donated); `--naive` adds the step that
               differentiates every weight.
  latency      one decision: a (1, 1, 60) state -> 3 logits on the host, eval mode.
               JAX: adapters merged into the bases (`model.merge_lora`), as `predict` does.
  throughput   10,000 bars scored at T = 1 in batches of 512. JAX: `predict`.
               PyTorch: the reference model under `torch.inference_mode`.

Both sides compute the same function. At T = 1 the JAX model skips the q / k projections,
whose output cannot matter (one key gets all the attention); PyTorch computes them, as the
original does.

Both frameworks load the same weights (the PyTorch model's state dict, converted) and the
logits are checked to agree. Each repeat runs every row of both frameworks back to back, so
machine noise hits both alike; the table shows medians over repeats (and the fastest run).
PyTorch uses `torch.set_num_threads(n)` with n = the cores this process may use, which is
what XLA's CPU thread pool uses.
"""

import copy
import os
import statistics
import sys
import time

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import app, flags

from himari_jax import cli, extras

try:
  torch = extras.import_extra('torch', 'torch', 'benchmarks/bench_vs_torch.py')
except extras.MissingExtraError as e:
  sys.exit(cli.error_line(e))

from himari_jax.inference import predict  # noqa: E402 - after the torch check
from himari_jax.model import convert, torch_reference  # noqa: E402
from himari_jax.model import flag_trader as model_lib
from himari_jax.training import train

_REPEATS = flags.DEFINE_integer('repeats', 5, 'Interleaved repeats of every row.')
_TRAIN_STEPS = flags.DEFINE_integer('train_steps', 5, 'Training steps timed per repeat.')
_LATENCY_CALLS = flags.DEFINE_integer('latency_calls', 50, 'Decisions timed per repeat.')
_BARS = flags.DEFINE_integer('bars', 10_000, 'Bars scored in the throughput row.')
_BATCH = flags.DEFINE_integer('batch_size', 64, 'Training batch.')
_INFER_BATCH = flags.DEFINE_integer('infer_batch_size', 512, 'Batch of the throughput row.')
_NAIVE = flags.DEFINE_bool('naive', False, 'Also time the JAX step that differentiates every '
                           'weight (XLA then drops the frozen ones\' unused gradients itself).')

CLASS_WEIGHTS = np.array([2.5, 0.83, 2.5], np.float32)  # SPEC's fixed weights


def _load() -> str:
  """The 1-minute load average: other processes on the machine skew the timings."""
  return f'{os.getloadavg()[0]:.2f}'


def _timed(fn, calls: int) -> float:
  """Mean seconds per call of `fn` over `calls` calls."""
  start = time.perf_counter()
  for _ in range(calls):
    fn()
  return (time.perf_counter() - start) / calls


class TorchRows:
  """The PyTorch reference: train step, one decision, and batched scoring.

  Training updates a copy, so inference keeps the weights the JAX side was checked against.
  """

  def __init__(self, reference: torch.nn.Module, batch: dict[str, np.ndarray]):
    self.model = reference.eval()
    self.trained = copy.deepcopy(reference).train()
    self.trainable = [p for p in self.trained.parameters() if p.requires_grad]
    self.optimizer = torch.optim.AdamW(self.trainable, lr=1e-4, weight_decay=0.01)
    self.inputs = torch.from_numpy(batch['inputs'])
    self.targets = torch.from_numpy(batch['targets'][:, -1]).long()
    self.weights = torch.from_numpy(CLASS_WEIGHTS)

  def train_step(self) -> float:
    self.optimizer.zero_grad(set_to_none=True)
    logits = self.trained(self.inputs)[:, -1]
    loss = torch.nn.functional.cross_entropy(logits, self.targets, weight=self.weights)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(self.trainable, 1.0)
    self.optimizer.step()
    return loss.item()

  def logits(self, states: np.ndarray) -> np.ndarray:
    """states: (batch, T, 60) -> logits at the last position (batch, 3)."""
    with torch.inference_mode():
      return self.model(torch.from_numpy(states))[:, -1].numpy()

  def score(self, feats: np.ndarray, batch_size: int) -> np.ndarray:
    """Logits (N, 3) of every bar of feats (N, 60), one T = 1 window per bar."""
    return np.concatenate([self.logits(feats[i:i + batch_size, None])
                           for i in range(0, len(feats), batch_size)])


class JaxRows:
  """The project's code paths: `train.make_train_step`, merged-LoRA inference, `predict`."""

  def __init__(self, params, model_config: model_lib.ModelConfig, batch: dict[str, np.ndarray],
               trainable_only_grad: bool = True):
    module = model_lib.FlagTrader(model_config)
    labels = model_lib.param_labels(params)
    train_config = ml_collections.ConfigDict(dict(learning_rate=1e-4, warmup_steps=0,
                                                  weight_decay=0.01, grad_clip=1.0))
    schedule = train.learning_rate_schedule(train_config, 1_000_000)
    optimizer = train.make_optimizer(train_config, labels, 1_000_000)
    step = train.make_train_step(module, optimizer, labels, jnp.asarray(CLASS_WEIGHTS),
                                 schedule, trainable_only_grad=trainable_only_grad)
    self.step = jax.jit(step, donate_argnums=0)
    trained = jax.tree.map(jnp.array, params)  # a private copy: the step donates its state
    self.state = train.TrainState(step=jnp.int32(0), params=trained,
                                  opt_state=optimizer.init(trained), rng=jax.random.key(0))
    self.batch = {k: jnp.asarray(v) for k, v in batch.items()}
    self.params, self.model_config = params, model_config
    self.merged, merged_config = model_lib.merge_lora(params, model_config)
    merged_module = model_lib.FlagTrader(merged_config)
    self.decide = jax.jit(
        lambda p, s: merged_module.apply({'params': p}, s, deterministic=True)[:, -1])

  def train_step(self) -> float:
    self.state, metrics = self.step(self.state, self.batch)
    return float(metrics['loss'])

  def logits(self, states: np.ndarray) -> np.ndarray:
    return np.asarray(self.decide(self.merged, states))

  def score(self, feats: np.ndarray, batch_size: int) -> np.ndarray:
    # predict pads the warm-up rows with NaN; score every row here, as PyTorch does.
    padded = np.concatenate([np.zeros((predict.first_available_bar(1), feats.shape[1]),
                                      np.float32), feats])
    return predict.predict_logits_from_features(
        self.params, self.model_config, padded, 1, batch_size=batch_size)[-len(feats):]


def main(argv):
  if len(argv) > 1:
    raise app.UsageError('Too many command-line arguments.')
  threads = len(os.sched_getaffinity(0))
  torch.set_num_threads(threads)
  rng = np.random.default_rng(0)
  batch = {'inputs': rng.standard_normal((_BATCH.value, 1, 60), np.float32),
           'targets': rng.integers(0, 3, (_BATCH.value, 1)).astype(np.int32),
           'mask': np.ones((_BATCH.value, 1), bool)}
  feats = np.clip(rng.standard_normal((_BARS.value, 60), np.float32), -10, 10)
  decision = feats[:1, None]

  torch.manual_seed(0)
  model_config = model_lib.ModelConfig(causal=False)
  reference = torch_reference.FlagTraderTorch.from_model_config(model_config)
  with torch.no_grad():  # non-zero adapters, as after fine-tuning
    for name, param in reference.named_parameters():
      if name.endswith('lora_B'):
        param.normal_(std=0.02)
  params = convert.torch_state_dict_to_flax(reference.state_dict(), model_config)
  counts = model_lib.count_params(params)
  print(f'FLAG-TRADER seed size: {counts["total"]:,} params, {counts["trainable"]:,} trainable; '
        f'{threads} CPU thread(s) for both (torch.set_num_threads({threads})); '
        f'jax {jax.__version__}, torch {torch.__version__}; load average {_load()}')

  torch_rows = TorchRows(reference, batch)
  jax_rows = {'': JaxRows(params, model_config, batch)}
  if _NAIVE.value:
    jax_rows[' (naive)'] = JaxRows(params, model_config, batch, trainable_only_grad=False)

  start = time.perf_counter()
  for rows in jax_rows.values():  # compile outside the timings
    rows.train_step()
  gap = max(np.abs(jax_rows[''].logits(decision) - torch_rows.logits(decision)).max(),
            np.abs(jax_rows[''].score(feats[:1024], _INFER_BATCH.value)
                   - torch_rows.score(feats[:1024], _INFER_BATCH.value)).max())
  print(f'JAX compilation: {time.perf_counter() - start:.1f} s; max |logit difference| JAX vs '
        f'PyTorch over 1,024 bars: {gap:.1e}')
  if gap > 1e-4:
    raise SystemExit('the two models disagree; the timings would not be comparable')
  torch_rows.train_step()

  times: dict[str, list[float]] = {}

  def record(name, seconds):
    times.setdefault(name, []).append(seconds)

  for _ in range(_REPEATS.value):
    record('train step (ms) | PyTorch', _timed(torch_rows.train_step, _TRAIN_STEPS.value))
    for suffix, rows in jax_rows.items():
      record(f'train step (ms) | JAX{suffix}', _timed(rows.train_step, _TRAIN_STEPS.value))
    record('latency, 1 decision (ms) | PyTorch',
           _timed(lambda: torch_rows.logits(decision), _LATENCY_CALLS.value))
    record('latency, 1 decision (ms) | JAX',
           _timed(lambda: jax_rows[''].logits(decision), _LATENCY_CALLS.value))
    record(f'{_BARS.value:,} bars (s) | PyTorch',
           _timed(lambda: torch_rows.score(feats, _INFER_BATCH.value), 1))
    record(f'{_BARS.value:,} bars (s) | JAX',
           _timed(lambda: jax_rows[''].score(feats, _INFER_BATCH.value), 1))

  print(f'\nmedian of {_REPEATS.value} interleaved repeats (fastest in brackets); '
        f'ratio = JAX / PyTorch, below 1 means JAX is faster; load average now {_load()}')
  print(f'{"row":<28} {"PyTorch":>17} {"JAX":>17} {"ratio":>6}')
  for row in dict.fromkeys(name.split(' | ')[0] for name in times):
    scale = 1e3 if '(ms)' in row else 1.0
    base = times[f'{row} | PyTorch']
    for suffix in [''] + ([' (naive)'] if row.startswith('train') and _NAIVE.value else []):
      jax_times = times[f'{row} | JAX{suffix}']
      ratio = statistics.median(jax_times) / statistics.median(base)
      label = row + suffix
      print(f'{label:<28} {scale * statistics.median(base):>8.2f} ({scale * min(base):>6.2f}) '
            f'{scale * statistics.median(jax_times):>8.2f} ({scale * min(jax_times):>6.2f}) '
            f'{ratio:>6.2f}')


if __name__ == '__main__':
  app.run(main)
