"""Today's decision from trained models, and paper trading on live bars.

  python launch/trade_signal.py --checkpoints=checkpoints/small_a --data=data/btc.csv
  python launch/trade_signal.py --checkpoints=runs/a,runs/b --data=binance:BTCUSDT
  python launch/trade_signal.py --checkpoints=runs/a --data=binance:BTCUSDT --follow \
      --ledger=runs/paper/btc

The first form prints the decision for the latest closed bar: action, calibrated
probabilities, confidence, target position and the bar's time. `--follow` keeps polling,
decides every newly closed bar, simulates its fill as the backtest does and appends it to the
ledger (`ledger.csv` + `state.json`); stop it any time and rerun the same command to resume.
Settings (ensemble strategy, threshold, calibration, costs, sizing): configs/backtest.py,
e.g. --config.strategy=confidence_weighted --config.fill=next_open.
"""

import os

from absl import app, flags

from himari_jax import cli
from himari_jax import config as config_lib
from himari_jax.backtest import engine as backtest
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
_HISTORY = flags.DEFINE_integer('history', 1000, 'Bars per decision window (features need a '
                                'warm-up; longer windows match backtest features more closely).')
_FOLLOW = flags.DEFINE_bool('follow', False, 'Paper-trade every newly closed bar.')
_LEDGER = flags.DEFINE_string('ledger', 'runs/paper', 'Ledger folder for --follow.')
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
  checkpoints = _CHECKPOINTS.value or [p for p in config.checkpoints.split(',') if p.strip()]
  checkpoint.quiet_orbax_logging()
  try:
    source = sources.parse_source(_DATA.value, interval=_INTERVAL.value, base_url=_BASE_URL.value)
    # Data errors before the slow model loading.
    sources.check_source(source, _HISTORY.value, max_bar_move=config.max_bar_move,
                         refuse_large_moves=config.refuse_large_moves)
    params = backtest.params_from_config(config)
    if not _FOLLOW.value:
      decide = live.model_decider(checkpoints, config, _HISTORY.value)
      decision, unclosed = live.latest_decision(source, decide, _HISTORY.value)
      for line in live.format_decision(decision, source.interval, source.name):
        print(line)
      if unclosed:
        print(f'  ({unclosed} bar(s) not closed yet were left out)')
      return
    settings = {'data': source.name, 'interval': _INTERVAL.value, 'checkpoints': checkpoints,
                'history': _HISTORY.value, 'strategy': config.strategy,
                'confidence_threshold': config.confidence_threshold,
                'calibration': config.calibration.to_dict(),
                'backtest': backtest.params_to_dict(params)}
    ledger = ledger_lib.Ledger.open(_LEDGER.value, settings)  # before the slow model loading
    decide = live.model_decider(checkpoints, config, _HISTORY.value)
    decided = live.paper_trade(source, decide, ledger, params, history=_HISTORY.value,
                               max_bars=_MAX_BARS.value, max_polls=_MAX_POLLS.value,
                               poll_delay=_POLL_DELAY.value, stale_after=_STALE_AFTER.value)
    print(f'{decided} bar(s) decided; ledger: {ledger.csv_path}')
  except KeyboardInterrupt:
    print(f'stopped; rerun the same command to resume the ledger in {_LEDGER.value}')


if __name__ == '__main__':
  cli.run(main)
