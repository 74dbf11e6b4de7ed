"""PyTorch checkpoint conversion: parity with the PyTorch reference, round trips, clear errors."""

import json
import os
import pathlib
import pickle
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import load_config_file
from seed_reference import seed_matrix

from himari_jax.data import features as features_lib
from himari_jax.data import input_pipeline
from himari_jax.data import ohlcv as data
from himari_jax.inference import predict
from himari_jax.model import checkpoint as checkpoint_lib
from himari_jax.model import convert
from himari_jax.model import flag_trader as model_lib
from himari_jax.training import initialization, mesh

pytestmark = pytest.mark.extra
torch = pytest.importorskip('torch')
torch_reference = pytest.importorskip('himari_jax.model.torch_reference')

SMALL = dict(d_model=32, num_layers=2, num_heads=4, dim_feedforward=64, lora_rank=4,
             max_length=32)


def _reference(seed=0, **sizes):
  """A random PyTorch reference in eval mode, with non-zero lora_B so adapters matter."""
  torch.manual_seed(seed)
  reference = torch_reference.FlagTraderTorch(**sizes)
  with torch.no_grad():
    for name, param in reference.named_parameters():
      if name.endswith('lora_B'):
        param.normal_(std=0.05)
  return reference.eval()


def _torch_config(reference_sizes):
  sizes = {'state_dim': 60, 'action_dim': 3, 'num_heads': 8, **reference_sizes}
  return {key: sizes[key] for key in convert.TORCH_CONFIG_KEYS}


def _save(path, reference, **entries):
  torch.save({'model_state_dict': reference.state_dict(), **entries}, path)
  return path


def _states(batch, length, seed=1):
  return np.random.default_rng(seed).normal(size=(batch, length, 60)).astype(np.float32)


def _logits_both(reference, model_config, params, states, causal):
  reference.causal = causal
  with torch.no_grad():
    expected = reference(torch.from_numpy(states)).numpy()
  apply = jax.jit(model_lib.FlagTrader(model_config).apply, static_argnames='causal')
  got = apply({'params': params}, jnp.asarray(states), causal=causal)
  return expected, np.asarray(got)


@pytest.fixture(scope='module')
def small_pt(tmp_path_factory):
  reference = _reference(**SMALL)
  path = tmp_path_factory.mktemp('pt') / 'flag_trader_best.pt'
  _save(path, reference, config=_torch_config(SMALL), epoch=7, val_loss=0.71,
        val_accuracy=np.float64(0.55), optimizer_state_dict={'state': {}, 'param_groups': []})
  return path, reference


@pytest.mark.parametrize('length', [1, 32])
@pytest.mark.parametrize('causal', [False, True])
def test_small_logits_match_pytorch(small_pt, length, causal):
  path, reference = small_pt
  config, params = convert.load_torch_checkpoint(path)
  expected, got = _logits_both(reference, model_lib.ModelConfig.from_config(config), params,
                               _states(3, length), causal)
  np.testing.assert_allclose(got, expected, atol=1e-4, rtol=0)
  if length > 1:  # the mask must actually change something, or this test proves nothing
    other, _ = _logits_both(reference, model_lib.ModelConfig.from_config(config), params,
                            _states(3, length), not causal)
    assert np.abs(other - expected).max() > 1e-3


def test_config_and_metadata(small_pt):
  path, _ = small_pt
  loaded = convert.read_torch_checkpoint(path)
  config = loaded.model_config
  assert set(config) == set(load_config_file('default').model)  # a drop-in `config.model`
  assert (config.d_model, config.num_layers, config.num_heads, config.dim_feedforward,
          config.lora_rank, config.max_length) == (32, 2, 4, 64, 4, 32)
  assert config.causal is False  # the original applies no mask
  assert loaded.layout == 'model_state_dict'
  assert loaded.metadata == {'epoch': 7, 'val_loss': 0.71, 'val_accuracy': 0.55}
  # Exactly FlagTrader's tree, so train_and_evaluate can start from it.
  model_config = model_lib.ModelConfig.from_config(config)
  shapes = model_lib.param_shapes(model_config)
  assert jax.tree.structure(loaded.params) == jax.tree.structure(shapes)
  assert jax.tree.map(lambda p: (p.shape, p.dtype), loaded.params) == jax.tree.map(
      lambda p: (p.shape, p.dtype), shapes)


@pytest.mark.slow
def test_seed_size_parity_and_counts(tmp_path):
  reference = _reference()
  path = _save(tmp_path / 'seed.pt', reference, config=_torch_config(
      dict(d_model=768, num_layers=12, dim_feedforward=3072, lora_rank=16)))
  config, params = convert.load_torch_checkpoint(path)
  model_config = model_lib.ModelConfig.from_config(config)
  assert model_config == model_lib.ModelConfig(causal=False)
  counts = model_lib.count_params(params, model_lib.param_labels(params))
  assert counts == {'total': 87_955_971, 'trainable': 2_938_371, 'frozen': 85_017_600}
  for length, causal in [(1, False), (32, False), (32, True)]:
    expected, got = _logits_both(reference, model_config, params, _states(2, length), causal)
    np.testing.assert_allclose(got, expected, atol=1e-4, rtol=0)


def test_old_layout_infers_sizes(tmp_path):
  sizes = dict(d_model=32, num_layers=3, dim_feedforward=48, lora_rank=2, max_length=12)
  reference = _reference(**sizes)  # 8 heads, the default an old file cannot override
  path = tmp_path / 'old.pt'
  torch.save({'model': reference.state_dict(),
              'config': {'state_dim': 60, 'action_dim': 3, 'max_length': 12}}, path)
  loaded = convert.read_torch_checkpoint(path)
  assert loaded.layout == 'model'
  model_config = model_lib.ModelConfig.from_config(loaded.model_config)
  assert model_config == model_lib.ModelConfig(num_heads=8, causal=False, **sizes)
  expected, got = _logits_both(reference, model_config, loaded.params, _states(2, 5), False)
  np.testing.assert_allclose(got, expected, atol=1e-4, rtol=0)


def test_bare_state_dict_loads(tmp_path):
  sizes = {**SMALL, 'num_heads': 8}  # a bare state dict has no config: 8 heads are assumed
  reference = _reference(**sizes)
  torch.save(reference.state_dict(), tmp_path / 'bare.pt')
  loaded = convert.read_torch_checkpoint(tmp_path / 'bare.pt')
  assert loaded.layout == 'state_dict'
  model_config = model_lib.ModelConfig.from_config(loaded.model_config)
  assert model_config == model_lib.ModelConfig(causal=False, **sizes)
  expected, got = _logits_both(reference, model_config, loaded.params, _states(2, 6), False)
  np.testing.assert_allclose(got, expected, atol=1e-4, rtol=0)


def _random_params(model_config, seed=0):
  """Random params of the model's tree (no zero lora_B or unit LayerNorms to hide mistakes)."""
  rng = np.random.default_rng(seed)
  return jax.tree.map(lambda p: jnp.asarray(0.05 * rng.standard_normal(p.shape, np.float32)),
                      model_lib.param_shapes(model_config))


@pytest.mark.parametrize('targets, causal', [(model_lib.LORA_PROJECTIONS, True),
                                             (('q_proj', 'v_proj'), False)])
def test_round_trip_is_exact(tmp_path, targets, causal):
  model_config = model_lib.ModelConfig(lora_targets=targets, causal=causal, lora_alpha=8.0,
                                       **SMALL)
  params = _random_params(model_config)
  path = tmp_path / 'export.pt'
  convert.save_torch_checkpoint(path, params, model_config, epoch=3, val_loss=0.5,
                                history=[0.9, 0.5], extra_state={'ema': np.zeros(60)})
  loaded = convert.read_torch_checkpoint(path)
  assert model_lib.ModelConfig.from_config(loaded.model_config) == model_config
  assert loaded.metadata == {'epoch': 3, 'val_loss': 0.5}
  assert jax.tree.structure(loaded.params) == jax.tree.structure(params)
  for got, want in zip(jax.tree.leaves(loaded.params), jax.tree.leaves(params), strict=True):
    np.testing.assert_array_equal(np.asarray(got), np.asarray(want))


def test_export_loads_into_pytorch(tmp_path):
  model_config = model_lib.ModelConfig(causal=True, **SMALL)
  params = _random_params(model_config, seed=3)
  path = tmp_path / 'export.pt'
  convert.save_torch_checkpoint(path, params, model_config)
  checkpoint = torch.load(path, weights_only=True)
  assert set(checkpoint['config']) == set(convert.TORCH_CONFIG_KEYS)
  reference = torch_reference.FlagTraderTorch(**checkpoint['config'], max_length=32, causal=True)
  reference.load_state_dict(checkpoint['model_state_dict'])  # strict: same keys and shapes
  expected, got = _logits_both(reference.eval(), model_config, params, _states(2, 9), True)
  np.testing.assert_allclose(got, expected, atol=1e-4, rtol=0)


def test_export_refuses_mismatched_params_and_writes_nothing(tmp_path):
  model_config = model_lib.ModelConfig(**SMALL)
  params = _random_params(model_config)
  path = tmp_path / 'export.pt'
  bigger = model_lib.ModelConfig(**{**SMALL, 'dim_feedforward': 128})
  with pytest.raises(convert.ConversionError, match='ffn.0.base.weight'):
    convert.save_torch_checkpoint(path, params, bigger)
  with pytest.raises(ValueError, match='extra entry note'):
    convert.save_torch_checkpoint(path, params, model_config, note=object())
  assert os.listdir(tmp_path) == []


def _state_dict_variant(reference, change):
  state = dict(reference.state_dict())
  change(state)
  return state


@pytest.mark.parametrize('change, message', [
    (lambda s: s.pop('transformer_blocks.1.norm2.bias'),
     r'missing keys \(1\): transformer_blocks.1.norm2.bias'),
    (lambda s: s.update({'critic_head.weight': torch.zeros(1, 32)}),
     r'unexpected keys \(1\): critic_head.weight'),
    (lambda s: s.update({'output_norm.num_batches_tracked': torch.zeros((), dtype=torch.long)}),
     r'unexpected keys \(1\): output_norm.num_batches_tracked'),
    (lambda s: s.update({'transformer_blocks.0.ffn.3.lora.lora_B': torch.zeros(4, 31)}),
     r'wrong shapes \(1\): transformer_blocks.0.ffn.3.lora.lora_B \(4, 31\) \(expected \(4, 32\)'),
    (lambda s: s.update({'transformer_blocks.0.norm1.weight': torch.zeros(32, dtype=torch.long)}),
     'dtype torch.int64'),
])
def test_mismatched_state_dict_is_reported(tmp_path, change, message):
  reference = _reference(**SMALL)
  path = tmp_path / 'bad.pt'
  torch.save({'model_state_dict': _state_dict_variant(reference, change),
              'config': _torch_config(SMALL)}, path)
  with pytest.raises(convert.ConversionError, match=message):
    convert.load_torch_checkpoint(path)


def test_another_model_is_refused(tmp_path):
  other = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.ReLU(), torch.nn.Linear(8, 10))
  torch.save({'model_state_dict': other.state_dict(), 'epoch': 1}, tmp_path / 'cnn.pt')
  with pytest.raises(convert.ConversionError,
                     match=r'not a FLAG-TRADER state dict: cannot infer model.d_model'):
    convert.load_torch_checkpoint(tmp_path / 'cnn.pt')
  torch.save([torch.zeros(3)], tmp_path / 'list.pt')
  with pytest.raises(convert.ConversionError, match='not a FLAG-TRADER checkpoint.*list'):
    convert.load_torch_checkpoint(tmp_path / 'list.pt')


def test_unreadable_files(small_pt, tmp_path):
  data = pathlib.Path(small_pt[0]).read_bytes()
  (tmp_path / 'truncated.pt').write_bytes(data[:len(data) // 2])
  (tmp_path / 'empty.pt').write_bytes(b'')
  for name in ('truncated.pt', 'empty.pt'):
    with pytest.raises(convert.ConversionError, match='truncated or corrupted'):
      convert.load_torch_checkpoint(tmp_path / name)
  with pytest.raises(convert.ConversionError, match='no such file'):
    convert.load_torch_checkpoint(tmp_path / 'absent.pt')


class _Payload:
  """Unpickling this creates a marker file: what a malicious checkpoint could do instead."""

  def __init__(self, marker):
    self.marker = marker

  def __reduce__(self):
    return pathlib.Path.touch, (pathlib.Path(self.marker),)


@pytest.mark.parametrize('writer', ['torch.save', 'pickle.dump'])
def test_code_in_pickle_is_refused(tmp_path, writer):
  marker = tmp_path / 'pwned'
  checkpoint = {'model_state_dict': {'action_head.weight': _Payload(marker)}, 'config': {}}
  path = tmp_path / 'evil.pt'
  if writer == 'torch.save':
    torch.save(checkpoint, path)
  else:
    with open(path, 'wb') as f:
      pickle.dump(checkpoint, f, protocol=2)
  with pytest.raises(convert.ConversionError, match='refused for security'):
    convert.load_torch_checkpoint(path)
  assert not marker.exists()
  # The payload is live: an unrestricted load runs it.
  if writer == 'torch.save':
    torch.load(path, weights_only=False)
  else:
    with open(path, 'rb') as f:
      pickle.load(f)
  assert marker.exists()


TINY = dict(d_model=16, num_layers=1, num_heads=2, dim_feedforward=32, lora_rank=4,
            max_length=16)


@pytest.fixture
def tiny_pt(tmp_path):
  """The original layout at the sizes of configs/flag_trader.py:tiny."""
  return _save(tmp_path / 'tiny.pt', _reference(**TINY), config=_torch_config(TINY), epoch=4,
               val_loss=0.9)


def test_converted_run_is_a_run(tmp_path, tiny_pt, tiny_config):
  step_dir = convert.convert_to_run(tiny_pt, tmp_path / 'run', tiny_config, feature_set='himari')
  assert step_dir == str(tmp_path / 'run' / 'checkpoints' / '0')
  loaded = checkpoint_lib.load_model(tmp_path / 'run')
  source = convert.read_torch_checkpoint(tiny_pt)
  assert loaded.model_config == model_lib.ModelConfig.from_config(source.model_config)
  assert not loaded.model_config.causal and loaded.config.train.context_length == 1
  assert loaded.config.data.train == tiny_config.data.train  # the rest of --config is kept
  for got, want in zip(jax.tree.leaves(loaded.params), jax.tree.leaves(source.params),
                       strict=True):
    np.testing.assert_array_equal(got, np.asarray(want))
  assert loaded.meta['normalizer_source'].startswith('fitted by the converter')
  assert loaded.meta['feature_set'] == loaded.config.data.feature_set == 'himari'
  fitted = input_pipeline.prepare_data(loaded.config).normalizer
  np.testing.assert_array_equal(loaded.normalizer.mean, fitted.mean)
  assert loaded.meta['source']['metadata'] == {'epoch': 4, 'val_loss': 0.9}
  # Fine-tuning starts from the run or from the .pt itself (config.train.init_from).
  sharding = jax.sharding.NamedSharding(mesh.make_mesh(), jax.sharding.PartitionSpec())
  for init_from in (str(tmp_path / 'run'), str(tiny_pt)):
    config = loaded.config.copy_and_resolve_references()
    config.train.init_from = init_from
    params = initialization.initial_params(config, loaded.model_config, jax.random.key(0), sharding)
    for got, want in zip(jax.tree.leaves(params), jax.tree.leaves(loaded.params), strict=True):
      np.testing.assert_array_equal(np.asarray(got), want)


def test_run_exports_and_converts_back(tmp_path, tiny_pt, tiny_config):
  normalizer = features_lib.Normalizer(mean=np.arange(60, dtype=np.float32),
                                       std=np.full(60, 3.0, np.float32))
  convert.convert_to_run(tiny_pt, tmp_path / 'run', tiny_config, normalizer, 'himari')
  exported = convert.run_to_torch_checkpoint(tmp_path / 'run', tmp_path / 'back.pt')
  assert exported.meta['normalizer_source'] == 'given to the converter'
  back = convert.read_torch_checkpoint(tmp_path / 'back.pt')
  np.testing.assert_array_equal(back.normalizer.std, normalizer.std)
  assert back.feature_set == 'himari' and back.normalizer.clip == features_lib.CLIP
  for got, want in zip(jax.tree.leaves(back.params), jax.tree.leaves(exported.params),
                       strict=True):
    np.testing.assert_array_equal(np.asarray(got), want)
  convert.convert_to_run(tmp_path / 'back.pt', tmp_path / 'again', tiny_config)
  again = checkpoint_lib.load_model(tmp_path / 'again')
  assert again.meta['normalizer_source'].startswith('stored in')
  np.testing.assert_array_equal(again.normalizer.mean, normalizer.mean)


def test_failed_conversion_writes_nothing(tmp_path, tiny_config):
  reference = _reference(**TINY)
  state = dict(reference.state_dict())
  state['action_head.weight'] = torch.zeros(3, 17)
  torch.save({'model_state_dict': state, 'config': _torch_config(TINY)}, tmp_path / 'bad.pt')
  with pytest.raises(convert.ConversionError, match='wrong shapes'):
    convert.convert_to_run(tmp_path / 'bad.pt', tmp_path / 'out' / 'run', tiny_config)
  assert sorted(os.listdir(tmp_path)) == ['bad.pt']
  (tmp_path / 'used').mkdir()
  (tmp_path / 'used' / 'notes.txt').write_text('keep')
  with pytest.raises(convert.ConversionError, match='not empty'):
    convert.convert_to_run(tmp_path / 'bad.pt', tmp_path / 'used', tiny_config)
  assert os.listdir(tmp_path / 'used') == ['notes.txt']


def _convert_cli(repo_root, *args):
  return subprocess.run([sys.executable, str(repo_root / 'launch' / 'convert_checkpoint.py'),
                         *args], capture_output=True, text=True, timeout=120, check=False)


def test_cli_converts_and_fails_cleanly(tmp_path, tiny_pt, repo_root):
  stats = tmp_path / 'stats.json'
  stats.write_text(json.dumps({'mean': [0.5] * 60, 'std': [2.0] * 60}))
  config = f'--config={repo_root / "configs" / "flag_trader.py"}:tiny'
  # Statistics belong to 'himari' inputs (the default, seed_causal, is fed raw and would
  # refuse them), so this also proves --feature_set reaches the converter.
  done = _convert_cli(repo_root, f'--input={tiny_pt}', f'--output={tmp_path / "run"}',
                      f'--normalizer={stats}', '--feature_set=himari', config)
  assert done.returncode == 0, done.stderr
  converted = checkpoint_lib.load_model(tmp_path / 'run')
  assert converted.normalizer.std.tolist() == [2.0] * 60
  assert converted.config.data.feature_set == 'himari'
  truncated = tmp_path / 'truncated.pt'
  truncated.write_bytes(tiny_pt.read_bytes()[:1000])
  failed = _convert_cli(repo_root, f'--input={truncated}', f'--output={tmp_path / "never"}',
                        config)
  assert failed.returncode != 0 and 'truncated or corrupted' in failed.stderr
  assert not (tmp_path / 'never').exists()


# Feature sets: a seed .pt is scored on the seed's own input, never silently on another.


def test_seed_pt_scored_with_seed_exact_matches_pytorch_on_the_seeds_matrix(tmp_path, tiny_pt,
                                                                              tiny_config):
  """Converted, loaded and scored as an entry point does, a seed-layout file gives PyTorch's
  logits for the seed's own feature matrix (computed bar by bar from SPEC 3 in the test)."""
  convert.convert_to_run(tiny_pt, tmp_path / 'run', tiny_config, feature_set='seed_exact')
  loaded = checkpoint_lib.load_model(tmp_path / 'run')
  assert features_lib.feature_set_of(loaded.config) == loaded.meta['feature_set'] == 'seed_exact'
  assert loaded.normalizer.is_identity and 'not evidence' in loaded.meta['lookahead_warning']
  df = data.builtin_dataset('btc_usdt_1h_2020_2024', fill_gaps=True).iloc[2000:2600]
  feats = loaded.normalizer.apply(
      features_lib.compute_features(df, features_lib.feature_set_of(loaded.config)))
  got = predict.predict_logits_from_features(loaded.params, loaded.model_config, feats,
                                             int(loaded.config.train.context_length))
  rows = np.arange(predict.first_available_bar(1), len(df))
  states = np.zeros((len(rows), 1, 60), np.float32)
  states[:, 0, :22] = seed_matrix(df, rows)
  reference = _reference(**TINY)  # the weights tiny_pt holds (same seed)
  with torch.no_grad():
    expected = reference(torch.from_numpy(states)).numpy()[:, 0]
  np.testing.assert_allclose(got[rows], expected, atol=1e-4, rtol=0)
  assert np.isnan(got[:rows[0]]).all()
  # The same weights on this project's normalised inputs say something else entirely.
  himari = predict.predict_logits_from_features(
      loaded.params, loaded.model_config,
      features_lib.fit_normalizer('himari', features_lib.compute_features(df))(
          features_lib.compute_features(df)), 1)
  assert np.abs(himari[rows] - expected).max() > 1e-2


def test_seed_pt_defaults_to_seed_causal_with_raw_inputs(tmp_path, tiny_pt, tiny_config):
  convert.convert_to_run(tiny_pt, tmp_path / 'run', tiny_config)
  loaded = checkpoint_lib.load_model(tmp_path / 'run')
  assert loaded.config.data.feature_set == loaded.meta['feature_set'] == 'seed_causal'
  assert loaded.normalizer.is_identity and 'lookahead_warning' not in loaded.meta
  assert loaded.meta['normalizer_source'].startswith('identity')
  # An export carries its set: it converts back to seed_causal and refuses any other.
  convert.run_to_torch_checkpoint(tmp_path / 'run', tmp_path / 'back.pt')
  back = convert.read_torch_checkpoint(tmp_path / 'back.pt')
  assert back.feature_set == 'seed_causal' and back.normalizer.is_identity
  assert 'feature_set' not in back.metadata
  again = convert.load_pt_model(tmp_path / 'back.pt', tiny_config)
  assert again.meta['feature_set'] == 'seed_causal'
  with pytest.raises(convert.ConversionError,
                     match="records its feature set: the model was trained on feature set "
                           "'seed_causal' but would be scored with 'seed_exact'"):
    convert.load_pt_model(tmp_path / 'back.pt', tiny_config, feature_set='seed_exact')


def test_seed_sets_refuse_statistics_and_unknown_sets(tmp_path, tiny_pt, tiny_config):
  stats = features_lib.Normalizer(mean=np.ones(60, np.float32), std=np.ones(60, np.float32))
  with pytest.raises(convert.ConversionError, match="'seed_causal' is fed raw.*statistics given"):
    convert.convert_to_run(tiny_pt, tmp_path / 'run', tiny_config, stats)
  with pytest.raises(convert.ConversionError, match="unknown feature set 'raw'"):
    convert.convert_to_run(tiny_pt, tmp_path / 'run', tiny_config, feature_set='raw')
  assert not (tmp_path / 'run').exists()
  torch.save({'model_state_dict': _reference(**TINY).state_dict(), 'feature_set': 'raw'},
             tmp_path / 'odd.pt')
  with pytest.raises(convert.ConversionError, match="`feature_set` entry 'raw' is not a feature"):
    convert.read_torch_checkpoint(tmp_path / 'odd.pt')
