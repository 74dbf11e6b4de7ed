"""Ensemble backtest: several trained FLAG-TRADER models vote, then the seed's backtest runs.

The backtest config (configs/backtest.py) with the shipped two-member ensemble. Each member is
calibrated on the validation split of its own training run, then the members' probability
vectors are combined by `himari_jax.ensemble.combine`. Override on the command line, e.g.
`--config.checkpoints=runs/a,runs/b,runs/c --config.weights=2,1,1
--config.calibration.mode=fixed` (the seed's hand-tuned bias).
"""

import importlib.util
import pathlib

import ml_collections

# Loaded by path: config_flags imports this file by path, so `configs` need not be importable.
_spec = importlib.util.spec_from_file_location(
    'himari_backtest_config', pathlib.Path(__file__).with_name('backtest.py'))
_backtest = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_backtest)


def get_config() -> ml_collections.ConfigDict:
  config = _backtest.get_config()
  config.checkpoints = 'checkpoints/small_a,checkpoints/small_b'
  config.strategy = 'voting'  # 'voting', 'confidence_weighted' or 'disagreement'
  config.confidence_threshold = 0.0  # BUY/SELL with confidence below this become HOLD
  return config
