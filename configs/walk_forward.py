"""Walk-forward evaluation: `--config=configs/walk_forward.py:<variant>`, variant one of
`small` (default) or `tiny` (tests), the model and training of configs/flag_trader.py's
variant of that name.

Every fold trains the variant's model on its own window of one asset's bars (all bundled eras
of `asset`, concatenated) and is tested on the bars that follow, `embargo` bars later; the
test windows are then backtested as one series with the settings of `config.backtest`
(configs/backtest.py). Any field can be overridden, e.g. `--config.mode=expanding
--config.train.num_epochs=2 --config.backtest.fill=next_open`.
"""

import importlib.util
import pathlib

import ml_collections


def _load(name: str):
  # Loaded by path: config_flags imports this file by path, so `configs` need not be importable.
  spec = importlib.util.spec_from_file_location(
      f'himari_{name}_config', pathlib.Path(__file__).with_name(f'{name}.py'))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def get_config(variant: str = 'small') -> ml_collections.ConfigDict:
  variant = variant or 'small'
  if variant not in ('small', 'tiny'):
    raise ValueError(f'unknown walk-forward variant {variant!r}; valid: small, tiny')
  config = _load('flag_trader').get_config(variant)
  config.asset = 'btc'  # every bundled era of this asset, concatenated in time
  config.datasets = ''  # or comma-separated builtin names / CSV paths, oldest first
  config.test_start = '2025-01-01'  # first test bar; '' = earliest with a full training window
  config.test_end = ''  # bars from this date on are not tested; '' = to the end of the data
  config.train_bars = 8760  # bars of each training window, validation included (a year)
  config.test_bars = 2820  # bars of each test window (~4 months: 4 folds to 2026-04-15)
  config.step_bars = 0  # bars between test starts, >= test_bars; 0 = test_bars
  config.mode = 'rolling'  # 'rolling' window or 'expanding' from the first fold's start
  config.embargo = -1  # bars between train | validation | test; -1 = the label horizon
  config.per_fold = 'retrain'  # 'retrain' from scratch or 'finetune' the previous fold's run
  config.data.embargo = config.get_ref('embargo')
  config.data.train = ''  # set per fold: the fold's training file
  config.data.test = ''  # unused: every fold tests on the bars after its training window
  config.data.max_bars = 0  # a fold trains on its whole file

  # Calibration, decision threshold, costs, sizing and significance of the backtests.
  config.backtest = _load('backtest').get_config()
  config.backtest.checkpoints = ''  # unused: the folds' runs
  config.backtest.dataset = ''  # unused: the folds' test windows

  if variant == 'tiny':
    config.test_start = '2025-06-01'
    config.test_end = '2025-06-21'  # two folds
    config.train_bars = 1200
    config.test_bars = 240
    config.train.update(num_epochs=1, steps_per_epoch=6, checkpoint_every_steps=0)
    config.backtest.significance.update(num_resamples=200, num_shuffles=100)
  return config
