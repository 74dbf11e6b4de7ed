"""Shared fixtures: configs loaded by path, as the launch scripts' --config flag does."""

import importlib.util
import pathlib

import pytest

REPO = pathlib.Path(__file__).resolve().parent.parent


def load_config_file(name: str, arg: str | None = None):
  """`configs/<name>.py`'s get_config(arg), loaded by path."""
  spec = importlib.util.spec_from_file_location(f'configs_{name}', REPO / 'configs' / f'{name}.py')
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config(arg) if arg is not None else module.get_config()


@pytest.fixture
def tiny_config():
  """A fresh `configs/flag_trader.py:tiny` config (tests may change it)."""
  return load_config_file('flag_trader', 'tiny')


@pytest.fixture
def repo_root() -> pathlib.Path:
  return REPO
