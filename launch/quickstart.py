"""The main job on the bundled data: train FLAG-TRADER, then backtest it out of sample.

  python launch/quickstart.py --workdir=runs/quickstart          # `small`: ~2 min on 2 cores
  python launch/quickstart.py --workdir=/tmp/qs --fast           # `tiny`: about a minute

1. trains `configs/flag_trader.py:small` on BTC/USDT 1h 2020-2024 (validation: its last 15 %),
2. calibrates it on that validation split, chooses a decision policy there (`--policy=auto`:
   the best of a grid if it beats the seed's argmax policy on validation by more than the
   same search finds on the probabilities rotated in time, else the seed's; the console and
   report say which), and backtests it on BTC/USDT 1h 2025-2026 with the seed's costs
   (configs/backtest.py),
3. prints the metrics against buy-and-hold with bootstrap error bars, and writes
   `backtest_results.json`, `backtest_trades.csv`, plots, `backtest_report.html` and
   `policy.json` (the policy traded: `launch/trade_signal.py --policy=.../policy.json`
   paper-trades exactly it).
Re-running with the same workdir resumes training where it stopped. The work is
`pipeline.train_and_backtest`, the pipeline every placebo run (launch/placebo.py) runs too.
"""

import os

from absl import app, flags

from himari_jax import cli
from himari_jax import config as config_lib
from himari_jax.backtest import evaluate, report
from himari_jax.model import checkpoint
from himari_jax.research import pipeline

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

_TRAIN = cli.define_config_file(
    'config', os.path.join(REPO, 'configs', 'flag_trader.py') + ':small', 'Model and training.')
_BACKTEST = cli.define_config_file(
    'backtest', os.path.join(REPO, 'configs', 'backtest.py'), 'Backtest settings.')
_WORKDIR = flags.DEFINE_string('workdir', 'runs/quickstart', 'Run folder.')
_FAST = flags.DEFINE_bool('fast', False, 'Tiny model and fewer resamples (a smoke test).')
_POLICY = flags.DEFINE_enum(
    'policy', 'auto', evaluate.POLICY_MODES,
    "Decision policy (sets --backtest.policy.mode): 'auto' selects one on the validation "
    "split and uses it if it beats the seed's there by more than the selection null's 95th "
    "percentile, else the seed's; 'seed', 'fixed' or 'select' force one.")


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {argv[1:]}')
  checkpoint.quiet_orbax_logging()
  config, backtest = _TRAIN.value, _BACKTEST.value
  if _FAST.value:
    config = _tiny(config)
    backtest.significance.num_resamples = 200
    backtest.significance.num_shuffles = 100
    # The tiny model trades too rarely for 20 validation round trips and validates on 450
    # bars, too few to rotate by two weeks: these keep the smoke test on the whole selection
    # path (deflation, the null, the 'auto' bar).
    backtest.policy.min_round_trips = 1
    backtest.policy.null_min_offset = 168
  backtest.policy.mode = _POLICY.value
  outcome = pipeline.train_and_backtest(config, backtest, _WORKDIR.value)
  report.print_backtest_summary(outcome)


def _tiny(config):
  """The `tiny` variant's sizes, keeping any command-line data overrides."""
  tiny = config_lib.flag_trader_config('tiny')
  tiny.data.train = config.data.train
  return tiny


if __name__ == '__main__':
  cli.run(main)
