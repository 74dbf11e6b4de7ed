"""FLAG-TRADER model: seed parameter counts, causal masking, LoRA merging, init, freezing."""

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from himari_jax.model import flag_trader as model
from himari_jax.training import train

SMALL = model.ModelConfig(d_model=32, num_layers=2, num_heads=4, dim_feedforward=64,
                          max_length=16, lora_rank=4)
# One compiled program each instead of hundreds of op-by-op dispatches: much faster on CPU.
init_params = jax.jit(model.init_params, static_argnums=(0, 2))




@functools.partial(jax.jit, static_argnums=(0,), static_argnames='causal')
def apply(config, params, states, causal=None):
  return model.FlagTrader(config).apply({'params': params}, states, causal=causal)


def _random_adapters(params, seed=0):
  """Non-zero lora_B (zero at init) so the adapters change the function."""
  leaves, treedef = jax.tree_util.tree_flatten_with_path(params)
  rng = np.random.default_rng(seed)
  return jax.tree_util.tree_unflatten(treedef, [
      0.1 * rng.standard_normal(p.shape, np.float32) if 'lora_B' in jax.tree_util.keystr(path)
      else p for path, p in leaves])


def test_seed_parameter_counts_match_spec():
  shapes = model.param_shapes(model.ModelConfig())  # no weights allocated
  counts = model.count_params(shapes)
  assert counts == {'total': 87_955_971, 'trainable': 2_938_371, 'frozen': 85_017_600}
  lora = sum(int(np.prod(s.shape)) for path, s in jax.tree_util.tree_leaves_with_path(shapes)
             if 'lora_' in jax.tree_util.keystr(path))
  assert lora == 2_654_208


def test_causal_mask_hides_later_bars():
  params = _random_adapters(init_params(SMALL, jax.random.key(0), 8))
  states = jax.random.normal(jax.random.key(1), (2, 8, 60))
  changed = states.at[:, 5:].set(jax.random.normal(jax.random.key(2), (2, 3, 60)))
  before, after = (apply(SMALL, params, x) for x in (states, changed))
  np.testing.assert_array_equal(before[:, :5], after[:, :5])
  assert np.abs(before[:, 5:] - after[:, 5:]).min() > 1e-4


def test_no_mask_lets_every_position_see_the_whole_window():
  params = _random_adapters(init_params(SMALL, jax.random.key(0), 8))
  states = jax.random.normal(jax.random.key(1), (2, 8, 60))
  changed = states.at[:, 7:].add(1.0)
  unmasked = dataclasses.replace(SMALL, causal=False)
  before, after = (apply(unmasked, params, x) for x in (states, changed))
  assert np.abs(before[:, 0] - after[:, 0]).min() > 1e-5
  # The call-time override selects the same behaviour on a causal model.
  override = apply(SMALL, params, states, causal=False)
  np.testing.assert_allclose(override, before, atol=1e-6)


def test_merge_lora_computes_the_same_function():
  params = _random_adapters(init_params(SMALL, jax.random.key(0), 8))
  states = jax.random.normal(jax.random.key(3), (4, 8, 60))
  merged, merged_config = model.merge_lora(params, SMALL)
  assert not any('lora_' in jax.tree_util.keystr(p)
                 for p, _ in jax.tree_util.tree_leaves_with_path(merged))
  np.testing.assert_allclose(apply(merged_config, merged, states),
                             apply(SMALL, params, states), atol=1e-5)


def test_initialisation_follows_the_pytorch_original():
  config = model.ModelConfig(d_model=128, num_layers=1, num_heads=4, dim_feedforward=512,
                             max_length=64, lora_rank=16)
  p = init_params(config, jax.random.key(0))
  block = p['transformer_blocks_0']

  def check_uniform(x, bound):
    x = np.asarray(x)
    assert np.abs(x).max() <= bound
    # U(-b, b) has std b / sqrt(3).
    assert np.std(x) == pytest.approx(bound / np.sqrt(3), rel=0.05)

  check_uniform(block['attention']['q_proj']['base']['kernel'], 1 / np.sqrt(128))
  check_uniform(block['ffn_2']['base']['kernel'], 1 / np.sqrt(512))
  check_uniform(block['ffn_1']['base']['bias'], 1 / np.sqrt(128))
  check_uniform(block['attention']['v_proj']['lora_A'], 1 / np.sqrt(16))
  for name in ('q_proj', 'k_proj', 'v_proj', 'out_proj'):
    assert not np.any(block['attention'][name]['lora_B'])
  assert not np.any(block['ffn_1']['lora_B']) and not np.any(block['ffn_2']['lora_B'])
  for name in ('state_embedding', 'action_head'):
    assert np.std(p[name]['kernel']) == pytest.approx(0.02, rel=0.1)
    assert not np.any(p[name]['bias'])
  assert np.std(p['pos_embedding']) == pytest.approx(0.02, rel=0.05)
  for norm in (block['norm1'], block['norm2'], p['output_norm']):
    assert np.all(norm['scale'] == 1) and not np.any(norm['bias'])


@pytest.mark.slow
def test_frozen_params_stay_bit_identical_while_trainable_ones_move(tiny_config):
  """Several optimiser steps; the trainable-only gradient path and the full-tree path agree."""
  config = model.ModelConfig.from_config(tiny_config.model)
  params = init_params(config, jax.random.key(0), 8)
  labels = model.param_labels(params)
  optimizer = train.make_optimizer(tiny_config.train, labels, total_steps=10)
  schedule = train.learning_rate_schedule(tiny_config.train, 10)
  initial = train.TrainState(step=jnp.zeros((), jnp.int32), params=params,
                             opt_state=optimizer.init(params), rng=jax.random.PRNGKey(0))
  rng = np.random.default_rng(0)
  batches = [{'inputs': rng.normal(size=(8, 8, 60)).astype(np.float32),
              'targets': rng.integers(0, 3, (8, 8)).astype(np.int32),
              'mask': rng.random((8, 8)) < 0.8} for _ in range(3)]
  final = {}
  for trainable_only in (True, False):
    step = jax.jit(train.make_train_step(model.FlagTrader(config), optimizer, labels,
                                         jnp.ones(3), schedule,
                                         trainable_only_grad=trainable_only))
    state = initial
    for batch in batches:
      state, _ = step(state, batch)
    final[trainable_only] = state.params
  flat_labels = jax.tree.leaves(labels)
  before, after = jax.tree.leaves(params), jax.tree.leaves(final[True])
  kinds = {'frozen': 0, 'trainable': 0}
  for b, a, label in zip(before, after, flat_labels, strict=True):
    kinds[label] += 1
    if label == 'frozen':
      np.testing.assert_array_equal(np.asarray(b), np.asarray(a))
    else:
      assert np.any(np.asarray(b) != np.asarray(a))
  assert kinds['frozen'] and kinds['trainable']
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-6), final[True],
               final[False])


@pytest.mark.parametrize('causal', [True, False])
@pytest.mark.parametrize('length', [1, 8])
def test_fused_attention_gives_the_explicit_softmax_logits(causal, length):
  """attention_dropout=0 (jax.nn.dot_product_attention) == the softmax path, dropout off."""
  params = _random_adapters(init_params(SMALL, jax.random.key(0), 8))
  states = jax.random.normal(jax.random.key(1), (3, length, 60))
  explicit = apply(dataclasses.replace(SMALL, attention_dropout=0.1), params, states, causal=causal)
  fused = apply(dataclasses.replace(SMALL, attention_dropout=0.0), params, states, causal=causal)
  np.testing.assert_allclose(fused, explicit, atol=1e-5, rtol=0)


@pytest.mark.parametrize('length', [1, 8])
def test_attention_dropout_acts_only_in_training_and_only_when_set(length):
  params = _random_adapters(init_params(SMALL, jax.random.key(0), 8))
  states = jax.random.normal(jax.random.key(1), (2, length, 60))

  def logits(attention_dropout, deterministic):
    config = dataclasses.replace(SMALL, dropout_rate=0.0, attention_dropout=attention_dropout)
    return model.FlagTrader(config).apply({'params': params}, states,
                                          deterministic=deterministic,
                                          rngs={'dropout': jax.random.key(5)})

  np.testing.assert_allclose(logits(0.0, False), logits(0.0, True), atol=1e-6)
  assert np.abs(logits(0.5, False) - logits(0.5, True)).max() > 1e-3


def test_model_config_rejects_bad_attention_settings():
  with pytest.raises(ValueError, match='model.attention_dropout=1.0'):
    model.ModelConfig(attention_dropout=1.0)
  with pytest.raises(ValueError, match="model.attention_implementation='flash'"):
    model.ModelConfig(attention_implementation='flash')


def _loss_and_grads(config, params, batch):
  """Training-mode loss (dropout on) and its gradient with respect to every parameter."""

  def loss_fn(p):
    logits = model.FlagTrader(config).apply({'params': p}, batch['inputs'], deterministic=False,
                                            rngs={'dropout': jax.random.key(7)})
    return train.weighted_cross_entropy(logits, batch['targets'], batch['mask'], jnp.ones(3))[0]

  return jax.jit(jax.value_and_grad(loss_fn))(params)


def _random_batch(batch, length, seed=0):
  rng = np.random.default_rng(seed)
  return {'inputs': rng.normal(size=(batch, length, 60)).astype(np.float32),
          'targets': rng.integers(0, 3, (batch, length)).astype(np.int32),
          'mask': np.ones((batch, length), bool)}


@pytest.mark.slow
def test_remat_keeps_the_parameter_tree_loss_and_gradients():
  params = _random_adapters(init_params(SMALL, jax.random.key(0), 8))
  remat = dataclasses.replace(SMALL, remat=True)
  assert (jax.tree.structure(init_params(remat, jax.random.key(0), 8))
          == jax.tree.structure(params))
  batch = _random_batch(4, 8)
  jaxpr = jax.make_jaxpr(lambda p: model.FlagTrader(remat).apply({'params': p}, batch['inputs']))
  remats = [e for e in jaxpr(params).eqns if e.primitive.name in ('checkpoint', 'remat2')]
  assert len(remats) == remat.num_layers  # one rematerialised region per block
  loss, grads = _loss_and_grads(SMALL, params, batch)
  remat_loss, remat_grads = _loss_and_grads(remat, params, batch)
  np.testing.assert_allclose(remat_loss, loss, atol=1e-6, rtol=0)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-6, rtol=0), remat_grads,
               grads)


def test_bfloat16_compute_keeps_float32_params_and_logits_near_float32():
  params = _random_adapters(init_params(SMALL, jax.random.key(0), 8))
  bf16 = dataclasses.replace(SMALL, dtype='bfloat16')
  assert all(p.dtype == jnp.float32 for p in jax.tree.leaves(init_params(bf16, jax.random.key(0))))
  states = jax.random.normal(jax.random.key(1), (4, 8, 60))
  reference, low = apply(SMALL, params, states), apply(bf16, params, states)
  assert low.dtype == jnp.float32
  # bfloat16 keeps 8 mantissa bits (relative step 2^-8 = 0.4 %); errors add up over two layers.
  scale = float(np.abs(reference).max())
  np.testing.assert_allclose(low, reference, atol=0.05 * scale, rtol=0)
  assert not np.allclose(low, reference, atol=1e-6, rtol=0)  # bf16 really ran


@pytest.mark.slow
def test_bfloat16_training_steps_stay_finite_and_lower_the_loss(tiny_config):
  tiny_config.model.dtype = 'bfloat16'
  config = model.ModelConfig.from_config(tiny_config.model)
  params = init_params(config, jax.random.key(0), 8)
  labels = model.param_labels(params)
  optimizer = train.make_optimizer(tiny_config.train, labels, total_steps=20)
  step = jax.jit(train.make_train_step(model.FlagTrader(config), optimizer, labels, jnp.ones(3),
                                       train.learning_rate_schedule(tiny_config.train, 20)))
  state = train.TrainState(step=jnp.zeros((), jnp.int32), params=params,
                           opt_state=optimizer.init(params), rng=jax.random.PRNGKey(0))
  batch = _random_batch(8, 8)
  losses = []
  for _ in range(6):
    state, metrics = step(state, batch)
    losses.append(float(metrics['loss']))
  assert metrics['loss'].dtype == jnp.float32
  assert all(p.dtype == jnp.float32 for p in jax.tree.leaves(state.params))
  assert np.all(np.isfinite(losses)) and losses[-1] < losses[0]
