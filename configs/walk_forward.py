"""Walk-forward evaluation: `--config=configs/walk_forward.py:<variant>`, variant one of
`small` (default) or `tiny` (tests); defined in `himari_jax.config.walk_forward_config`.

Every fold trains the variant's model on its own window of one asset's bars and is tested on
the bars that follow, `embargo` bars later; the test windows are then backtested as one
series with the settings of `config.backtest`. Any field can be overridden, e.g.
`--config.mode=expanding --config.train.num_epochs=2 --config.backtest.fill=next_open`.
"""

import ml_collections

from himari_jax import config as config_lib


def get_config(variant: str = 'small') -> ml_collections.ConfigDict:
  return config_lib.walk_forward_config(variant)
