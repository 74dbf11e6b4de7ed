"""FLAG-TRADER variants: `--config=configs/flag_trader.py:<variant>` with variant one of
`seed`, `small`, `tiny` (default `seed`).

Each variant overrides configs/default.py; any field can still be overridden on the command
line, e.g. `--config=configs/flag_trader.py:small --config.train.num_epochs=3`.

- `seed`: the 88M-parameter seed model and its exact hyper-parameters (T = 1, batch 64,
  lr 1e-4, 10 epochs, fixed class weights) with the seed's logit bias.
- `small`: a context-32 model that trains on the bundled BTC 2020-2024 bars on two CPU cores
  in a few minutes.
- `tiny`: for tests; seconds on one CPU core.
"""

import importlib.util
import pathlib

import ml_collections

# Loaded by path: config_flags imports this file by path, so `configs` need not be importable.
_spec = importlib.util.spec_from_file_location(
    'himari_default_config', pathlib.Path(__file__).with_name('default.py'))
default = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(default)


def _seed(config: ml_collections.ConfigDict) -> None:
  config.decision.logit_bias = (3.0, -2.5, 1.0)


def _small(config: ml_collections.ConfigDict) -> None:
  config.model.update(d_model=64, num_layers=2, num_heads=4, dim_feedforward=256,
                      max_length=64, lora_rank=8)
  config.train.update(context_length=32, window_stride=8, batch_size=32, num_epochs=4,
                      steps_per_epoch=300, learning_rate=1e-3, warmup_steps=50,
                      checkpoint_every_steps=100)


def _tiny(config: ml_collections.ConfigDict) -> None:
  config.data.max_bars = 3000
  config.model.update(d_model=16, num_layers=1, num_heads=2, dim_feedforward=32,
                      max_length=16, lora_rank=4)
  config.train.update(context_length=8, window_stride=4, batch_size=8, num_epochs=2,
                      steps_per_epoch=20, learning_rate=3e-3, eval_batch_size=256,
                      log_every_steps=5, checkpoint_every_steps=10)


VARIANTS = {'seed': _seed, 'small': _small, 'tiny': _tiny}


def get_config(variant: str = 'seed') -> ml_collections.ConfigDict:
  """The base config with the named variant's overrides applied."""
  variant = variant or 'seed'
  if variant not in VARIANTS:
    raise ValueError(f'unknown config variant {variant!r}; valid variants: '
                     f'{", ".join(VARIANTS)} (e.g. --config=configs/flag_trader.py:small)')
  config = default.get_config()
  VARIANTS[variant](config)
  config.variant = variant
  return config
