"""Size and power of the test Sharpe: planted signals of known IC on real bars (SPEC 11).

  python launch/power.py --draws=400 --outdir=runs/power
  python launch/power.py --market=fixed --draws=600 --outdir=runs/power_btc2025
  python launch/power.py --market=fixed --ics=0,0.1 --draws=4 --test_start=2025-01-01 \
    --test_end=2025-03-01

Each draw picks its market (--market, `research.power`): by default a drift-free era-matched
placebo of a random one-year window of the --assets' bars (the test's unconditional size),
`windows` the real random windows, `fixed` the --data window --test_start .. --test_end in
every draw (the size conditional on that year). It plants a score with the chosen IC against
the market's next-bar returns, calibrates it on the validation bars before the window, decides
with the seed policy, backtests at seed costs and at zero cost and asks the test PSR (HAC,
one-sided) whether the Sharpe ratio is above 0. Prints the rejection rates and writes
`power.json` and `power.md` to --outdir. Backtest settings: configs/backtest.py.
"""

import functools
import json
import os

from absl import app, flags

from himari_jax import cli, json_types
from himari_jax import config as config_lib
from himari_jax.research import power, walkforward

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

_CONFIG = cli.define_config_file('config', os.path.join(REPO, 'configs', 'backtest.py'),
                                 'Backtest settings (costs, calibration, cap, fill).')
_MARKET = flags.DEFINE_enum('market', 'placebo', power.MARKETS,
                            'Which market each draw trades (research/power.py docstring).')
_ASSETS = flags.DEFINE_list('assets', ['btc', 'eth'],
                            'placebo/windows: assets whose bundled bars the windows come from.')
_TEST_BARS = flags.DEFINE_integer('test_bars', 8760, 'placebo/windows: bars of a test window.')
_DATA = flags.DEFINE_string('data', 'btc_usdt_1h_2020_2024,btc_usdt_1h_2025_2026',
                            'fixed: bundled datasets or CSV files of one asset, oldest first.')
_TEST_START = flags.DEFINE_string('test_start', '2025-01-01',
                                  'fixed: first day of the test window.')
_TEST_END = flags.DEFINE_string('test_end', '2026-01-01', 'fixed: day after the test window.')
_ICS = flags.DEFINE_list('ics', ['0', '0.02', '0.05', '0.1'], 'Planted ICs.')
_DRAWS = flags.DEFINE_integer('draws', 20, 'Draws per planted IC and costs.')
_VAL_BARS = flags.DEFINE_integer('val_bars', 2160, 'Calibration bars before the test window.')
_ALPHA = flags.DEFINE_float('alpha', 0.05, 'Nominal level of the one-sided test.')
_SEED = flags.DEFINE_integer('seed', 0, 'Seed of the draws.')
_OUTDIR = flags.DEFINE_string('outdir', 'runs/power', 'Folder for power.json and power.md.')


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {argv[1:]}')
  bt = _CONFIG.value
  costs = {'seed': {'commission': bt.commission, 'slippage': bt.slippage},
           'zero': {'commission': 0.0, 'slippage': 0.0}}
  if _MARKET.value == 'fixed':
    market = power.fixed_market(walkforward.load_series(_DATA.value), _TEST_START.value,
                                _TEST_END.value, _VAL_BARS.value)

    def draw_market(_rng):
      return market
  else:
    pools = [walkforward.load_series(walkforward.asset_datasets(a)) for a in _ASSETS.value]
    draw_market = functools.partial(power.random_market, pools, test_bars=_TEST_BARS.value,
                                    val_bars=_VAL_BARS.value,
                                    placebo=_MARKET.value == 'placebo')
  summary = power.measure_power(
      draw_market, ics=[float(x) for x in _ICS.value], num_draws=_DRAWS.value, costs=costs,
      backtest=bt, labels=config_lib.default_config().labels, alpha=_ALPHA.value,
      seed=_SEED.value)
  table = power.power_table(summary)
  os.makedirs(_OUTDIR.value, exist_ok=True)
  with open(os.path.join(_OUTDIR.value, 'power.json'), 'w') as f:
    json.dump(json_types.to_json_types(summary), f, indent=1)
  with open(os.path.join(_OUTDIR.value, 'power.md'), 'w') as f:
    f.write(table + '\n')
  print(table)
  first = summary['test'][0]
  where = (f'test bars {first[0]} .. {first[1]}' if _MARKET.value == 'fixed'
           else f'{_MARKET.value} markets of {len(summary["test"])} random windows')
  print(f'\n{where}; {summary["seconds"]:.0f} s; wrote {_OUTDIR.value}/power.json, power.md')


if __name__ == '__main__':
  cli.run(main)
