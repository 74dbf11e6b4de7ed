"""Shared fixtures: configs from `himari_jax.config`, the same the configs/ files return; and
one JAX compilation cache for the whole run."""

import os
import pathlib
import subprocess
import sys

import jax
import pytest

from himari_jax import config as config_lib

REPO = pathlib.Path(__file__).resolve().parent.parent


def pytest_configure(config: pytest.Config) -> None:
  """Compiled programs go to one persistent cache that every test and every subprocess a test
  starts (they inherit the environment) reads: the many tiny training runs of the entry-point
  tests compile the same steps, and a rerun of the suite compiles almost nothing.
  JAX_COMPILATION_CACHE_DIR, when set, names another folder."""
  cache = os.environ.get('JAX_COMPILATION_CACHE_DIR') or str(
      config.rootpath / '.pytest_cache' / 'jax-compilation-cache')
  os.environ['JAX_COMPILATION_CACHE_DIR'] = cache
  os.environ.setdefault('JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS', '0')
  jax.config.update('jax_compilation_cache_dir', cache)
  jax.config.update('jax_persistent_cache_min_compile_time_secs',
                    float(os.environ['JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS']))


def load_config_file(name: str, arg: str | None = None):
  """The config `configs/<name>.py:<arg>` names (`himari_jax.config.get_config`)."""
  return config_lib.get_config(name, arg)


@pytest.fixture
def tiny_config():
  """A fresh `configs/flag_trader.py:tiny` config (tests may change it)."""
  return config_lib.load_config('flag_trader:tiny')


@pytest.fixture
def repo_root() -> pathlib.Path:
  return REPO


@pytest.fixture
def lock_holder():
  """hold(code, *args) -> Popen: a process that runs `code` (which takes a lock), prints
  'held' and sleeps until the test kills it; any left are killed afterwards."""
  processes = []

  def hold(code: str, *args: str) -> subprocess.Popen:
    env = {**os.environ, 'JAX_PLATFORMS': 'cpu', 'PYTHONPATH': str(REPO)}
    script = f'import sys, time\n{code}\nprint("held", flush=True)\ntime.sleep(600)\n'
    process = subprocess.Popen([sys.executable, '-c', script, *map(str, args)], env=env,
                               stdout=subprocess.PIPE, text=True)
    processes.append(process)
    assert process.stdout.readline().strip() == 'held'
    return process

  yield hold
  for process in processes:
    process.kill()
    process.wait()
