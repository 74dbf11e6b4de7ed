"""Shared fixtures: configs from `himari_jax.config`, the same the configs/ files return."""

import pathlib

import pytest

from himari_jax import config as config_lib

REPO = pathlib.Path(__file__).resolve().parent.parent


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
