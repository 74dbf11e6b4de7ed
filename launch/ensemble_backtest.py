"""The seed's ensemble backtest, with its flags: launch/backtest.py on configs/ensemble.py.

  python launch/ensemble_backtest.py --confidence_threshold=0.7 --strategy=voting
  python launch/ensemble_backtest.py --config.policy.mode=select

By default the two shipped checkpoints vote on BTC 2025-2026. Any config field can be
overridden, e.g. --config.calibration.mode=fixed for the seed's logit bias.
"""

import backtest  # launch/backtest.py, beside this file

from himari_jax import cli

if __name__ == '__main__':
  backtest.define_flags('ensemble.py', 'runs/ensemble_backtest')
  cli.run(backtest.main)
