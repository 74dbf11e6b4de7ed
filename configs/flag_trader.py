"""FLAG-TRADER variants: `--config=configs/flag_trader.py:<variant>` with variant one of
`seed`, `small`, `tiny` (default `seed`); defined in `himari_jax.config.flag_trader_config`.

Any field can still be overridden on the command line, e.g.
`--config=configs/flag_trader.py:small --config.train.num_epochs=3`.
"""

import ml_collections

from himari_jax import config as config_lib


def get_config(variant: str = 'seed') -> ml_collections.ConfigDict:
  return config_lib.flag_trader_config(variant)
