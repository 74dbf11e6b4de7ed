"""Model benchmark: `--config=configs/benchmark.py:<variant>`, variant one of `cpu` (default:
bundled BTC and ETH, every baseline and a `small`-sized FLAG-TRADER, each of the MLP and
FLAG-TRADER also trained on the net-of-cost Sharpe ratio, 3 seeds, about half an hour on two
CPU cores), `gpu` (adds the seed-sized FLAG-TRADER at T = 1 and T = 64) or `tiny`
(tests); or a universe variant, the pooled walk-forward benchmark over many coins:
`universe_smoke` (5 coins, 2 quarterly folds, every kind of model, about 2 minutes),
`universe_cpu` (20 coins, 2019-01 .. 2022-09, with and without market context, about an hour)
or `universe_gpu`; defined in
`himari_jax.config.benchmark_config`.

Any field can be overridden, e.g. `--config.assets=btc,data/sol.csv --config.num_seeds=1
--config.models=logistic,lightgbm`.
"""

import ml_collections

from himari_jax import config as config_lib


def get_config(variant: str = 'cpu') -> ml_collections.ConfigDict:
  return config_lib.benchmark_config(variant)
