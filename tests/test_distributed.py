"""Data parallelism: 8 devices and 2 processes (CPU collectives) match one device.

Each configuration runs in child processes, since a JAX process fixes its device count and
its distributed runtime when it starts. All children train the tiny config for two steps of
the same global batch of 8 windows and are compared through their final checkpoints.
"""

import os
import pathlib
import socket
import subprocess
import sys

import jax
import numpy as np
import pytest

from himari_jax.model import checkpoint

REPO = pathlib.Path(__file__).resolve().parent.parent
TINY = f'{REPO / "configs" / "flag_trader.py"}:tiny'
OVERRIDES = ['--config.train.num_epochs=1', '--config.train.steps_per_epoch=2',
             '--config.train.batch_size=8']
TIMEOUT = 300

# Run in a child with 8 host devices: the config check, then training.
EIGHT_DEVICES = '''
import sys
import jax
from absl import flags, logging
from ml_collections import config_flags
from himari_jax.training import train
assert jax.device_count() == 8, jax.devices()
logging.set_verbosity(logging.INFO)
config_flags.DEFINE_config_file('config')
flags.FLAGS(['prog', f'--config={sys.argv[1]}', *sys.argv[3:]])
config = flags.FLAGS.config
config.train.batch_size = 12
try:
  train.validate_config(config)
except train.ConfigError as e:
  print('CONFIG_ERROR', e)
config.train.batch_size = 8
train.train_and_evaluate(config, sys.argv[2])
'''


@pytest.fixture(scope='module')
def env(tmp_path_factory):
  """Children share a compilation cache and compile at a low XLA optimisation level (the
  tiny model's run time is negligible either way)."""
  return dict(os.environ, JAX_PLATFORMS='cpu',
              JAX_COMPILATION_CACHE_DIR=str(tmp_path_factory.mktemp('jax_cache')),
              JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS='0',
              XLA_FLAGS='--xla_backend_optimization_level=0')


def _launch(workdir, *flags):
  return [sys.executable, str(REPO / 'launch' / 'train.py'), f'--config={TINY}',
          f'--workdir={workdir}', *OVERRIDES, *flags]


def _check(process: subprocess.Popen) -> str:
  out, _ = process.communicate(timeout=TIMEOUT)
  assert process.returncode == 0, out[-3000:]
  return out


@pytest.fixture(scope='module')
def one_device(tmp_path_factory, env):
  """Final params of the single-device reference run."""
  workdir = tmp_path_factory.mktemp('one_device')
  _check(subprocess.Popen(_launch(workdir), env=env, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True))
  loaded = checkpoint.load_model(workdir, 'latest')
  assert loaded.step == 2
  return loaded.params


def _assert_same_params(got, want):
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6), got, want)


@pytest.mark.slow
def test_eight_devices_match_one_device(tmp_path, env, one_device):
  child_env = dict(env, XLA_FLAGS=env['XLA_FLAGS'] + ' --xla_force_host_platform_device_count=8')
  out = _check(subprocess.Popen(
      [sys.executable, '-c', EIGHT_DEVICES, TINY, str(tmp_path), *OVERRIDES], env=child_env,
      cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
  assert 'CONFIG_ERROR config.train.batch_size=12 is not divisible by the 8 devices' in out
  assert 'multiple of 8, e.g. 8 or 16' in out
  assert "mesh {'data': 8}" in out
  loaded = checkpoint.load_model(tmp_path, 'latest')
  assert loaded.step == 2
  _assert_same_params(loaded.params, one_device)


@pytest.mark.slow
def test_two_processes_match_one_process(tmp_path, env, one_device):
  with socket.socket() as s:
    s.bind(('127.0.0.1', 0))
    port = s.getsockname()[1]
  processes = [subprocess.Popen(
      _launch(tmp_path, '--jax_distributed', f'--coordinator_address=127.0.0.1:{port}',
              '--num_processes=2', f'--process_id={i}'),
      env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for i in range(2)]
  try:
    outputs = [_check(p) for p in processes]
  finally:
    for p in processes:
      if p.poll() is None:
        p.kill()
  for i, out in enumerate(outputs):
    assert f'process {i}/2' in out and "mesh {'data': 2}" in out
  loaded = checkpoint.load_model(tmp_path, 'latest')
  assert loaded.step == 2
  _assert_same_params(loaded.params, one_device)
