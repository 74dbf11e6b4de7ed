"""The seed's ensemble backtest, with its flags: several models vote, then a backtest runs.

  python launch/ensemble_backtest.py --confidence_threshold=0.7 --strategy=voting

By default the two shipped checkpoints vote on BTC 2025-2026. Settings: configs/ensemble.py
(any field can be overridden, e.g. --config.calibration.mode=fixed for the seed's logit bias).
"""

import os
import sys

from absl import app, flags
from ml_collections import config_flags

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from himari_jax import ensemble, evaluate  # noqa: E402 - after the path fix

_CONFIG = config_flags.DEFINE_config_file(
    'config', os.path.join(REPO, 'configs', 'ensemble.py'), 'Ensemble backtest configuration.')
_STRATEGY = flags.DEFINE_string('strategy', None,
                                f'One of {", ".join(ensemble.STRATEGIES)} (default: config).')
_THRESHOLD = flags.DEFINE_float('confidence_threshold', None,
                                'BUY/SELL below this confidence become HOLD, in [0, 1].')
_MEMBERS = flags.DEFINE_list('checkpoints', None, 'Ensemble members (default: config).')
_OUTDIR = flags.DEFINE_string('outdir', 'runs/ensemble_backtest', 'Folder for the reports.')
_SWEEP = flags.DEFINE_bool('sweep', False, 'Also sweep strategies x confidence thresholds.')


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {argv[1:]}')
  config = _CONFIG.value
  if _STRATEGY.value is not None:
    config.strategy = _STRATEGY.value
  if _THRESHOLD.value is not None:
    config.confidence_threshold = _THRESHOLD.value
  if _MEMBERS.value:
    config.checkpoints = ','.join(_MEMBERS.value)
  evaluate.backtest_command(config, _OUTDIR.value, sweep=_SWEEP.value)


if __name__ == '__main__':
  app.run(main)
