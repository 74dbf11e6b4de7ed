"""Adapter files: exact round trip, merge equals unmerged, swap, base identity, size."""

import dataclasses

import jax
import numpy as np
import pytest
from conftest import load_config_file
from flax import traverse_util

from himari_jax.data import features
from himari_jax.model import adapters
from himari_jax.model import flag_trader as model

CONTEXT = 8


def _trained_like(params, key, trainable_only=True):
  """Params with every trainable leaf (and lora_B) moved off its init, as training would."""
  labels = traverse_util.flatten_dict(model.param_labels(params))
  flat = traverse_util.flatten_dict(params)
  keys = jax.random.split(key, len(flat))
  moved = {k: v + 0.05 * jax.random.normal(kk, v.shape)
           if labels[k] == 'trainable' or not trainable_only else v
           for (k, v), kk in zip(flat.items(), keys, strict=True)}
  return jax.tree.map(np.asarray, traverse_util.unflatten_dict(moved))


def _logits(params, model_config, states):
  return np.asarray(model.FlagTrader(model_config).apply({'params': params}, states))


@pytest.fixture(scope='module')
def setup():
  config = load_config_file('flag_trader', 'tiny')
  config.train.context_length = CONTEXT
  model_config = model.ModelConfig.from_config(config.model)
  base = model.init_params(model_config, jax.random.key(0), CONTEXT)
  states = jax.random.normal(jax.random.key(1), (4, CONTEXT, model_config.state_dim))
  rows = np.random.default_rng(0).normal(size=(50, features.NUM_FEATURES)).astype(np.float32)
  normalizer = features.Normalizer.fit(rows)
  return config, model_config, base, states, normalizer


def test_save_load_apply_is_exact(setup, tmp_path):
  config, model_config, base, _, normalizer = setup
  tuned = _trained_like(base, jax.random.key(2))
  path = tmp_path / 'btc.npz'
  adapters.save_adapters(adapters.extract_adapters(
      tuned, model_config, normalizer=normalizer, config=config, info={'step': 7}), path)
  loaded = adapters.load_adapters(path)
  # Onto the untouched base (its own adapter leaves are ignored): the tuned params, bit for bit.
  applied = adapters.apply_adapters(base, loaded)
  assert jax.tree.structure(applied) == jax.tree.structure(tuned)
  for got, want in zip(jax.tree.leaves(applied), jax.tree.leaves(tuned), strict=True):
    np.testing.assert_array_equal(got, want)
  assert loaded.model_config == model_config
  np.testing.assert_array_equal(loaded.normalizer.mean, normalizer.mean)
  np.testing.assert_array_equal(loaded.normalizer.std, normalizer.std)
  assert loaded.config.train.context_length == CONTEXT
  assert loaded.info == {'step': 7}


def test_merged_adapters_give_the_unmerged_logits(setup, tmp_path):
  _, model_config, base, states, _ = setup
  tuned = _trained_like(base, jax.random.key(3))
  path = tmp_path / 'a.npz'
  adapters.save_adapters(adapters.extract_adapters(tuned, model_config), path)
  merged, merged_config = adapters.merge_adapters(base, adapters.load_adapters(path))
  assert merged_config.lora_targets == ()
  assert not any('lora' in '/'.join(k) for k in traverse_util.flatten_dict(merged))
  unmerged = _logits(tuned, model_config, states)
  np.testing.assert_allclose(_logits(merged, merged_config, states), unmerged, atol=1e-5)
  # The adapters matter: the base alone computes something else.
  assert np.abs(_logits(base, model_config, states) - unmerged).max() > 1e-3


def test_swapping_adapter_sets_on_one_base(setup, tmp_path):
  _, model_config, base, states, _ = setup
  sets = {}
  for name, seed in (('btc', 4), ('eth', 5)):
    tuned = _trained_like(base, jax.random.key(seed))
    adapters.save_adapters(adapters.extract_adapters(tuned, model_config), tmp_path / name)
    sets[name] = (adapters.load_adapters(tmp_path / name), _logits(tuned, model_config, states))
  params = adapters.apply_adapters(base, sets['btc'][0])
  np.testing.assert_array_equal(_logits(params, model_config, states), sets['btc'][1])
  params = adapters.apply_adapters(params, sets['eth'][0])  # swap: replaces the btc set
  np.testing.assert_array_equal(_logits(params, model_config, states), sets['eth'][1])
  assert np.abs(sets['btc'][1] - sets['eth'][1]).max() > 1e-3


def test_adapters_refuse_another_base(setup, tmp_path):
  _, model_config, base, _, _ = setup
  path = tmp_path / 'a.npz'
  adapters.save_adapters(adapters.extract_adapters(
      _trained_like(base, jax.random.key(6)), model_config, info={'base_from': 'runs/pre'}),
      path)
  loaded = adapters.load_adapters(path)
  other = model.init_params(model_config, jax.random.key(99), CONTEXT)
  with pytest.raises(adapters.AdapterError, match='trained on base .* runs/pre'):
    adapters.apply_adapters(other, loaded)
  # One changed base weight is enough.
  nudged = jax.tree.map(np.array, base)
  nudged['transformer_blocks_0']['ffn_2']['base']['bias'][0] += 1e-6
  with pytest.raises(adapters.AdapterError, match='trained on base'):
    adapters.merge_adapters(nudged, loaded)
  # Trainable leaves are not part of the base's identity.
  assert (adapters.base_fingerprint(_trained_like(base, jax.random.key(7)))
          == adapters.base_fingerprint(base) == loaded.base_fingerprint)


def test_adapter_file_is_much_smaller_than_the_model(tmp_path):
  model_config = model.ModelConfig(d_model=128, num_layers=2, num_heads=4, dim_feedforward=512,
                                   max_length=16, lora_rank=4)
  params = jax.tree.map(np.asarray, model.init_params(model_config, jax.random.key(0)))
  size = adapters.save_adapters(adapters.extract_adapters(params, model_config),
                                tmp_path / 'a.npz')
  full = tmp_path / 'full.npz'
  np.savez(full, **{'/'.join(k): v for k, v in traverse_util.flatten_dict(params).items()})
  counts = model.count_params(params)
  assert size / full.stat().st_size < 0.1
  # The trainable weights plus the JSON header and ~300 bytes of zip entry per array.
  num_arrays = len(jax.tree.leaves(adapters.extract_adapters(params, model_config).params))
  assert size < counts['trainable'] * 4 + 2048 + 400 * num_arrays


def test_unreadable_files_are_clear_errors(setup, tmp_path):
  _, model_config, base, _, _ = setup
  garbage = tmp_path / 'garbage.npz'
  garbage.write_bytes(b'not a zip')
  with pytest.raises(adapters.AdapterError, match='cannot read adapters'):
    adapters.load_adapters(garbage)
  with pytest.raises(adapters.AdapterError, match='cannot read adapters'):
    adapters.load_adapters(tmp_path / 'missing.npz')
  plain = tmp_path / 'plain.npz'
  np.savez(plain, x=np.zeros(3))
  with pytest.raises(adapters.AdapterError, match='not an adapter file'):
    adapters.load_adapters(plain)
  # Adapters saved for one rank, header edited to claim another: leaves no longer fit.
  wrong = adapters.extract_adapters(base, model_config)
  wrong = dataclasses.replace(wrong, model_config=dataclasses.replace(model_config, lora_rank=2))
  adapters.save_adapters(wrong, tmp_path / 'wrong.npz')
  with pytest.raises(adapters.AdapterError, match='wrong shape: .*lora_A'):
    adapters.load_adapters(tmp_path / 'wrong.npz')


def test_adapted_model_needs_run_config(setup):
  _, model_config, base, _, _ = setup
  with pytest.raises(adapters.AdapterError, match='no run config'):
    adapters.adapted_model(base, adapters.extract_adapters(base, model_config))


@pytest.mark.parametrize('source_targets', [(), model.LORA_PROJECTIONS])
def test_fresh_adapters_keep_the_source_function(setup, source_targets):
  """Pre-trained (every weight trained, with or without adapters) -> fresh LoRA: same logits."""
  _, model_config, _, states, _ = setup
  source_config = dataclasses.replace(model_config, lora_targets=source_targets,
                                      freeze_base=False)
  source = _trained_like(model.init_params(source_config, jax.random.key(8), CONTEXT),
                         jax.random.key(9), trainable_only=False)
  params = adapters.with_fresh_adapters(source, source_config, model_config, jax.random.key(10))
  shapes = jax.tree.map(lambda s: s.shape, model.param_shapes(model_config))
  assert jax.tree.map(np.shape, params) == shapes
  flat = traverse_util.flatten_dict(params)
  lora_b = [v for k, v in flat.items() if k[-1] == 'lora_B']
  lora_a = [v for k, v in flat.items() if k[-1] == 'lora_A']
  assert len(lora_b) == 6 * model_config.num_layers
  assert all(not v.any() for v in lora_b) and all(v.any() for v in lora_a)
  np.testing.assert_allclose(_logits(params, model_config, states),
                             _logits(source, source_config, states), atol=1e-5)
  # The base is the source's with its adapters folded in, computed as load_base_params does.
  merged, _ = model.merge_lora(source, source_config)
  assert adapters.base_fingerprint(params) == adapters.base_fingerprint(merged)
