"""Backtests trained models: checkpoints -> predictions -> ensemble -> backtest -> reports.

  python launch/backtest.py --checkpoints=runs/small --outdir=runs/small/backtest
  python launch/backtest.py --checkpoints=runs/a,runs/b --strategy=confidence_weighted
  python launch/backtest.py --sweep   # every strategy x threshold of config.sweep, one jit call
  python launch/backtest.py --config.policy.mode=select   # policy chosen on validation bars

Settings: configs/backtest.py (any field can be overridden, e.g. --config.fill=next_open).
launch/ensemble_backtest.py is this program with configs/ensemble.py as its default.
"""

import os

from absl import app, flags

from himari_jax import cli
from himari_jax.backtest import evaluate, report
from himari_jax.inference import ensemble
from himari_jax.model import checkpoint

CONFIGS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), 'configs')


def define_flags(default_config: str, default_outdir: str) -> None:
  """The program's flags; `default_config` is a file name in configs/."""
  cli.define_config_file('config', os.path.join(CONFIGS, default_config),
                                  'Backtest configuration.')
  flags.DEFINE_list('checkpoints', None,
                    'Training workdirs or .pt files (overrides config.checkpoints).')
  flags.DEFINE_string('strategy', None,
                      f'One of {", ".join(ensemble.STRATEGIES)} (overrides config.strategy).')
  flags.DEFINE_float('confidence_threshold', None,
                     'BUY/SELL below this confidence become HOLD, in [0, 1] (overrides config).')
  flags.DEFINE_string('outdir', default_outdir, 'Folder for the reports.')
  flags.DEFINE_bool('sweep', False, 'Also sweep strategies x confidence thresholds.')
  flags.DEFINE_bool('allow_in_sample', False,
                    'Run on bars a model trained or validated on (refused otherwise); the '
                    'report then says so first (sets config.allow_in_sample).')


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {argv[1:]}')
  config = flags.FLAGS.config
  if flags.FLAGS.checkpoints:
    config.checkpoints = ','.join(flags.FLAGS.checkpoints)
  if flags.FLAGS.strategy is not None:
    config.strategy = flags.FLAGS.strategy
  if flags.FLAGS.confidence_threshold is not None:
    config.confidence_threshold = flags.FLAGS.confidence_threshold
  if flags.FLAGS.allow_in_sample:
    config.allow_in_sample = True
  checkpoint.quiet_orbax_logging()
  outcome = evaluate.backtest_pipeline(config, flags.FLAGS.outdir, sweep=flags.FLAGS.sweep)
  report.print_backtest_summary(outcome)


if __name__ == '__main__':
  define_flags('backtest.py', 'runs/backtest')
  cli.run(main)
