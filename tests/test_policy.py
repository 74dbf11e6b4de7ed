"""Decision policies: a per-bar float64 reference loop, the seed as a special case, the sweep,
selection on validation bars only, and settings validation."""

import jax
import numpy as np
import pandas as pd
import pytest

from himari_jax.backtest import engine as backtest
from himari_jax.backtest import policy as P
from himari_jax.constants import BUY, HOLD, SELL
from himari_jax.data import ohlcv as data
from himari_jax.inference import ensemble
from himari_jax.stats import metrics, selection, sharpe_inference, significance

CAPITAL, COMMISSION, SLIPPAGE = 100_000.0, 0.001, 0.0005


def reference_policy(opens, closes, probs, sigma, *, fill='close', signal='margin', entry=0.2,
                     exit=0.0, min_hold=0, cooldown=0, sizing='confidence',
                     max_position_pct=0.1, target_vol=0.05, max_leverage=1.0, band=0.0,
                     allow_short=False, trim=True):
  """SPEC section 8 written out bar by bar on plain floats.

  Returns per-bar tuples (qty, price, commission, slippage, position, cash, equity).
  """
  cash, position, side, entry_bar, exit_bar, rows = CAPITAL, 0.0, 0, None, None, []
  for t in range(len(closes)):
    decision, ref = (t, closes[t]) if fill == 'close' else (t - 1, opens[t])
    qty = 0.0
    if decision >= 0:
      p_sell, _, p_buy = (float(x) for x in probs[decision])
      top = max(probs[decision])
      action = int(np.argmax(probs[decision])) if list(probs[decision]).count(top) == 1 else HOLD
      if signal == 'margin':
        score = p_buy - p_sell
        long_in, long_out = score > entry, score < exit
        short_in, short_out = allow_short and score < -entry, score > -exit
      else:
        long_in, long_out = action == BUY and p_buy >= entry, action == SELL and p_sell >= exit
        short_in = allow_short and action == SELL and p_sell >= entry
        short_out = action == BUY and p_buy >= exit
      exited = False
      if side != 0 and (long_out if side > 0 else short_out) and (
          decision - entry_bar >= min_hold):
        side, exit_bar, exited = 0, decision, True
      if side == 0 and (exit_bar is None or decision - exit_bar > cooldown
                        or (exited and cooldown == 0)):
        if long_in:
          side, entry_bar = 1, decision
        elif short_in:
          side, entry_bar = -1, decision
      budget = max(cash + position * ref, 0.0)
      if (side > 0 and long_in) or (side < 0 and short_in):
        if sizing == 'confidence':
          fraction = (p_buy if side > 0 else p_sell) * max_position_pct
        elif sizing == 'fixed':
          fraction = max_position_pct
        else:
          vol = sigma[decision]
          fraction = min(target_vol / vol, max_leverage) if np.isfinite(vol) else 0.0
        fill_price = ref * (1 + SLIPPAGE) if side > 0 else ref * (1 - SLIPPAGE)
        target = side * fraction * budget / fill_price
      else:
        target = 0.0 if side == 0 else position
      delta = target - position
      sign_change = position != 0 and np.sign(target) != np.sign(position)
      reduces = np.sign(target) == np.sign(position) and abs(target) < abs(position)
      if sign_change or (abs(delta) * ref > band * budget and (trim or not reduces)):
        qty = delta
        affordable = max(cash, 0.0) / (ref * (1 + SLIPPAGE) * (1 + COMMISSION))
        if qty > affordable:  # capped by cash; skipped when only dust is left
          qty = affordable if affordable * ref > 1e-6 * budget else 0.0
    price = ref * (1 + SLIPPAGE) if qty > 0 else ref * (1 - SLIPPAGE) if qty < 0 else 0.0
    fee, slip = abs(qty) * price * COMMISSION, abs(qty) * ref * SLIPPAGE
    cash = cash - qty * price - fee
    position += qty
    rows.append((qty, price, fee, slip, position, cash, cash + position * closes[t]))
  return rows


def persistent_probs(num_bars, seed):
  """Probabilities whose margin drifts slowly, so hysteresis and holding periods matter."""
  rng = np.random.default_rng(seed)
  logits = np.zeros((num_bars, 3))
  for t in range(1, num_bars):
    logits[t] = 0.85 * logits[t - 1] + rng.normal(0, 0.6, 3)
  probs = np.exp(logits)
  return probs / probs.sum(axis=1, keepdims=True)


def random_market(num_bars, seed):
  rng = np.random.default_rng(seed)
  closes = 100 * np.exp(np.cumsum(rng.normal(0, 0.01, num_bars)))
  opens = np.concatenate([[100.0], closes[:-1]]) * np.exp(rng.normal(0, 0.003, num_bars))
  return opens, closes


def assert_same_record(result, expected, rtol):
  expected = np.asarray(expected)
  np.testing.assert_array_equal(np.asarray(result.fill_qty) != 0, expected[:, 0] != 0,
                                err_msg='fill bars differ')
  for column, name in enumerate(('fill_qty', 'fill_price', 'commission', 'slippage',
                                 'position', 'cash', 'equity')):
    scale = np.max(np.abs(expected[:, column]))
    np.testing.assert_allclose(np.asarray(getattr(result, name)), expected[:, column],
                               rtol=rtol, atol=rtol * scale, err_msg=name)


CASES = {
    'confidence': dict(sizing='confidence', entry=0.2, exit=-0.05, min_hold=3, cooldown=2,
                       band=0.01, max_position_pct=0.5),
    'fixed_short': dict(sizing='fixed', entry=0.25, exit=0.05, min_hold=5, cooldown=0,
                        band=0.0, allow_short=True, max_position_pct=0.4),
    'vol_target': dict(sizing='vol_target', entry=0.15, exit=0.0, min_hold=2, cooldown=4,
                       band=0.02, target_vol=0.8, max_leverage=1.5),
    'vol_target_short_no_trim': dict(sizing='vol_target', entry=0.1, exit=-0.1, cooldown=1,
                                     band=0.03, target_vol=0.5, max_leverage=0.8,
                                     allow_short=True, trim=False),
    'argmax_hysteresis': dict(signal='argmax', entry=0.6, exit=0.45, min_hold=4, cooldown=3,
                              band=0.01, allow_short=True, max_position_pct=0.3),
}


@pytest.mark.parametrize('fill', backtest.FILLS)
@pytest.mark.parametrize('case', list(CASES))
def test_matches_reference_loop(case, fill):
  opens, closes = random_market(300, seed=len(case))
  probs = persistent_probs(300, seed=len(case) + 1)
  sigma = P.annualized_volatility(closes, window=24)
  settings = CASES[case]
  expected = reference_policy(opens, closes, probs, sigma, fill=fill, **settings)
  params = backtest.make_params(commission=COMMISSION, slippage=SLIPPAGE, fill=fill)
  with jax.enable_x64(True):
    result = P.run_policy(backtest.Prices(opens, closes), probs, P.make_policy(**settings),
                          params, sigma_annual=sigma)
    assert_same_record(result, expected, rtol=1e-9)
  qty = np.asarray(expected)[:, 0]
  # The case exercises entries, exits and resizes (more fills than sign changes).
  assert np.sum(qty != 0) > 10
  assert np.sum(qty != 0) > np.sum(np.diff(np.sign(np.asarray(expected)[:, 4])) != 0)


def model_like_probs(closes):
  """Probabilities from a trailing-momentum logit: deterministic, flickering like a model's."""
  momentum = np.concatenate([np.zeros(24), closes[24:] / closes[:-24] - 1])
  noise = np.sin(np.arange(len(closes)) * 0.7) * 0.8
  logits = np.stack([-60 * momentum + noise, np.full(len(closes), 0.3), 60 * momentum - noise],
                    axis=1)
  probs = np.exp(logits)
  return (probs / probs.sum(axis=1, keepdims=True)).astype(np.float32)


@pytest.mark.parametrize('options', [dict(), dict(fill='next_open'),
                                     dict(allow_short=True, sizing='fixed')],
                         ids=['seed', 'next_open', 'short_fixed'])
@pytest.mark.parametrize('threshold', [0.0, 0.55])
def test_seed_policy_gives_the_seed_fills_on_bundled_data(options, threshold):
  frame = data.builtin_dataset('btc_usdt_1h_2025_2026')
  probs = model_like_probs(frame['close'].to_numpy())
  actions, confidence = ensemble.combine(probs[None], 'voting', threshold=threshold)
  params = backtest.make_params(confidence_threshold=threshold, **options)
  seed = P.seed_policy(threshold, sizing=options.get('sizing', 'confidence'),
                       allow_short=options.get('allow_short', False))
  # The same fill bars; quantities equal up to XLA's operation order (float64: 1e-12).
  for x64, rtol in ((True, 1e-12), (False, 2e-5)):
    with jax.enable_x64(x64):
      expected = backtest.run_backtest(frame, actions, confidence, params)
      got = P.run_policy(frame, probs, seed, params)
      np.testing.assert_array_equal(np.asarray(got.fill_qty) != 0,
                                    np.asarray(expected.fill_qty) != 0)
      for name in ('fill_qty', 'fill_price', 'position', 'cash', 'equity'):
        scale = np.max(np.abs(np.asarray(getattr(expected, name))))
        np.testing.assert_allclose(np.asarray(getattr(got, name)),
                                   np.asarray(getattr(expected, name)), rtol=rtol,
                                   atol=rtol * scale, err_msg=name)
  assert np.sum(np.asarray(expected.fill_qty) != 0) > 100


@pytest.mark.parametrize('which', ['all', 'core'])
def test_sweep_matches_single_runs(which):
  opens, closes = random_market(250, seed=5)
  probs = np.stack([persistent_probs(250, seed=6), persistent_probs(250, seed=7)])
  policies = P.stack_policies([P.make_policy(**CASES[c]) for c in CASES])
  costs = backtest.make_grid(commission=(0.0, 0.002), fill=backtest.FILLS)
  prices = backtest.Prices(opens, closes)
  with jax.enable_x64(True):
    # batch_size 6: 2 signals x 3 settings per chunk, the last of 20 settings padded.
    table = P.sweep_policies(prices, probs, policies, costs, signal_names=['a', 'b'],
                             metrics=which, batch_size=6)
    assert len(table) == 2 * 5 * 4
    for row in table.sample(8, random_state=0).itertuples():
      policy = jax.tree.map(lambda x, i=row.policy: x[i], policies)
      params = jax.tree.map(lambda x, i=row.setting: x[i], costs)
      result = P.run_policy(prices, probs['ab'.index(row.signal)], policy, params)
      np.testing.assert_allclose(row.final_equity, float(result.equity[-1]), rtol=1e-9)
      assert row.num_trades == int(np.sum(np.asarray(result.fill_qty) != 0))
  assert list(table['policy.sizing'][:4]) == ['confidence'] * 4
  assert table['num_trades'].min() > 0


@pytest.mark.parametrize('settings, message', [
    (dict(entry=0.2, exit=0.3), 'exit must be <= entry'),
    (dict(signal='argmax', entry=0.5, exit=-0.1), 'exit must be <= entry'),
    (dict(band=-0.01), 'band must be finite and >= 0'),
    (dict(min_hold=-1), 'min_hold must be a whole number in'),
    (dict(min_hold=1.5), 'min_hold must be a whole number in'),
    (dict(cooldown=-2), 'cooldown must be'),
    (dict(sizing='vol_target', target_vol=0.0), 'target_vol must be finite and > 0'),
    (dict(target_vol=-0.1), 'target_vol must be'),
    (dict(max_leverage=0.0), 'max_leverage must be'),
    (dict(entry=1.5), 'entry must be in'),
    (dict(sizing='kelly'), 'sizing must be one of'),
    (dict(signal='logit'), 'signal must be one of'),
])
def test_bad_policy_settings_raise(settings, message):
  with pytest.raises(ValueError, match=message):
    P.make_policy(**settings)


def test_bad_batched_policy_and_probs_raise():
  grid = P.make_policy_grid(entry=(0.2, 0.3), exit=(0.0, 0.25, 0.4))
  assert np.shape(grid.entry) == (3,)  # (0.2, 0.25) and exit 0.4 are left out
  bad = grid.replace(band=np.array([0.0, -1.0, 0.0]))
  prices = np.full((5, 2), 100.0)
  with pytest.raises(ValueError, match='band must be'):
    P.sweep_policies(prices, np.full((5, 3), 1 / 3), bad, backtest.make_params())
  with pytest.raises(ValueError, match=r'bar 2 is'):
    probs = np.full((5, 3), 1 / 3)
    probs[2] = [0.5, 0.5, 0.5]
    P.run_policy(prices, probs, P.make_policy(), backtest.make_params())
  with pytest.raises(ValueError, match=r'N = 5 bars'):
    P.run_policy(prices, np.full((4, 3), 1 / 3), P.make_policy(), backtest.make_params())


def test_default_grid_and_score_input():
  grid = P.default_grid()
  num = np.shape(grid.entry)[0]
  assert 300 <= num <= 500
  table = P.policy_table(grid)
  assert set(table['sizing']) == set(P.POLICY_SIZINGS) and (table['signal'] == 'argmax').sum() == 4
  assert np.all(table['exit'] <= table['entry'])
  probs = P.probs_from_score(np.array([-0.5, 0.0, 0.7]))
  np.testing.assert_allclose(probs[:, 2] - probs[:, 0], [-0.5, 0.0, 0.7])
  np.testing.assert_allclose(probs.sum(axis=1), 1.0)


def test_selection_sees_only_validation_bars():
  frame = data.builtin_dataset('btc_usdt_1h_2025_2026').iloc[:3000]
  closes = frame['close'].to_numpy()
  probs = model_like_probs(closes)
  cut = 2000
  params = backtest.make_params()

  def select(full_frame):
    # What a pipeline does: causal volatility on the whole series, then validation bars only.
    sigma = P.annualized_volatility(full_frame['close'].to_numpy())
    return P.select_policy(full_frame.iloc[:cut], probs[:cut], params,
                           sigma_annual=sigma[:cut])

  base = select(frame)
  perturbed = frame.copy()
  rng = np.random.default_rng(0)
  perturbed.iloc[cut:, :4] *= rng.uniform(0.5, 1.5, size=(len(frame) - cut, 1))
  again = select(perturbed)
  assert again.index == base.index
  np.testing.assert_array_equal(again.table['objective'], base.table['objective'])
  # The same selection on other validation prices can choose differently.
  shifted = frame.copy()
  shifted.iloc[:cut, :4] = frame.iloc[:cut, :4].to_numpy()[::-1]
  other = select(shifted)
  assert not np.array_equal(other.table['objective'], base.table['objective'])

  assert base.num_trials == np.shape(P.default_grid().entry)[0] == len(base.table)
  chosen = base.table.iloc[base.index]
  assert chosen['objective'] == base.table['objective'].max()
  assert P.policy_to_dict(base.policy)['entry'] == chosen['policy.entry']
  # Every policy tried enters the deflated Sharpe ratio of the validation winner.
  dsr = significance.deflated_sharpe_ratio(0.01, 1000, trial_sharpes=base.trial_sharpes,
                                           num_trials=base.num_trials)
  dsr_one = significance.deflated_sharpe_ratio(0.01, 1000)
  assert 0.0 <= dsr < dsr_one


def test_turnover_objective_trades_less():
  frame = data.builtin_dataset('btc_usdt_1h_2025_2026').iloc[:2000]
  probs = model_like_probs(frame['close'].to_numpy())
  params = backtest.make_params()
  plain = P.select_policy(frame, probs, params)
  thrifty = P.select_policy(frame, probs, params, objective='sharpe_minus_turnover',
                            turnover_penalty=1.0)
  table = thrifty.table
  np.testing.assert_allclose(table['objective'],
                             table['sharpe'] - table['turnover_per_year'], rtol=1e-12)
  assert (table['turnover_per_year'].iloc[thrifty.index]
          <= table['turnover_per_year'].iloc[plain.index])
  with pytest.raises(ValueError, match='objective must be one of'):
    P.select_policy(frame, probs, params, objective='calmar')


def test_cost_sensitivity_curve():
  opens, closes = random_market(300, seed=11)
  probs = persistent_probs(300, seed=12)
  prices = backtest.Prices(opens, closes)
  params = backtest.make_params()
  policy = P.make_policy(**CASES['confidence'])
  curve = P.policy_cost_sensitivity(prices, probs, policy, params)
  assert list(curve['cost_multiplier']) == list(backtest.COST_MULTIPLIERS)
  # Costs only take away: the net return falls as they grow.
  assert np.all(np.diff(curve['total_return']) < 0)
  free = P.run_policy(prices, probs, policy, backtest.make_params(commission=0.0, slippage=0.0))
  np.testing.assert_allclose(curve['total_return'].iloc[0], float(free.equity[-1]) / 1e5 - 1,
                             rtol=1e-5)
  double = jax.tree.map(lambda x: x[-1], backtest.cost_grid(params))
  assert float(double.commission_buy) == pytest.approx(0.002)
  assert float(double.slippage_sell) == pytest.approx(0.001)


def _small_grid():
  return P.stack_policies([
      P.make_policy_grid(dict(band=0.01), entry=(0.1, 0.3), exit=(0.0, -0.1), min_hold=(0, 24),
                         sizing=('fixed',)),
      P.seed_policy(0.0), P.seed_policy(0.5)])


def test_selection_null_is_the_selection_rerun_on_rotated_probabilities():
  frame = data.builtin_dataset('btc_usdt_1h_2025_2026').iloc[:1500]
  probs = model_like_probs(frame['close'].to_numpy())
  params, grid = backtest.make_params(), _small_grid()
  null = P.selection_null(frame, probs, params, grid=grid, num_rotations=6, min_offset=200,
                          seed=3)
  assert null.offsets.shape == (6,) and np.all((null.offsets >= 200) & (null.offsets <= 1300))
  assert null.objective.shape == (6, 10)
  # One compiled sweep over the rotations gives what six separate selections give.
  for k, offset in enumerate(null.offsets):
    alone = P.select_policy(frame, np.roll(probs, offset, axis=0), params, grid=grid)
    assert alone.index == null.winners[k]
    assert null.sharpe[k] == pytest.approx(alone.table['sharpe'].iloc[alone.index], rel=1e-5)
  again = P.selection_null(frame, probs, params, grid=grid, num_rotations=6, min_offset=200,
                           seed=3)
  np.testing.assert_array_equal(again.sharpe, null.sharpe)
  with pytest.raises(ValueError, match='at least 2 \\* min_offset = 3002 bars'):
    P.selection_null(frame, probs, params, grid=grid, min_offset=1501)


def test_selection_null_tells_a_real_signal_from_one_that_only_fits_noise():
  frame = data.builtin_dataset('btc_usdt_1h_2025_2026').iloc[:2000]
  closes = frame['close'].to_numpy()
  params, grid = backtest.make_params(), _small_grid()
  # Probabilities that see the next 24 bars: a real edge, which rotation destroys.
  ahead = np.concatenate([closes[24:] / closes[:-24] - 1, np.zeros(24)])
  logits = np.stack([-80 * ahead, np.full(len(closes), 0.3), 80 * ahead], axis=1)
  seeing = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
  found = P.select_policy(frame, seeing, params, grid=grid)
  null = P.selection_null(frame, seeing, params, grid=grid, num_rotations=19, min_offset=168)
  real = found.table['sharpe'].iloc[found.index]
  assert selection.null_p_value(null.sharpe, real) == pytest.approx(1 / 20)
  # Probabilities with no edge: the real winner is one more draw of its own null.
  blind = model_like_probs(closes)[::-1].copy()
  found = P.select_policy(frame, blind, params, grid=grid)
  null = P.selection_null(frame, blind, params, grid=grid, num_rotations=19, min_offset=168)
  assert selection.null_p_value(null.sharpe, found.table['sharpe'].iloc[found.index]) > 0.1


def test_sharpe_errors_of_the_grid_are_the_hac_errors_of_each_policy():
  frame = data.builtin_dataset('btc_usdt_1h_2025_2026').iloc[:1200]
  probs = model_like_probs(frame['close'].to_numpy())
  params, grid = backtest.make_params(), _small_grid()
  errors = P.policy_sharpe_errors(frame, probs, grid, params, lags=6)
  assert errors.shape == (1, 10)
  for i in (0, 5, 9):
    policy = jax.tree.map(lambda x, i=i: np.asarray(x)[i], grid)
    run = P.run_policy(frame, probs, policy, params)
    returns = np.asarray(metrics.period_returns(run.equity, params.initial_capital), np.float64)
    expected = sharpe_inference.sharpe_standard_error(returns, lags=6)['se'] * np.sqrt(8760)
    assert errors[0, i] == pytest.approx(expected, rel=1e-4)


def test_lower_bound_objective_and_minimum_round_trips():
  frame = data.builtin_dataset('btc_usdt_1h_2025_2026').iloc[:2000]
  probs = model_like_probs(frame['close'].to_numpy())
  params, grid = backtest.make_params(), _small_grid()
  chosen = P.select_policy(frame, probs, params, grid=grid, objective='sharpe_lcb',
                           min_round_trips=60)
  table = chosen.table
  np.testing.assert_allclose(table['objective'], table['sharpe'] - P.LCB_Z * table['sharpe_se'])
  np.testing.assert_array_equal(
      table['eligible'], np.isfinite(table['objective']) & (table['num_round_trips'] >= 60))
  assert 0 < chosen.num_eligible < len(table)
  assert table['eligible'].iloc[chosen.index]
  assert table['objective'].iloc[chosen.index] == table['objective'][table['eligible']].max()
  # The best of all ten trades too rarely to be chosen.
  assert table['objective'].idxmax() != chosen.index
  # Asking for more round trips than any policy made leaves none eligible, and says so.
  none = P.select_policy(frame, probs, params, grid=grid, min_round_trips=10_000)
  assert none.num_eligible == 0
  null = P.selection_null(frame, probs, params, grid=grid, min_round_trips=10_000,
                          num_rotations=3, min_offset=200)
  assert np.all(null.winners == -1) and np.all(np.isnan(null.sharpe))
  with pytest.raises(ValueError, match='min_round_trips must be >= 0'):
    P.select_policy(frame, probs, params, grid=grid, min_round_trips=-1)


def lucky_and_steady(num_bars=1500, every=20, hold=9, seed=0):
  """Prices and probabilities where two policies trade different events. 'lucky' (margin,
  entry 0.5) trades the events whose buy margin is 0.58: strongly profitable in the first
  third of the bars, slightly losing after. 'steady' (argmax, entry 0.6) trades the events
  with an argmax p_buy of 0.65: modestly profitable throughout."""
  rng = np.random.default_rng(seed)
  probs = np.tile([0.05, 0.9, 0.05], (num_bars, 1))
  drift = np.zeros(num_bars)
  for k, t in enumerate(range(5, num_bars - hold - 1, every)):
    lucky = k % 2 == 0
    probs[t] = (0.0, 0.42, 0.58) if lucky else (0.35, 0.0, 0.65)  # only one policy enters
    probs[t + 1:t + hold] = (0.05, 0.6, 0.35)  # both hold
    probs[t + hold] = (0.5, 0.3, 0.2)  # both exit
    drift[t + 1:t + hold + 1] = (0.004 if t < num_bars // 3 else -0.0005) if lucky else 0.0008
  closes = 100 * np.exp(np.cumsum(drift + rng.normal(0, 0.001, num_bars)))
  opens = np.concatenate([[100.0], closes[:-1]])
  grid = P.stack_policies([P.make_policy(entry=0.5, exit=0.1),
                           P.make_policy(signal='argmax', entry=0.6, exit=0.4)])
  return backtest.Prices(opens, closes), probs, grid


def test_nested_selection_prefers_the_consistent_policy_to_the_lucky_one():
  prices, probs, grid = lucky_and_steady()
  params = backtest.make_params()
  flat = P.select_policy(prices, probs, params, grid=grid, min_round_trips=30)
  nested = P.select_policy(prices, probs, params, grid=grid, min_round_trips=30,
                           nested_windows=3)
  assert flat.index == 0 and nested.index == 1  # flat: the lucky one; nested: the steady one
  assert nested.windows == ((0, 500), (500, 1000), (1000, 1500))
  assert nested.window_round_trips == 10 and nested.nested_windows == 3
  assert nested.rule == 'selection: nested over 3 validation windows, worst-window sharpe'
  assert flat.rule == 'selection: flat over the validation bars, sharpe'
  table = nested.table
  by_window = table[[f'objective_window_{k}' for k in range(3)]].to_numpy()
  np.testing.assert_allclose(table['objective'], by_window.min(axis=1))
  assert by_window[0, 0] > by_window[1].max() and (by_window[0, 1:] < 0).all()
  assert (by_window[1] > 0).all()
  np.testing.assert_array_equal(nested.window_objectives(1), by_window[1])
  # The flat columns are the flat selection's ranking; the metrics are of all the bars.
  np.testing.assert_allclose(table['flat_objective'], flat.table['objective'])
  np.testing.assert_allclose(table['sharpe'], flat.table['sharpe'])
  # A window is each policy run alone on its bars, from flat.
  alone = P.select_policy(backtest.Prices(prices.open[500:1000], prices.close[500:1000]),
                          probs[500:1000], params, grid=grid)
  np.testing.assert_allclose(by_window[:, 1], alone.table['objective'], rtol=1e-6)


def test_one_nested_window_is_flat_selection():
  prices, probs, grid = lucky_and_steady()
  params = backtest.make_params()
  plain = P.select_policy(prices, probs, params, grid=grid, objective='sharpe_lcb')
  one = P.select_policy(prices, probs, params, grid=grid, objective='sharpe_lcb',
                        nested_windows=1)
  assert one.index == plain.index and one.nested_windows == 1 and one.windows == ((0, 1500),)
  pd.testing.assert_frame_equal(one.table, plain.table)
  null = P.selection_null(prices, probs, params, grid=grid, num_rotations=3, min_offset=200)
  assert null.nested_windows == 1


def test_the_nested_null_reruns_the_nested_rule():
  prices, probs, grid = lucky_and_steady()
  params = backtest.make_params()
  null = P.selection_null(prices, probs, params, grid=grid, num_rotations=3, min_offset=200,
                          nested_windows=3, min_round_trips=3)
  assert null.nested_windows == 3 and null.objective.shape == (3, 2)
  for k, offset in enumerate(null.offsets):
    alone = P.select_policy(prices, np.roll(probs, offset, axis=0), params, grid=grid,
                            nested_windows=3, min_round_trips=3)
    assert alone.index == null.winners[k]
    np.testing.assert_allclose(null.objective[k], alone.table['objective'], rtol=1e-6)
    assert null.sharpe[k] == pytest.approx(alone.table['sharpe'].iloc[alone.index], rel=1e-5)


@pytest.mark.parametrize('windows, message', [
    (0, 'policy.nested_windows must be a whole number >= 1, got 0'),
    (2.5, 'policy.nested_windows must be a whole number >= 1'),
    (100, r'policy.nested_windows=100 splits 1500 validation bars into windows of 15 bars; '
          r'each needs at least 24: use at most 62 windows')])
def test_bad_nested_windows_raise_naming_the_field(windows, message):
  prices, probs, grid = lucky_and_steady()
  params = backtest.make_params()
  with pytest.raises(ValueError, match=message):
    P.select_policy(prices, probs, params, grid=grid, nested_windows=windows)
  with pytest.raises(ValueError, match=message):
    P.selection_null(prices, probs, params, grid=grid, min_offset=200, nested_windows=windows)
  # Asking more round trips of each window than it can hold leaves no policy eligible.
  assert P.select_policy(prices, probs, params, grid=grid, nested_windows=3,
                         min_round_trips=10_000).num_eligible == 0
