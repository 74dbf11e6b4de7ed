"""Ensemble backtest: the backtest config with the shipped two-member ensemble
(`himari_jax.config.ensemble_config`).

Each member is calibrated on the validation split of its own training run, then the members'
probability vectors are combined by `himari_jax.inference.ensemble.combine`. Override on the command
line, e.g. `--config.checkpoints=runs/a,runs/b,runs/c --config.weights=2,1,1
--config.calibration.mode=fixed` (the seed's hand-tuned bias).
"""

import ml_collections

from himari_jax import config as config_lib


def get_config() -> ml_collections.ConfigDict:
  return config_lib.ensemble_config()
