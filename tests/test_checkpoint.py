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
  manager.wait_until_finished()
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
  corrupt = tmp_path / 'corrupt'
  shutil.copytree(run[0], corrupt)
  shutil.rmtree(corrupt / 'checkpoints' / '2' / 'state')
  with pytest.raises(checkpoint.CheckpointError, match='corrupt'):
    checkpoint.load_model(corrupt)


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
    predict.positions(loaded, None)
