"""Placebo runs of a pipeline: `--config=configs/placebo.py:<variant>` for launch/placebo.py.

Variants:
- `quickstart`: the quickstart pipeline (launch/quickstart.py): the `small` model trained on
  BTC/USDT 1h 2020-2024, calibrated and backtested on BTC/USDT 1h 2025-2026 with the seed's
  backtest settings (configs/backtest.py).
- `tiny`: the `tiny` model on the last 3000 training bars and the last 1000 test bars, with
  few significance resamples: seconds per run, for tests.

Fields: `train` (a configs/flag_trader.py config), `backtest` (a configs/backtest.py config;
its `checkpoints` is set per run, its `dataset` is the test file), `placebo` (how markets are
made: `synthetic.make_markets` options, the first market seed and the cuts of the real files).
Any field can be overridden, e.g. `--config.train.train.steps_per_epoch=100` or
`--config.placebo.method=block`.
"""

import ml_collections
from ml_collections import config_dict

from himari_jax import config as config_lib

VARIANTS = ('quickstart', 'tiny')


def get_config(variant: str = 'quickstart') -> ml_collections.ConfigDict:
  if variant not in VARIANTS:
    raise ValueError(f'unknown placebo variant {variant!r}; valid variants: '
                     f'{", ".join(VARIANTS)} (e.g. --config=configs/placebo.py:quickstart)')
  config = ml_collections.ConfigDict()
  config.variant = variant
  config.train = config_lib.flag_trader_config('small' if variant == 'quickstart' else 'tiny')
  config.backtest = config_lib.backtest_config()
  config.backtest.dataset = config.train.data.test

  config.placebo = ml_collections.ConfigDict()
  config.placebo.method = 'iid'  # synthetic.METHODS: 'iid' or 'block' (volatility clustering)
  config.placebo.mean_block_length = 24.0  # bars, for 'block'
  config.placebo.remove_drift = False  # True: no trend for a long-only model to earn
  config.placebo.first_seed = 0  # market seed of placebo run 0; run i uses first_seed + i
  # Last N bars of each real file, for the real run and the markets alike; None = all.
  config.placebo.train_bars = config_dict.placeholder(int)
  config.placebo.test_bars = config_dict.placeholder(int)

  if variant == 'tiny':
    config.placebo.train_bars = 3000
    config.placebo.test_bars = 1000
    config.backtest.significance.num_resamples = 100
    config.backtest.significance.num_shuffles = 50
  return config
