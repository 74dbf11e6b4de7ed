"""Checkpoint retention (latest + best), load_model for inference, and its error messages."""

import logging as pylogging
import os
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from absl import logging
from conftest import load_config_file

from himari_jax.data import features
from himari_jax.model import checkpoint
from himari_jax.model import flag_trader as model
from himari_jax.training import train

# (step, validation metrics or None for a mid-epoch save)
SAVES = [(1, None), (2, {'val_loss': 0.5, 'val_accuracy': 0.4}), (3, None),
         (4, {'val_loss': 0.7, 'val_accuracy': 0.6}), (5, None)]


def _write_run(workdir, config, *, keep_latest=2, extra_meta=None):
  """Saves SAVES with params shifted by the step number, so a loaded step is recognisable."""
  model_config = model.ModelConfig.from_config(config.model)
  params = jax.jit(model.init_params, static_argnums=(0, 2))(model_config, jax.random.key(0), 8)
  optimizer = optax.adamw(1e-3)
  normalizer = features.Normalizer(mean=np.arange(60, dtype=np.float32),
                                   std=np.full(60, 2.0, np.float32))
  manager = checkpoint.make_manager(os.path.join(workdir, 'checkpoints'),
                                    best_metric=config.train.best_metric,
                                    keep_latest=keep_latest)
  for step, metrics in SAVES:
    shifted = jax.tree.map(lambda p, s=step: p + s, params)
    state = train.TrainState(step=jnp.int32(step), params=shifted,
                             opt_state=optimizer.init(shifted), rng=jax.random.PRNGKey(0))
    meta = {'config': config.to_dict(), 'normalizer': normalizer.to_dict(),
            'class_weights': np.ones(3, np.float32), 'epoch_metrics': metrics or {},
            **(extra_meta or {})}
    checkpoint.save(manager, step, state, meta, metrics)
  checkpoint.finish_saves(manager)
  manager.close()
  return params


@pytest.fixture(scope='module')
def run(tmp_path_factory):
  config = load_config_file('flag_trader', 'tiny')
  workdir = str(tmp_path_factory.mktemp('run'))
  return workdir, config, _write_run(workdir, config)


def _assert_step(loaded, params, step):
  assert loaded.step == step
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, np.asarray(b) + step, rtol=1e-6),
               loaded.params, params)


def test_per_asset_normalisers_are_loaded_and_picked_by_asset(tmp_path):
  config = load_config_file('flag_trader', 'tiny')
  eth = features.Normalizer(mean=np.ones(60, np.float32), std=np.full(60, 3.0, np.float32))
  _write_run(str(tmp_path), config, keep_latest=1, extra_meta={'normalizers': {
      'btc_usdt': {'mean': list(range(60)), 'std': [2.0] * 60}, 'eth_usdt': eth.to_dict()}})
  loaded = checkpoint.load_model(str(tmp_path))
  assert list(loaded.normalizers) == ['btc_usdt', 'eth_usdt']
  np.testing.assert_array_equal(loaded.for_asset('eth_usdt').normalizer.std, eth.std)
  for asset in ('btc_usdt', 'doge_usdt', None):  # an unseen asset keeps the first one
    np.testing.assert_array_equal(loaded.for_asset(asset).normalizer.mean, np.arange(60))


def test_keeps_latest_and_best_steps(run):
  workdir, _, _ = run
  assert sorted(int(d) for d in os.listdir(os.path.join(workdir, 'checkpoints'))
                if d.isdigit()) == [2, 4, 5]


def test_load_model_best_latest_and_numbered(run):
  workdir, config, params = run
  best = checkpoint.load_model(workdir)
  _assert_step(best, params, 2)
  assert all(isinstance(x, np.ndarray) for x in jax.tree.leaves(best.params))
  assert best.model_config == model.ModelConfig.from_config(config.model)
  assert best.config.train.context_length == config.train.context_length
  np.testing.assert_array_equal(best.normalizer.mean, np.arange(60))
  assert best.meta['epoch_metrics']['val_loss'] == 0.5
  _assert_step(checkpoint.load_model(workdir, 'latest'), params, 5)
  _assert_step(checkpoint.load_model(os.path.join(workdir, 'checkpoints'), 4), params, 4)


def test_best_metric_can_be_maximised(tmp_path, tiny_config):
  tiny_config.train.best_metric = '-val_accuracy'
  params = _write_run(str(tmp_path), tiny_config, keep_latest=1)
  assert sorted(int(d) for d in os.listdir(tmp_path / 'checkpoints') if d.isdigit()) == [4, 5]
  _assert_step(checkpoint.load_model(tmp_path), params, 4)


def test_unknown_best_metric_is_rejected():
  with pytest.raises(ValueError, match='val_loss'):
    checkpoint.parse_best_metric('sharpe')


def test_missing_empty_and_corrupt_checkpoints_fail_clearly(run, tmp_path):
  with pytest.raises(checkpoint.CheckpointError, match='no such checkpoint directory'):
    checkpoint.load_model(tmp_path / 'absent')
  with pytest.raises(checkpoint.CheckpointError, match='no checkpoint steps'):
    checkpoint.load_model(tmp_path)
  with pytest.raises(checkpoint.CheckpointError, match='init_from'):
    checkpoint.load_model(tmp_path / 'flag_trader_best.pt')
  with pytest.raises(checkpoint.CheckpointError, match='available steps'):
    checkpoint.load_model(run[0], 3)
  damaged = tmp_path / 'damaged'
  shutil.copytree(run[0], damaged)
  shutil.rmtree(damaged / 'checkpoints' / '2' / 'state')
  with pytest.raises(checkpoint.CheckpointError,
                     match=r'^checkpoint step 2 is damaged: .*/2/state/\S+ is missing '):
    checkpoint.load_model(damaged)
  os.remove(damaged / 'checkpoints' / '2' / checkpoint.MANIFEST)  # as saved before manifests
  with pytest.raises(checkpoint.CheckpointError,
                     match=r'^checkpoint step 2 cannot be restored \(.*\); it may be incomplete'):
    checkpoint.load_model(damaged)


def test_quiet_orbax_logging_keeps_other_records_and_real_warnings():
  checkpoint.quiet_orbax_logging()
  checkpoint.quiet_orbax_logging()  # idempotent
  absl_logger = logging.get_absl_logger()
  assert sum(isinstance(f, checkpoint._OrbaxChatterFilter) for f in absl_logger.filters) == 1

  def record(path, level, message):
    return absl_logger.makeRecord('absl', level, path, 1, message, None, None)

  orbax = '/site-packages/orbax/checkpoint/checkpoint_manager.py'
  assert not absl_logger.filter(record(orbax, pylogging.INFO, 'Saving checkpoint'))
  assert not absl_logger.filter(record(orbax, pylogging.WARNING, 'did not provide metrics.'))
  assert absl_logger.filter(record(orbax, pylogging.WARNING, 'disk full'))
  assert absl_logger.filter(record('/repo/himari_jax/training/train.py', pylogging.INFO, 'step 5'))


def test_temporary_folders_of_interrupted_saves_are_removed(tmp_path):
  config = load_config_file('flag_trader', 'tiny')
  # What a save cut short by kill -9 leaves behind: Orbax's temporary step folder.
  partial = tmp_path / 'checkpoints' / '9.orbax-checkpoint-tmp-1234'
  partial.mkdir(parents=True)
  (partial / 'state').write_text('half written')
  _write_run(str(tmp_path), config)  # a resumed run's manager: cleans up before its first save
  assert not partial.exists()
  assert sorted(int(d) for d in os.listdir(tmp_path / 'checkpoints')) == [2, 4, 5]


def test_an_undefined_best_metric_ranks_last():
  metrics = {'val_loss': 1.5, 'val_net_sharpe': float('nan'), 'val_ic': None, 'epoch': 3}
  ranked = checkpoint.ranking_metrics(metrics, '-val_net_sharpe')
  assert ranked == {'val_loss': 1.5, 'val_net_sharpe': -np.inf, 'val_ic': -np.inf}
  assert checkpoint.ranking_metrics(metrics, 'val_loss')['val_net_sharpe'] == np.inf
  with pytest.raises(ValueError, match="'-val_accuracy' is not among"):
    checkpoint.ranking_metrics(metrics, '-val_accuracy')


# Fields a run saved before they existed lacks (and its old embargo convention, -1).
_LATER_FIELDS = {'data': ('feature_set', 'allow_lookahead'),
                 'labels': ('k', 'k_up', 'k_down', 'window', 'cost_floor'),
                 'model': ('attention_dropout', 'attention_implementation', 'remat'),
                 'train': ('checkpoint_every_steps', 'keep_latest', 'eval_batch_size',
                           'collapse_threshold', 'fresh_adapters', 'objective',
                           'cost_multiplier', 'turnover_penalty', 'risk_aversion', 'long_only',
                           'reinforce_samples', 'entropy_coef')}


def _old_style(config):
  saved = config.to_dict()
  for section, names in _LATER_FIELDS.items():
    for name in names:
      del saved[section][name]
  saved['data']['embargo'] = -1
  return saved


def test_upgrade_saved_config_fills_what_an_old_run_lacks():
  from himari_jax import config as config_lib
  from himari_jax.data import input_pipeline

  tiny = load_config_file('flag_trader', 'tiny')
  saved = _old_style(tiny)
  upgraded = config_lib.upgrade_saved_config(saved)
  default = config_lib.default_config()
  for section, names in _LATER_FIELDS.items():
    for name in names:
      assert upgraded[section][name] == default[section][name], (section, name)
  assert upgraded.data.feature_set == 'himari' and upgraded.train.objective == 'classification'
  assert upgraded.data.embargo is None and input_pipeline.embargo_bars(upgraded) == 6
  assert upgraded.model.d_model == 16 and upgraded.variant == 'tiny'  # kept as saved
  assert 'objective' not in saved['train'] and saved['data']['embargo'] == -1  # not changed
  assert config_lib.upgrade_saved_config(tiny).to_dict() == tiny.to_dict()  # nothing to do


def test_load_model_reads_a_run_saved_before_later_fields(tmp_path):
  import ml_collections

  from himari_jax.inference import predict

  old = ml_collections.ConfigDict(_old_style(load_config_file('flag_trader', 'tiny')))
  _write_run(str(tmp_path), old, keep_latest=1)
  loaded = checkpoint.load_model(str(tmp_path))
  assert loaded.objective == 'classification' and loaded.feature_set == 'himari'
  assert not loaded.config.train.long_only and loaded.config.train.init_from == ''
  with pytest.raises(ValueError, match='objective=classification scores actions'):
    predict.predicted_positions(loaded, None)


def _largest_file(folder):
  return max((p for p in folder.rglob('*') if p.is_file()), key=lambda p: p.stat().st_size)


def _flip_a_bit(path):
  payload = bytearray(path.read_bytes())
  payload[len(payload) // 2] ^= 0x10
  path.write_bytes(bytes(payload))


def test_every_saved_step_has_a_manifest_of_all_its_files(run):
  workdir, _, _ = run
  for step in (2, 4, 5):
    step_dir = os.path.join(workdir, 'checkpoints', str(step))
    with open(os.path.join(step_dir, checkpoint.MANIFEST)) as f:
      listed = sorted(line.split('  ', 1)[1].rstrip('\n') for line in f)
    files = sorted(os.path.relpath(os.path.join(root, name), step_dir)
                   for root, _, names in os.walk(step_dir) for name in names)
    assert listed == [f for f in files if f != checkpoint.MANIFEST]
    checkpoint.verify_step(step_dir)


def test_a_flipped_bit_is_refused_naming_the_step_and_file(run, tmp_path):
  shutil.copytree(run[0], tmp_path, dirs_exist_ok=True)
  data_file = _largest_file(tmp_path / 'checkpoints' / '2' / 'state')
  _flip_a_bit(data_file)
  with pytest.raises(checkpoint.CheckpointError,
                     match=f'^checkpoint step 2 is damaged: {data_file} does not match its '
                           'checksum in '):
    checkpoint.load_model(tmp_path)
  _assert_step(checkpoint.load_model(tmp_path, 4), run[2], 4)  # the other steps still load


def test_non_finite_weights_are_refused(tmp_path, tiny_config):
  config = tiny_config
  params = _write_run(str(tmp_path), config, keep_latest=1)
  manager = checkpoint.make_manager(tmp_path / 'checkpoints', keep_latest=5)
  poisoned = jax.tree.map(lambda p: p.at[..., 0].set(jnp.nan) if p.ndim == 3 else p, params)
  state = train.TrainState(step=jnp.int32(6), params=poisoned, opt_state={},
                           rng=jax.random.PRNGKey(0))
  checkpoint.save(manager, 6, state, checkpoint.read_meta(manager, 5))
  checkpoint.finish_saves(manager)
  manager.close()
  with pytest.raises(checkpoint.CheckpointError, match=r'^checkpoint step 6 is damaged: '
                                                       r'parameter pos_embedding has NaN or inf'):
    checkpoint.load_model(tmp_path, 6)


def test_a_pt_state_dict_with_nan_weights_is_not_converted(tiny_config):
  from himari_jax.model import convert  # numpy state dicts need no PyTorch

  model_config = model.ModelConfig.from_config(tiny_config.model)
  params = model.init_params(model_config, jax.random.key(0), 8)
  state_dict = convert.flax_to_torch_state_dict(params)
  np.testing.assert_array_equal(convert.torch_state_dict_to_flax(state_dict, model_config)
                                ['action_head']['kernel'], params['action_head']['kernel'])
  state_dict['action_head.weight'][1, 2] = np.inf
  with pytest.raises(convert.ConversionError, match=r'^state-dict entry action_head.weight has 1 '
                                                    'NaN or inf values'):
    convert.torch_state_dict_to_flax(state_dict, model_config)


@pytest.mark.parametrize('name', ['small_a', 'small_b'])
def test_shipped_checkpoints_are_checked(repo_root, tmp_path, name):
  shutil.copytree(repo_root / 'checkpoints' / name, tmp_path / name)
  for step in (600, 1200):
    checkpoint.verify_step(tmp_path / name / 'checkpoints' / str(step))
  _flip_a_bit(_largest_file(tmp_path / name / 'checkpoints' / '1200' / 'state'))
  with pytest.raises(checkpoint.CheckpointError, match='^checkpoint step 1200 is damaged: '):
    checkpoint.load_model(tmp_path / name)


def _template_state(config):
  """A step-0 TrainState shaped like those of `_write_run`: the target of a resume."""
  model_config = model.ModelConfig.from_config(config.model)
  params = jax.jit(model.init_params, static_argnums=(0, 2))(model_config, jax.random.key(1), 8)
  return train.TrainState(step=jnp.int32(0), params=params, opt_state=optax.adamw(1e-3).init(
      params), rng=jax.random.PRNGKey(1), loss_sum=jnp.float32(0), loss_count=jnp.int32(0))


@pytest.mark.parametrize('with_manifest', [True, False])
def test_resume_falls_back_to_the_newest_intact_step(run, tmp_path, caplog, capfd,
                                                     with_manifest):
  workdir, config, params = run
  shutil.copytree(workdir, tmp_path, dirs_exist_ok=True)
  for data_file in (tmp_path / 'checkpoints' / '5' / 'state').rglob('*'):
    if data_file.is_file() and data_file.parent.name == 'd':
      data_file.unlink()
  if not with_manifest:  # a run saved before manifests: the restore itself fails
    for manifest in (tmp_path / 'checkpoints').glob(f'*/{checkpoint.MANIFEST}'):
      manifest.unlink()
  manager = checkpoint.make_manager(tmp_path / 'checkpoints', keep_latest=2)
  with caplog.at_level(pylogging.WARNING):
    state, step = checkpoint.restore_latest(manager, _template_state(config))
  assert step == 4 and int(state.step) == 4
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, np.asarray(b) + 4, rtol=1e-6),
               state.params, params)
  moved = tmp_path / checkpoint.DAMAGED_SUBDIR / '5'
  (warning,) = [r.getMessage() for r in caplog.records if r.levelno >= pylogging.WARNING]
  reason = 'is missing' if with_manifest else 'cannot be restored'
  assert warning.startswith('checkpoint step 5 ') and reason in warning
  assert warning.endswith(f'; moved it to {moved} and resuming from step 4')
  assert moved.is_dir() and manager.all_steps() == [2, 4]
  checkpoint.save(manager, 5, state, {'step': 5})  # the run saves step 5 again
  checkpoint.finish_saves(manager)
  manager.close()
  assert 'Traceback' not in capfd.readouterr().err


def test_a_run_with_no_intact_step_is_refused_and_left_alone(run, tmp_path):
  workdir, config, _ = run
  shutil.copytree(workdir, tmp_path, dirs_exist_ok=True)
  for step in (2, 4, 5):
    shutil.rmtree(tmp_path / 'checkpoints' / str(step) / 'meta')
  manager = checkpoint.make_manager(tmp_path / 'checkpoints')
  with pytest.raises(checkpoint.CheckpointError, match=r'no checkpoint step can be restored '
                                                       r'\(checkpoint step 5 is damaged: '):
    checkpoint.restore_latest(manager, _template_state(config))
  manager.close()
  assert manager.all_steps() == [2, 4, 5] and not (tmp_path / checkpoint.DAMAGED_SUBDIR).exists()
