"""Backtest of trained FLAG-TRADER models: checkpoints -> predictions -> ensemble -> backtest.

Defaults (`himari_jax.config.backtest_config`) are the seed's backtest (SPEC 6): long-only,
BUY sized at confidence * 10 % of equity, fills at the decision bar's close, 0.1 % commission
and 0.05 % slippage. Override on the command line, e.g.
`--config.checkpoints=runs/a,runs/b --config.fill=next_open`.
"""

import ml_collections

from himari_jax import config as config_lib


def get_config() -> ml_collections.ConfigDict:
  return config_lib.backtest_config()
