"""Base configuration shared by every FLAG-TRADER variant: `himari_jax.config.default_config`.

Variants (configs/flag_trader.py) override fields of this one. Any field can be overridden on
the command line, e.g. `--config.train.batch_size=32`.
"""

import ml_collections

from himari_jax import config as config_lib


def get_config() -> ml_collections.ConfigDict:
  return config_lib.default_config()
