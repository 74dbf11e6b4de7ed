"""What is backtested is what is traded: paper trading replays the backtest bar for bar.

A local Binance-like server serves 700 real hourly bars one at a time (the clock advances an
hour per poll). `paper_trade` follows them with the shipped two-member ensemble, restarting at
random bars (the ledger and decider reopened from disk, sometimes after hours away) and once
as `launch/trade_signal.py` killed with SIGKILL while it writes the ledger. The ledger's
fills, positions and equity must equal `evaluate.backtest_pipeline` (what launch/backtest.py
runs) on the same bars, members and policy: the seed's rule, a fixed hysteresis policy with a
minimum hold and a cooldown (filled at the next open, shorts allowed), and a policy selected
on validation bars and handed over in the policy.json the backtest wrote.
"""

import http.server
import json
import os
import signal
import subprocess
import sys
import threading
import urllib.parse

import jax
import numpy as np
import pandas as pd
import pytest

from himari_jax import config as config_lib
from himari_jax.backtest import evaluate, report
from himari_jax.data import ohlcv as data
from himari_jax.live import ledger as ledger_lib
from himari_jax.live import paper as live
from himari_jax.live import sources

HOUR = pd.Timedelta('1h')
NUM_BARS = 700  # the first 199 only warm the members' features up: 501 bars are traded
HISTORY = 1000  # every window reaches back to the first bar, as the backtest's features do
FIRST = 199  # the first bar the members can score (`MemberScorer.min_bars` - 1)


class FakeClock:
  def __init__(self, now):
    self.now = pd.Timestamp(now)

  def __call__(self):
    return self.now

  def sleep(self, seconds):
    self.now += pd.Timedelta(seconds=seconds)


class Exchange(http.server.ThreadingHTTPServer):
  """GET /api/v3/klines of `bars` as of `clock()`: the bars opened by then, the last one still
  forming (half its move, half its volume)."""

  def __init__(self, bars, clock):
    super().__init__(('127.0.0.1', 0), _Handler)
    self.bars, self.clock = bars, clock
    self.opens = bars.index.asi8 // 10**6
    self.klines = [[int(t), *(repr(float(v)) for v in row), int(t) + 3_599_999, '0', 1, '0',
                    '0', '0'] for t, row in zip(self.opens, bars.to_numpy(), strict=True)]

  @property
  def url(self):
    return f'http://127.0.0.1:{self.server_address[1]}'

  def answer(self, query):
    now = self.clock().value // 10**6
    count = int(np.searchsorted(self.opens, now, side='right'))
    start = (int(np.searchsorted(self.opens, int(query['startTime']))) if 'startTime' in query
             else max(0, count - int(query['limit'])))
    out = self.klines[start:min(count, start + int(query['limit']))]
    if out and out[-1][0] + 3_600_000 > now:  # still forming
      o, c, v = (float(out[-1][k]) for k in (1, 4, 5))
      out[-1] = [*out[-1][:4], repr((o + c) / 2), repr(v / 2), *out[-1][6:]]
    return out


class _Handler(http.server.BaseHTTPRequestHandler):
  def do_GET(self):
    query = dict(urllib.parse.parse_qsl(urllib.parse.urlparse(self.path).query))
    body = json.dumps(self.server.answer(query)).encode()
    self.send_response(200)
    self.send_header('Content-Type', 'application/json')
    self.end_headers()
    self.wfile.write(body)

  def log_message(self, *args):
    pass


@pytest.fixture(scope='module')
def market(tmp_path_factory):
  """(bars, their CSV, the exchange): 700 gap-free BTC bars of 2025, served from the first bar
  the members can score."""
  bars = data.builtin_dataset('btc_usdt_1h_2025_2026').iloc[3000:3000 + NUM_BARS]
  assert not data.find_gaps(bars, HOUR).count
  path = tmp_path_factory.mktemp('replay') / 'btc_usdt_1h_replay.csv'
  bars.to_csv(path)
  exchange = Exchange(bars, FakeClock(bars.index[FIRST] + HOUR + pd.Timedelta(minutes=5)))
  thread = threading.Thread(target=exchange.serve_forever, daemon=True)
  thread.start()
  yield bars, path, exchange
  exchange.shutdown()
  exchange.server_close()


# Decision settings the backtest and paper trading share (flags of launch/trade_signal.py).
MEMBERS = ('small_a', 'small_b')
SHARED = {'calibration.mode': 'none', 'calibration.temperature': False,
          'predict_batch_size': 8, 'strategy': 'voting'}
CASES = {
    'seed': {'policy.mode': 'seed'},
    'fixed': {'policy.mode': 'fixed', 'policy.entry': 0.1, 'policy.exit': 0.02,
              'policy.min_hold': 6, 'policy.cooldown': 4, 'policy.sizing': 'fixed',
              'policy.allow_short': True, 'allow_short': True, 'fill': 'next_open'},
    # 12 policies and the seed at 4 thresholds; the validation bars choose a margin policy.
    'select': {'policy.mode': 'select', 'policy.grid.entry': '0.1',
               'policy.grid.exit_gap': '0.1,0.15', 'policy.grid.min_hold': '12,24,48',
               'policy.grid.cooldown': '0,4', 'policy.grid.sizing': 'fixed'},
}


def make_config(overrides):
  config = config_lib.backtest_config()
  for key, value in overrides.items():
    *path, name = key.split('.')
    node = config
    for part in path:
      node = node[part]
    node[name] = value
  return config


def flags_of(overrides):
  return [f'--config.{k}={v}' for k, v in overrides.items()]


def backtest(repo_root, case, bars_csv, outdir):
  """launch/backtest.py's pipeline on the served bars: (outcome, per-bar equity, trades)."""
  config = make_config({**SHARED, **CASES[case], 'significance.num_resamples': 20,
                        'significance.num_shuffles': 20})
  config.dataset = str(bars_csv)
  config.checkpoints = ','.join(str(repo_root / 'checkpoints' / m) for m in MEMBERS)
  outcome = evaluate.backtest_pipeline(config, str(outdir), log=lambda line: None)
  results = json.loads((outdir / 'backtest_results.json').read_text())
  trades = pd.read_csv(outdir / 'backtest_trades.csv')
  trades.index = pd.DatetimeIndex(pd.to_datetime(trades.pop('time'), utc=True))
  return outcome, np.asarray(results['curves']['equity']), trades


def follow(repo_root, exchange, ledger_dir, case, policy_file, max_bars, logs):
  """One run of the paper-trading loop as a restart starts it: ledger and decider from disk."""
  config = make_config({**SHARED, **({} if policy_file else CASES[case])})
  decider, choice, settings = live.load_decider(
      config, checkpoints=None if policy_file else [str(repo_root / 'checkpoints' / m)
                                                    for m in MEMBERS],
      policy_file=policy_file, asset='btcusdt', log=logs.append)
  source = sources.BinanceSource('BTCUSDT', base_url=exchange.url, sleep=exchange.clock.sleep)
  ledger = ledger_lib.Ledger.open(
      ledger_dir, {'data': source.name, 'interval': '1h', 'history': HISTORY, **settings},
      log=logs.append)
  try:
    live.paper_trade(source, decider, ledger, history=HISTORY, max_bars=max_bars,
                     clock=exchange.clock, sleep=exchange.clock.sleep, log=logs.append)
  finally:
    ledger.close()  # as the process's exit would: the next restart takes the lock
  return ledger, decider, choice


# Runs launch/trade_signal.py and kills it with SIGKILL during its KILL_AT-th ledger write:
# in the CSV row ('csv': part of the row reached the disk) or before state.json is replaced.
KILLER = '''
import os, runpy, signal, sys
from himari_jax.live import ledger as ledger_lib
kill_at, where = int(os.environ['KILL_AT']), os.environ['KILL_WHERE']
append, count = ledger_lib.Ledger.append, [0]

def die(*args):
  if where == 'csv':
    os.ftruncate(args[0], os.fstat(args[0]).st_size - 25)
  os.kill(os.getpid(), signal.SIGKILL)

def killing_append(self, rows, state):
  count[0] += 1
  if count[0] == kill_at:
    setattr(os, 'fsync' if where == 'csv' else 'replace', die)
  append(self, rows, state)

ledger_lib.Ledger.append = killing_append
sys.argv = ['trade_signal.py', *sys.argv[1:]]
runpy.run_path('launch/trade_signal.py', run_name='__main__')
'''


def killed_trade_signal(repo_root, exchange, ledger_dir, case, policy_file, where, kill_at):
  members = ','.join(str(repo_root / 'checkpoints' / m) for m in MEMBERS)
  flags = ([f'--policy={policy_file}'] if policy_file else
           [f'--checkpoints={members}', *flags_of(CASES[case])])
  env = {**os.environ, 'JAX_PLATFORMS': 'cpu', 'PYTHONPATH': str(repo_root),
         'KILL_AT': str(kill_at), 'KILL_WHERE': where}
  done = subprocess.run(
      [sys.executable, '-c', KILLER, '--data=binance:BTCUSDT', f'--base_url={exchange.url}',
       f'--history={HISTORY}', '--follow', f'--ledger={ledger_dir}', '--max_bars=50',
       *flags_of(SHARED), *flags],
      capture_output=True, text=True, cwd=repo_root, env=env, timeout=300)
  assert done.returncode == -signal.SIGKILL, done.stderr[-3000:]
  return done


def recorded(ledger_dir):
  """Complete rows in the ledger's CSV (a torn last line is not one)."""
  path = ledger_dir / ledger_lib.LEDGER_CSV
  return max(0, path.read_bytes().count(b'\n') - 1) if path.exists() else 0


@pytest.mark.slow  # 1-2 min: CI runs it in its second step
@pytest.mark.parametrize('case, kill', [('seed', 'csv'), ('fixed', None), ('select', 'state')])
def test_paper_trading_replays_the_backtest(market, repo_root, tmp_path, case, kill):
  bars, bars_csv, exchange = market
  exchange.clock.now = bars.index[FIRST] + HOUR + pd.Timedelta(minutes=5)
  outcome, equity, trades = backtest(repo_root, case, bars_csv, tmp_path / 'backtest')
  policy_file = str(tmp_path / 'backtest' / evaluate.POLICY_JSON) if case == 'select' else None
  ledger_dir = tmp_path / 'paper'
  rng = np.random.default_rng(len(case))
  logs, runs = [], 0
  while left := NUM_BARS - FIRST - recorded(ledger_dir):
    if kill and runs == 2:
      # Away 5 hours, then the program itself, killed while it writes the 3rd bar of those.
      exchange.clock.now += pd.Timedelta(hours=5)
      killed_trade_signal(repo_root, exchange, ledger_dir, case, policy_file, kill, 3)
      csv = (ledger_dir / ledger_lib.LEDGER_CSV).read_bytes()
      assert csv.endswith(b'\n') == (kill == 'state')
    else:
      ledger, decider, choice = follow(repo_root, exchange, ledger_dir, case, policy_file,
                              min(left, int(rng.integers(1, 160))), logs)
      if rng.random() < 0.3:  # stopped a while: the bars closed meanwhile are caught up
        exchange.clock.now += pd.Timedelta(hours=float(rng.integers(1, 6)))
    runs += 1
  assert runs >= 4 and decider.min_bars == FIRST + 1
  rows = ledger.rows
  assert list(rows.index) == list(bars.index[FIRST:])
  # Bars before the first the members score are flat in the backtest: the ledger starts there.
  assert (trades.index >= bars.index[FIRST]).all()
  filled = rows[rows['fill_qty'] != 0]
  assert len(filled) == len(trades) > 5
  np.testing.assert_array_equal(filled.index, trades.index)
  np.testing.assert_array_equal(np.abs(filled['fill_qty']), trades['quantity'])
  np.testing.assert_array_equal(filled['fill_price'], trades['price'])
  np.testing.assert_array_equal(filled['position'], trades['position_after'])
  positions = trades['position_after'].reindex(bars.index, method='ffill').fillna(0.0)
  np.testing.assert_array_equal(rows['position'], positions.iloc[FIRST:])
  np.testing.assert_allclose(rows['equity'], equity[FIRST:], rtol=1e-9, atol=0)
  # The state a restart reads back is the state the backtest ends in, bit for bit.
  decisions = decider.decide(bars)
  _, end = decider.trade(bars, actions=decisions.actions, confidence=decisions.confidence,
                         probs=decisions.combined())
  for restored, expected in zip(jax.tree.leaves(live.restore_state(decider, ledger)),
                                jax.tree.leaves(end), strict=True):
    np.testing.assert_array_equal(restored, expected)
  if case != 'seed':  # a policy's bars in its side count on across every restart
    side, held = rows['side'].to_numpy(), rows['bars_in_side'].to_numpy()
    np.testing.assert_array_equal(held[1:], np.where(side[1:] == side[:-1],
                                                     np.minimum(held[:-1] + 1, 1e6), 0))
    assert (side != 0).any()
  # One line names the policy in the backtest's reports and in the paper-trading summary.
  line = report.policy_line(outcome['policy'])
  results = json.loads((tmp_path / 'backtest' / 'backtest_results.json').read_text())
  assert results['policy_line'] == line
  assert live.ledger_summary(ledger, choice.summary)[0] == line
  if case == 'seed':
    assert logs[0].startswith('policy: no --policy given; decision policy: seed')
  if case == 'select':  # chosen on validation bars before the traded ones, for these members
    assert choice.mode == 'select' and choice.policy is not None
    saved = json.loads(open(policy_file).read())
    assert saved['line'] == line and saved['chosen_on']['bars'] > 1000
    assert pd.Timestamp(saved['chosen_on']['last']) < bars.index[0]
    assert [os.path.basename(m['path']) for m in saved['members']] == list(MEMBERS)
  if kill == 'state':
    assert any('1 bar(s) were recorded after the last state save' in line for line in logs)
  state = json.loads((ledger_dir / ledger_lib.LEDGER_STATE).read_text())
  assert state['bars'] == len(rows) and state['carry']['position'] == rows['position'].iloc[-1]
