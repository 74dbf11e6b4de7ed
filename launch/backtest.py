"""Backtests trained models: checkpoints -> predictions -> ensemble -> backtest -> reports.

  python launch/backtest.py --checkpoints=runs/small --outdir=runs/small/backtest
  python launch/backtest.py --checkpoints=runs/a,runs/b --config.strategy=confidence_weighted
  python launch/backtest.py --sweep   # every strategy x threshold of config.sweep, one jit call

Settings: configs/backtest.py (any field can be overridden, e.g. --config.fill=next_open).
"""

import os
import sys

from absl import app, flags
from ml_collections import config_flags

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from himari_jax import evaluate  # noqa: E402 - after the path fix

_CONFIG = config_flags.DEFINE_config_file(
    'config', os.path.join(REPO, 'configs', 'backtest.py'), 'Backtest configuration.')
_CHECKPOINTS = flags.DEFINE_list('checkpoints', None,
                                 'Training workdirs or .pt files (overrides config.checkpoints).')
_OUTDIR = flags.DEFINE_string('outdir', 'runs/backtest', 'Folder for the reports.')
_SWEEP = flags.DEFINE_bool('sweep', False, 'Also sweep strategies x confidence thresholds.')


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {argv[1:]}')
  config = _CONFIG.value
  if _CHECKPOINTS.value:
    config.checkpoints = ','.join(_CHECKPOINTS.value)
  evaluate.backtest_command(config, _OUTDIR.value, sweep=_SWEEP.value)


if __name__ == '__main__':
  app.run(main)
