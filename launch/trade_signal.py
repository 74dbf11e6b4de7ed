"""Today's decision from trained models, and paper trading on live bars.

  python launch/trade_signal.py --checkpoints=checkpoints/small_a --data=data/btc.csv
  python launch/trade_signal.py --policy=runs/x/backtest/policy.json --data=binance:BTCUSDT
  python launch/trade_signal.py --policy=runs/x/backtest/policy.json --data=binance:BTCUSDT \
      --follow --ledger=runs/paper/btc

Decisions are the backtest's: the same members, calibration, ensemble, decision policy, costs
and sizing (`backtest.decider.Decider`). `--policy` takes the policy.json a backtest wrote
(launch/backtest.py --outdir=runs/x/backtest); without it the policy is `config.policy`'s,
read as the backtest reads it, and the first line says which rule that is.

The first form prints the decision for the latest closed bar: action, calibrated
probabilities, confidence, the position the policy holds after it (run from flat over the
`--history` window) and the bar's time. `--follow` keeps polling, decides and fills every
newly closed bar from the state the previous one left, and appends it to the ledger
(`ledger.csv` + `state.json`); stop it any time and rerun the same command to resume. A ledger
refuses other members, policy or settings than it started with; `--new_ledger` archives it and
starts a new one. Settings: configs/backtest.py, e.g. --config.policy.mode=fixed
--config.fill=next_open.
"""

import os

from absl import app, flags

from himari_jax import cli
from himari_jax import config as config_lib
from himari_jax.data import input_pipeline
from himari_jax.live import ledger as ledger_lib
from himari_jax.live import paper as live
from himari_jax.live import sources
from himari_jax.model import checkpoint

_CONFIG = cli.define_config_file(
    'config', os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                           'configs', 'backtest.py'), 'Decision and backtest settings.')
_CHECKPOINTS = flags.DEFINE_list('checkpoints', None,
                                 'Training workdirs or .pt files (overrides config.checkpoints).')
_DATA = flags.DEFINE_string('data', None, 'A CSV / JSON file of bars, or binance:SYMBOL.')
_INTERVAL = flags.DEFINE_string('interval', '1h', 'Bar length (the models were trained on 1h).')
_HISTORY = flags.DEFINE_integer('history', 1000, 'Bars per decision window at most (features '
                                'need a warm-up; longer windows match backtest features more '
                                'closely).')
_POLICY = flags.DEFINE_string('policy', None, 'A policy.json a backtest wrote: its members, '
                              'calibration, ensemble, costs and policy replace the config\'s.')
_FOLLOW = flags.DEFINE_bool('follow', False, 'Paper-trade every newly closed bar.')
_LEDGER = flags.DEFINE_string('ledger', 'runs/paper', 'Ledger folder for --follow.')
_NEW_LEDGER = flags.DEFINE_bool('new_ledger', False, 'With --follow: archive the ledger in '
                                '--ledger and start a new one (under other members or policy).')
_BASE_URL = flags.DEFINE_string('base_url', sources.BINANCE_API, 'Binance REST API base URL.')
_MAX_BARS = flags.DEFINE_integer('max_bars', None, 'With --follow: stop after this many bars.')
_MAX_POLLS = flags.DEFINE_integer('max_polls', None, 'With --follow: stop after this many polls.')
_POLL_DELAY = flags.DEFINE_float('poll_delay', 5.0,
                                 'Seconds after a bar closes before asking for it.')
_STALE_AFTER = flags.DEFINE_float('stale_after', 600.0,
                                  'Seconds a bar may be late before the feed counts as stale.')


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {argv[1:]}')
  if not _DATA.value:
    raise app.UsageError('--data is required: a CSV / JSON file of bars or binance:SYMBOL')
  config = _CONFIG.value
  config_lib.check_ranges(config, config_lib.BACKTEST_RANGES)
  checkpoint.quiet_orbax_logging()
  try:
    source = sources.parse_source(_DATA.value, interval=_INTERVAL.value, base_url=_BASE_URL.value)
    # Data errors before the slow model loading.
    sources.check_source(source, _HISTORY.value, max_bar_move=config.max_bar_move,
                         refuse_large_moves=config.refuse_large_moves)
    decider, choice, settings = live.load_decider(
        config, checkpoints=_CHECKPOINTS.value, policy_file=_POLICY.value,
        asset=input_pipeline.asset_name(_DATA.value.split(':')[-1]))
    if not _FOLLOW.value:
      row, unclosed = live.latest_decision(source, decider, _HISTORY.value)
      for line in live.format_decision(row, source.interval, source.name, decider.params):
        print(line)
      if unclosed:
        print(f'  ({unclosed} bar(s) not closed yet were left out)')
      return
    settings = {'data': source.name, 'interval': _INTERVAL.value, 'history': _HISTORY.value,
                **settings}
    ledger = ledger_lib.Ledger.open(_LEDGER.value, settings, new=_NEW_LEDGER.value)
    decided = live.paper_trade(source, decider, ledger, history=_HISTORY.value,
                               max_bars=_MAX_BARS.value, max_polls=_MAX_POLLS.value,
                               poll_delay=_POLL_DELAY.value, stale_after=_STALE_AFTER.value)
    for line in live.ledger_summary(ledger, choice.summary):
      print(line)
    print(f'{decided} bar(s) decided; ledger: {ledger.csv_path}')
  except KeyboardInterrupt:
    print(f'stopped; rerun the same command to resume the ledger in {_LEDGER.value}')


if __name__ == '__main__':
  cli.run(main)
