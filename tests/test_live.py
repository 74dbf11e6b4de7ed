"""Paper trading against a local Binance-like server serving recorded klines (bundled bars).

The loop runs on a simulated clock shared with the server: `sleep` advances it, and the server
serves the bars opened by then, the last one still forming (with partial prices, so a loop
that decided on it would record other prices than the bundled bar's).
"""

import http.server
import json
import os
import signal
import subprocess
import sys
import threading
import urllib.parse

import numpy as np
import pandas as pd
import pytest
from conftest import load_config_file

from himari_jax import locks
from himari_jax.backtest import decider as decider_lib
from himari_jax.backtest import engine as backtest
from himari_jax.backtest import report
from himari_jax.data import ohlcv as data
from himari_jax.inference import decisions as decisions_lib
from himari_jax.live import ledger as ledger_lib
from himari_jax.live import paper as live
from himari_jax.live import sources

HOUR = pd.Timedelta('1h')
HISTORY = 24
PARAMS = backtest.make_params()


class MomentumScorer:
  """One deterministic member: BUY 0.6 after a rise over 3 bars, SELL 0.6 after a fall."""

  names = ['momentum']
  min_bars = 4

  def probabilities(self, df, bars=None):
    rows = np.arange(len(df)) if bars is None else np.asarray(bars)
    close = df['close'].to_numpy()
    up = close[rows] > close[np.maximum(rows - 3, 0)]
    probs = np.where(up[:, None], [0.2, 0.2, 0.6], [0.6, 0.2, 0.2]).astype(np.float32)
    available = rows >= 3
    probs[~available] = decisions_lib.HOLD_PROBS
    return probs[None], available, [{'mode': 'none'}]


MOMENTUM = decider_lib.Decider(PARAMS, scorer=MomentumScorer())


class FakeClock:
  def __init__(self, now):
    self.now = pd.Timestamp(now)
    self.sleeps = []

  def __call__(self):
    return self.now

  def sleep(self, seconds):
    self.sleeps.append(seconds)
    self.now += pd.Timedelta(seconds=seconds)


class FakeExchange:
  """Recorded bars served as /api/v3/klines, as of `clock()` (minus `lag`), with faults."""

  def __init__(self, bars, clock):
    self.bars, self.clock = bars, clock
    self.lag = pd.Timedelta(0)  # the exchange's clock behind the loop's
    self.missing = set()  # bars never served (a gap)
    self.duplicated = set()  # bars served twice in one answer
    self.errors = []  # HTTP status codes answered to the next requests
    self.frozen_at = None  # serve no bar that closes after this (a stale feed)
    self.requests = []

  def klines(self, query):
    now = self.clock() - self.lag
    bars = self.bars[(self.bars.index <= now) & ~self.bars.index.isin(list(self.missing))]
    if self.frozen_at is not None:  # publishes nothing new: no bar closed after frozen_at
      bars = bars[bars.index + HOUR <= self.frozen_at]
    if 'startTime' in query:
      bars = bars[bars.index >= pd.Timestamp(int(query['startTime']), unit='ms', tz='UTC')]
      bars = bars.iloc[:int(query['limit'])]
    else:
      bars = bars.iloc[-int(query['limit']):]
    out = []
    for t, r in bars.iterrows():
      values = [r.open, r.high, r.low, r.close, r.volume]
      if t + HOUR > now:  # still forming: the close half-way there, half the volume
        values = [r.open, r.high, r.low, (r.open + r.close) / 2, r.volume / 2]
      kline = [t.value // 10**6, *(repr(float(v)) for v in values),
               (t + HOUR).value // 10**6 - 1, '0', 1, '0', '0', '0']
      out += [kline, kline] if t in self.duplicated else [kline]
    return out


@pytest.fixture
def market():
  """(exchange, clock, base_url): BTC bars of 2025-01-20 .. 02-05; the clock at 02-03 10:20."""
  bars = data.builtin_dataset('btc_usdt_1h_2025_2026').loc['2025-01-20':'2025-02-05']
  clock = FakeClock('2025-02-03 10:20:00+00:00')
  exchange = FakeExchange(bars, clock)

  class Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
      url = urllib.parse.urlparse(self.path)
      query = dict(urllib.parse.parse_qsl(url.query))
      exchange.requests.append(query)
      if exchange.errors:
        status, body = exchange.errors.pop(0), b'{"code": -1, "msg": "busy"}'
      elif url.path != '/api/v3/klines' or query.get('symbol') != 'BTCUSDT':
        status, body = 400, b'{"code": -1121, "msg": "Invalid symbol."}'
      else:
        status, body = 200, json.dumps(exchange.klines(query)).encode()
      self.send_response(status)
      self.send_header('Content-Type', 'application/json')
      self.end_headers()
      self.wfile.write(body)

    def log_message(self, *args):
      pass

  server = http.server.ThreadingHTTPServer(('127.0.0.1', 0), Handler)
  thread = threading.Thread(target=server.serve_forever, daemon=True)
  thread.start()
  yield exchange, clock, f'http://127.0.0.1:{server.server_address[1]}'
  server.shutdown()
  server.server_close()


def follow(market, ledger_dir, logs=None, symbol='BTCUSDT', settings=None, **options):
  exchange, clock, url = market
  logs = [] if logs is None else logs
  source = sources.BinanceSource(symbol, base_url=url, backoff=0.5, retries=2, page_size=20,
                              sleep=clock.sleep, log=logs.append)
  ledger = ledger_lib.Ledger.open(ledger_dir, settings or {'data': source.name, 'history': HISTORY},
                            log=logs.append)
  try:
    decided = live.paper_trade(source, MOMENTUM, ledger, history=HISTORY, clock=clock,
                               sleep=clock.sleep, log=logs.append, **options)
  finally:
    ledger.close()
  return decided, ledger


def read_ledger(ledger_dir):
  rows = pd.read_csv(ledger_dir / ledger_lib.LEDGER_CSV)
  rows.index = pd.DatetimeIndex(pd.to_datetime(rows.pop('time'), utc=True)).as_unit('ns')
  return rows


def test_follow_decides_each_closed_bar_once_as_the_backtest_fills(market, tmp_path):
  exchange, clock, _ = market
  decided, ledger = follow(market, tmp_path / 'paper', max_bars=6)
  assert decided == 6
  rows = read_ledger(tmp_path / 'paper')
  # A new ledger starts at the latest closed bar (09:00 at 10:20), then one bar per hour.
  assert list(rows.index) == list(pd.date_range('2025-02-03 09:00', periods=6, freq='h',
                                                tz='UTC'))
  # The bars recorded are the final bars: the forming bar was never decided on.
  bars = exchange.bars.loc[rows.index]
  pd.testing.assert_frame_equal(rows[list(data.COLUMNS)], bars, check_names=False,
                                check_freq=False)
  # Each poll waits for the next close plus the poll delay: 10:20 -> 11:00:05 -> ...
  assert clock.now == pd.Timestamp('2025-02-03 15:00:05', tz='UTC')
  # Fills, costs and equity are exactly a backtest of the same decisions.
  actions = rows['action'].map(['SELL', 'HOLD', 'BUY'].index).to_numpy()
  result = backtest.run_backtest(bars, actions, rows['confidence'].to_numpy(), PARAMS)
  for name in ('fill_qty', 'fill_price', 'commission', 'position', 'cash', 'equity'):
    np.testing.assert_array_equal(rows[name], np.asarray(result.__getattribute__(name)), name)
  assert rows['fill_qty'].ne(0).any()
  state = json.loads((tmp_path / 'paper' / ledger_lib.LEDGER_STATE).read_text())
  assert state['bars'] == 6 and state['last_bar'] == '2025-02-03T14:00:00+00:00'
  assert state['equity'] == rows['equity'].iloc[-1]


def test_restart_in_the_middle_neither_repeats_nor_skips(market, tmp_path):
  exchange, clock, _ = market
  start = clock.now
  follow(market, tmp_path / 'straight', max_bars=8)
  clock.now = start
  follow(market, tmp_path / 'restarted', max_bars=3)
  state_after_3 = (tmp_path / 'restarted' / ledger_lib.LEDGER_STATE).read_text()
  follow(market, tmp_path / 'restarted', max_bars=1)
  # Stopped for 2.5 hours, and killed between the CSV row and the state of its 4th bar.
  (tmp_path / 'restarted' / ledger_lib.LEDGER_STATE).write_text(state_after_3)
  clock.now += pd.Timedelta(hours=2.5)
  logs = []
  decided, _ = follow(market, tmp_path / 'restarted', logs, max_bars=4)
  assert decided == 4  # the 3 bars missed while stopped, then the next one on time
  assert any('1 bar(s) were recorded after the last state save' in line for line in logs)
  straight, restarted = read_ledger(tmp_path / 'straight'), read_ledger(tmp_path / 'restarted')
  pd.testing.assert_frame_equal(restarted.drop(columns='decided_at'),
                                straight.drop(columns='decided_at'))


def test_a_torn_last_line_is_decided_again(market, tmp_path):
  follow(market, tmp_path / 'paper', max_bars=2)
  expected = read_ledger(tmp_path / 'paper')
  with open(tmp_path / 'paper' / ledger_lib.LEDGER_CSV, 'a') as f:
    f.write('2025-02-03T11:00:00+00:00,97000.0,97')  # killed while writing the next row
  market[1].now -= pd.Timedelta(minutes=30)  # back at 10:35, before bar 10:00 closes
  follow(market, tmp_path / 'paper', max_bars=1)
  rows = read_ledger(tmp_path / 'paper')
  assert len(rows) == 3 and rows.index[-1] == pd.Timestamp('2025-02-03 11:00', tz='UTC')
  pd.testing.assert_frame_equal(rows.iloc[:2], expected)


def test_a_refused_ledger_is_left_as_it_was(market, tmp_path):
  follow(market, tmp_path / 'paper', max_bars=2)
  csv = tmp_path / 'paper' / ledger_lib.LEDGER_CSV
  csv.write_bytes(csv.read_bytes()[:-40])  # the last row cut short: one bar less than counted
  before = {p.name: p.read_bytes() for p in (tmp_path / 'paper').iterdir()}
  with pytest.raises(ledger_lib.LedgerError, match=f'^{csv} has 1 bars but state.json counts 2'):
    follow(market, tmp_path / 'paper', max_bars=1)
  assert {p.name: p.read_bytes() for p in (tmp_path / 'paper').iterdir()} == before


def test_gap_is_refused_and_the_ledger_kept(market, tmp_path):
  exchange, _, _ = market
  exchange.missing = {pd.Timestamp('2025-02-03 12:00', tz='UTC')}
  with pytest.raises(sources.FeedError, match=r'bar 2025-02-03 12:00 UTC is missing \(the next bar '
                                           r'served is 2025-02-03 13:00\); refusing'):
    # Until bar 13:00 closes a missing 12:00 bar is only late; past `stale_after` the feed
    # counts as stale (test_stale_feed_is_reported).
    follow(market, tmp_path / 'paper', max_bars=10, stale_after=7200)
  assert read_ledger(tmp_path / 'paper').index[-1] == pd.Timestamp('2025-02-03 11:00', tz='UTC')


def test_duplicate_bar_is_decided_once(market, tmp_path):
  exchange, _, _ = market
  exchange.duplicated = {pd.Timestamp(f'2025-02-03 {h}:00', tz='UTC') for h in (9, 10, 11)}
  follow(market, tmp_path / 'paper', max_bars=4)
  rows = read_ledger(tmp_path / 'paper')
  assert list(rows.index) == list(pd.date_range('2025-02-03 09:00', periods=4, freq='h',
                                                tz='UTC'))


def test_a_bar_decided_before_it_closed_is_refused(market, tmp_path):
  exchange, clock, _ = market
  exchange.lag = pd.Timedelta(minutes=30)  # the loop's clock runs 30 minutes fast
  clock.now = pd.Timestamp('2025-02-03 10:50', tz='UTC')
  follow(market, tmp_path / 'paper', max_polls=1)  # takes the forming 10:00 bar as closed
  with pytest.raises(sources.FeedError,
                     match=r'bar 2025-02-03 10:00 UTC was decided on as .* but is '
                           r'now served as .*not closed when decided'):
    follow(market, tmp_path / 'paper', max_bars=3)


def test_server_errors_are_retried_with_backoff_then_reported(market, tmp_path):
  exchange, clock, _ = market
  exchange.errors = [503, 502]
  logs = []
  assert follow(market, tmp_path / 'paper', logs, max_polls=1)[0] == 1
  assert [line for line in logs if 'retrying' in line] == [
      'binance:BTCUSDT: HTTP 503 Service Unavailable: {"code": -1, "msg": "busy"}; retrying in '
      '0.5 s', 'binance:BTCUSDT: HTTP 502 Bad Gateway: {"code": -1, "msg": "busy"}; retrying '
      'in 1 s']
  exchange.errors = [500] * 3
  with pytest.raises(sources.FeedError, match=r'HTTP 500 .*gave up after 3 attempts'):
    follow(market, tmp_path / 'paper', max_polls=1)
  with pytest.raises(sources.FeedError, match=r'HTTP 400 .*Invalid symbol.*check the symbol'):
    follow(market, tmp_path / 'other', symbol='NOPEUSDT', max_polls=1)
  # 2 errors, the newest bar, 2 pages of 20 for 25 bars; then 3 errors; then one client error,
  # which is not retried.
  assert len(exchange.requests) == 5 + 3 + 1


def test_stale_feed_is_reported(market, tmp_path):
  exchange, clock, _ = market
  exchange.frozen_at = pd.Timestamp('2025-02-03 11:30', tz='UTC')
  with pytest.raises(sources.FeedError, match=r'stale feed, bar 2025-02-03 11:00 UTC should have '
                                           r'closed at 12:00 .*latest closed bar .* 10:00'):
    follow(market, tmp_path / 'paper', stale_after=120, max_bars=10)
  assert len(read_ledger(tmp_path / 'paper')) == 2


def test_other_settings_are_refused(market, tmp_path):
  follow(market, tmp_path / 'paper', max_bars=1)
  with pytest.raises(ledger_lib.LedgerError, match=r'other settings \(history: \[24\] vs \[48\]\)'):
    follow(market, tmp_path / 'paper', settings={'data': 'binance:BTCUSDT', 'history': 48},
           max_bars=1)


HOLD_LEDGER = ('from himari_jax.live import ledger\n'
               'held = ledger.Ledger.open(sys.argv[1], {"data": "binance:BTCUSDT", "history": 24})')


def test_a_ledger_open_elsewhere_is_refused_until_its_holder_dies(market, tmp_path, lock_holder):
  follow(market, tmp_path / 'paper', max_bars=2)
  before = {p.name: p.read_bytes() for p in (tmp_path / 'paper').iterdir()}
  holder = lock_holder(HOLD_LEDGER, tmp_path / 'paper')
  lock_path = tmp_path / 'paper' / ledger_lib.LEDGER_LOCK
  with pytest.raises(locks.LockError, match=f'^{lock_path}: the ledger {tmp_path / "paper"} is '
                                            f'in use by process {holder.pid} '):
    follow(market, tmp_path / 'paper', max_bars=2)
  after = {p.name: p.read_bytes() for p in (tmp_path / 'paper').iterdir()}
  assert {k: v for k, v in after.items() if k != ledger_lib.LEDGER_LOCK} == {
      k: v for k, v in before.items() if k != ledger_lib.LEDGER_LOCK}
  holder.send_signal(signal.SIGKILL)  # no chance to clean up: the kernel drops its flock
  holder.wait()
  assert follow(market, tmp_path / 'paper', max_bars=1)[0] == 1
  assert len(read_ledger(tmp_path / 'paper')) == 3


def test_latest_decision_leaves_out_an_unclosed_last_row(tmp_path):
  bars = data.builtin_dataset('btc_usdt_1h_2025_2026').iloc[:40]
  path = tmp_path / 'bars.csv'
  bars.to_csv(path)
  now = bars.index[-1] + pd.Timedelta(minutes=59)
  row, unclosed = live.latest_decision(sources.CsvSource(path), MOMENTUM, HISTORY, now)
  assert (row['time'], unclosed) == (bars.index[-2], 1)
  # The seed's rule run from flat over the window: the position after its last bar.
  window = bars.iloc[-25:-1]
  decisions = MOMENTUM.decide(window)
  expected = backtest.run_backtest(window, decisions.actions, decisions.confidence, PARAMS)
  assert row['position'] == float(expected.position[-1])
  assert row['side'] == np.sign(row['position'])
  lines = live.format_decision(row, HOUR, 'bars.csv', PARAMS)
  assert lines[0] == 'bars.csv: bar 2025-01-02 14:00 UTC, closed 2025-01-02 15:00 UTC'
  assert lines[3].startswith('  position    ') and 'of equity after this bar' in lines[3]
  with pytest.raises(data.DataError, match='3 bars up to .* a decision needs 4'):
    live.latest_decision(sources.CsvSource(path), MOMENTUM, HISTORY, bars.index[3])


def test_a_member_step_decides_as_the_backtest_does(repo_root):
  config = load_config_file('backtest')
  config.calibration.mode, config.calibration.temperature = 'fixed', False
  config.strategy, config.confidence_threshold = 'confidence_weighted', 0.4
  config.predict_batch_size = 8
  paths = [str(repo_root / 'checkpoints' / name) for name in ('small_a', 'small_b')]
  window = data.builtin_dataset('btc_usdt_1h_2025_2026').iloc[1000:1250]
  scorer = decider_lib.load_scorer(paths, config, log=lambda line: None)
  decider = decider_lib.Decider.from_config(config, None, scorer)
  step = decider.step(window, None)
  everything = decider.decide(window)
  assert step.decisions.actions[0] == everything.actions[-1]
  assert step.decisions.confidence[0] == everything.confidence[-1]
  np.testing.assert_array_equal(step.probs, everything.combined()[-1])
  np.testing.assert_array_equal(step.decisions.probs[:, 0], everything.probs[:, -1])


def run_cli(repo_root, *flags):
  env = {**os.environ, 'JAX_PLATFORMS': 'cpu', 'PYTHONPATH': str(repo_root)}
  return subprocess.run(
      [sys.executable, str(repo_root / 'launch' / 'trade_signal.py'),
       '--checkpoints=checkpoints/small_a', *flags,
       # The seed's fixed logit bias: fitting one needs the member's training data, which
       # the backtest tests cover; these tests are about the command.
       '--config.calibration.mode=fixed', '--config.calibration.temperature=False'],
      capture_output=True, text=True, cwd=repo_root, env=env, timeout=600)


def test_cli_follows_binance_and_resumes_its_ledger(market, repo_root, tmp_path):
  exchange, clock, url = market
  exchange.frozen_at = clock.now  # the real clock is later: serve only bars closed by then
  flags = ['--data=binance:BTCUSDT', f'--base_url={url}', '--history=250', '--follow',
           f'--ledger={tmp_path / "paper"}', '--max_polls=1']
  first = run_cli(repo_root, *flags)
  assert first.returncode == 0, first.stderr[-3000:]
  ledger_csv = tmp_path / 'paper' / ledger_lib.LEDGER_CSV
  assert first.stdout.splitlines()[-1] == f'1 bar(s) decided; ledger: {ledger_csv}'
  again = run_cli(repo_root, *flags)
  assert again.returncode == 0, again.stderr[-3000:]
  assert again.stdout.splitlines()[-1].startswith('0 bar(s) decided')
  rows = read_ledger(tmp_path / 'paper')
  assert list(rows.index) == [pd.Timestamp('2025-02-03 09:00', tz='UTC')]
  changed = run_cli(repo_root, *flags, '--config.strategy=disagreement')
  assert changed.returncode != 0
  assert changed.stderr.strip().splitlines()[-1].startswith('error: ')
  assert 'other settings (strategy' in changed.stderr


def test_cli_prints_the_decision_of_the_shipped_checkpoint(repo_root, tmp_path):
  bars = data.builtin_dataset('btc_usdt_1h_2025_2026').iloc[:260]
  path = tmp_path / 'btc.csv'
  bars.to_csv(path)
  done = run_cli(repo_root, f'--data={path}', '--history=250')
  assert done.returncode == 0, done.stderr[-3000:]
  lines = done.stdout.splitlines()[-4:]
  assert lines[0] == f'{path}: bar 2025-01-11 19:00 UTC, closed 2025-01-11 20:00 UTC'
  assert lines[1].split()[0] == 'action' and lines[1].split()[1] in ('SELL', 'HOLD', 'BUY')
  probs = [float(x) for x in lines[2].split()[2::2]]
  assert lines[2].split()[1::2] == ['SELL', 'HOLD', 'BUY'] and sum(probs) == pytest.approx(1, 1e-2)
  assert lines[3].startswith('  position    ')
  # No --policy: the first line says which rule it trades.
  assert done.stdout.splitlines()[0].startswith(
      'policy: no --policy given; decision policy: seed (argmax + confidence_threshold 0, '
      'sizing confidence)')
  bad = run_cli(repo_root, f'--data={path}', '--history=100')
  assert bad.returncode != 0
  assert bad.stderr.strip().splitlines()[-1] == (
      f'error: {path}: 100 bars up to 2025-01-11 19:00:00+00:00, a decision needs 200; give '
      'more history')


def test_a_ledger_refuses_another_policy_unless_started_anew(market, tmp_path):
  settings = {'data': 'binance:BTCUSDT', 'history': HISTORY,
              'policy': {'mode': 'fixed', 'entry': 0.2, 'min_hold': 6}}
  follow(market, tmp_path / 'paper', settings=settings, max_bars=2)
  other = {**settings, 'policy': {'mode': 'fixed', 'entry': 0.3, 'min_hold': 6}}
  with pytest.raises(ledger_lib.LedgerError,
                     match=r'other settings \(policy.entry: \[0.2\] vs \[0.3\]\); .*--new_ledger'):
    ledger_lib.Ledger.open(tmp_path / 'paper', other)
  logs = []
  ledger = ledger_lib.Ledger.open(tmp_path / 'paper', other, log=logs.append, new=True)
  assert not len(ledger.rows) and ledger.state is None
  (archived,) = (tmp_path / 'paper' / 'archive').iterdir()
  assert len(read_ledger(archived)) == 2 and 'moved to' in logs[0]


def test_policy_file_hands_the_backtest_settings_to_paper_trading(repo_root, tmp_path):
  from himari_jax.backtest import evaluate

  config = load_config_file('backtest')
  config.calibration.mode, config.calibration.temperature = 'none', False
  config.strategy, config.policy.mode = 'confidence_weighted', 'fixed'
  config.policy.entry, config.policy.min_hold = 0.15, 12
  paths = [str(repo_root / 'checkpoints' / 'small_a')]
  scorer = decider_lib.load_scorer(paths, config, log=lambda line: None)
  choice = evaluate.choose_policy(config)
  path = evaluate.write_policy_file(str(tmp_path / 'policy.json'), config, choice, scorer,
                                    backtest_data={})
  live_config = load_config_file('backtest')  # the defaults: seed policy, voting, fit_rates
  logs = []
  decider, read, settings = live.load_decider(live_config, checkpoints=None, policy_file=path,
                                              log=logs.append)
  assert logs[0] == f'policy: {report.policy_line(choice.summary)} (from {path})'
  assert (live_config.strategy, live_config.calibration.mode) == ('confidence_weighted', 'none')
  assert decider.policy is not None and read.mode == 'fixed'
  assert settings['policy']['entry'] == 0.15 and settings['members'] == scorer.identity()
  with pytest.raises(ValueError, match=r'was chosen for members \[.*small_a \(step \d+\)\], '
                                       r'not \[.*small_b \(step \d+\)\]'):
    live.load_decider(load_config_file('backtest'), policy_file=path, log=logs.append,
                      checkpoints=[str(repo_root / 'checkpoints' / 'small_b')])


def test_cli_refuses_a_ledger_another_loop_follows(repo_root, tmp_path, lock_holder):
  bars = data.builtin_dataset('btc_usdt_1h_2025_2026').iloc[:260]
  bars.to_csv(tmp_path / 'btc.csv')
  holder = lock_holder(HOLD_LEDGER, tmp_path / 'paper')
  done = run_cli(repo_root, f'--data={tmp_path / "btc.csv"}', '--history=250', '--follow',
                 f'--ledger={tmp_path / "paper"}', '--max_polls=1')
  assert done.returncode == 1
  assert done.stderr.strip().splitlines()[-1] == (
      f'error: {tmp_path / "paper" / ledger_lib.LEDGER_LOCK}: the ledger {tmp_path / "paper"} '
      f'is in use by process {holder.pid} (it holds this lock); wait for it to finish or stop '
      'it, or use another folder')
  assert sorted(p.name for p in (tmp_path / 'paper').iterdir()) == [ledger_lib.LEDGER_LOCK]
