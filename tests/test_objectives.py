"""Trading objectives: the loss against a per-bar loop, gradients against finite differences,
causality, learning a planted series, REINFORCE and the interim backtester mapping."""

import dataclasses
import functools
import itertools
import math

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest

from himari_jax.constants import BUY, HOLD, SELL
from himari_jax.data import features as features_lib
from himari_jax.data import labels as labels_lib
from himari_jax.data import ohlcv as data
from himari_jax.model import flag_trader as model
from himari_jax.model import objectives as obj

TINY = model.ModelConfig(d_model=16, num_layers=1, num_heads=2, dim_feedforward=32,
                         max_length=16, lora_rank=4, dropout_rate=0.0)


def _random_adapters(params, seed=0):
  """Non-zero lora_B (zero at init) so the adapters take part in the function."""
  rng = np.random.default_rng(seed)
  return jax.tree_util.tree_map_with_path(
      lambda path, p: 0.1 * rng.standard_normal(p.shape).astype(p.dtype)
      if 'lora_B' in jax.tree_util.keystr(path) else p, params)


# ------------------------------------------------------------------ head, returns, config


def test_position_head_reads_the_buy_sell_preference():
  logits = jnp.array([[0.0, 5.0, 0.0], [0.3, -2.0, 1.5], [2.0, 0.0, -1.0]])
  np.testing.assert_allclose(obj.positions(logits), np.tanh([0.0, 1.2, -3.0]), rtol=1e-6)
  np.testing.assert_allclose(obj.positions(logits, long_only=True),
                             1 / (1 + np.exp(-np.array([0.0, 1.2, -3.0]))), rtol=1e-6)
  # Long-only position = p_buy / (p_buy + p_sell); the HOLD logit does not matter.
  probs = jax.nn.softmax(logits)
  np.testing.assert_allclose(obj.positions(logits, long_only=True),
                             probs[:, 2] / (probs[:, 0] + probs[:, 2]), rtol=1e-6)
  np.testing.assert_allclose(obj.positions(logits.at[:, 1].add(7.0)), obj.positions(logits))


def test_next_bar_returns_and_its_errors():
  returns = labels_lib.next_bar_returns([100.0, 110.0, 99.0, 99.0])
  np.testing.assert_allclose(returns[:3], [0.1, -0.1, 0.0])
  assert np.isnan(returns[3])
  with pytest.raises(ValueError, match='close row 2 is 0.0'):
    labels_lib.next_bar_returns([1.0, 2.0, 0.0])


@pytest.mark.parametrize('field, value, message', [
    ('kind', 'sortino', 'objective=.sortino. is not a trading objective'),
    ('cost_multiplier', -1.0, 'cost_multiplier=-1.0 must be'),
    ('turnover_penalty', float('nan'), 'turnover_penalty=nan must be'),
    ('risk_aversion', -0.5, 'risk_aversion=-0.5 must be'),
    ('commission', 1.5, r'commission=1.5 must be in \[0, 1\)'),
    ('slippage', -0.1, 'slippage=-0.1 must be'),
    ('initial_position', 'zero', "initial_position='zero' is unknown"),
    ('std_epsilon', 0.0, 'std_epsilon=0.0 must be'),
    ('reinforce_samples', 1, 'reinforce_samples=1 must be an integer >= 2'),
    ('entropy_coef', -0.1, 'entropy_coef=-0.1 must be'),
])
def test_objective_validation_names_the_field(field, value, message):
  with pytest.raises(ValueError, match=message):
    obj.TradingObjective(**{field: value})


def test_objective_from_train_config():
  train = ml_collections.ConfigDict({'objective': 'classification', 'batch_size': 8})
  assert obj.TradingObjective.from_config(train) is None
  assert obj.TradingObjective.from_config({'batch_size': 8}) is None
  train.update(objective='utility', cost_multiplier=2.0, long_only=True, risk_aversion=3.0)
  objective = obj.TradingObjective.from_config(train)
  assert objective == obj.TradingObjective(kind='utility', cost_multiplier=2.0, long_only=True,
                                           risk_aversion=3.0)
  assert objective.cost == pytest.approx(2.0 * 0.0015)
  train.turnover_penalty = -1.0
  with pytest.raises(ValueError, match=r'config\.train\.turnover_penalty=-1.0'):
    obj.TradingObjective.from_config(train)
  with pytest.raises(ValueError, match=r"config\.train\.objective='mse' is unknown"):
    obj.TradingObjective.from_config({'objective': 'mse'})


# ---------------------------------------------------------------- loss = per-bar loop


def _loop_loss(logits, closes, masks, objective):
  """The trading loss written bar by bar, from the closes of each window."""
  nets, changes = [], []
  for window_logits, close, mask in zip(logits, closes, masks, strict=True):
    previous = None
    for t, (l_sell, _, l_buy) in enumerate(window_logits):
      if not mask[t]:
        continue
      lean = l_buy - l_sell
      p = 1 / (1 + math.exp(-lean)) if objective.long_only else math.tanh(lean)
      if previous is None:
        previous = p if objective.initial_position == 'first' else 0.0
      change = abs(p - previous)
      nets.append(p * (close[t + 1] / close[t] - 1) - objective.cost * change)
      changes.append(change)
      previous = p
  n = len(nets)
  mean = sum(nets) / n
  var = sum((x - mean) ** 2 for x in nets) / n
  if objective.kind == 'sharpe':
    score = mean / math.sqrt(var + objective.std_epsilon ** 2) * math.sqrt(8760)
  else:
    score = (mean - objective.risk_aversion / 2 * var) * 8760
  return -score + objective.turnover_penalty * sum(changes) / n, mean


@pytest.mark.parametrize('kind, initial, long_only', [
    ('sharpe', 'first', False), ('sharpe', 'flat', True), ('utility', 'first', True),
    ('utility', 'flat', False)])
def test_loss_on_a_hand_built_path_equals_a_per_bar_loop(kind, initial, long_only):
  path = np.array([100.0, 101.0, 99.5, 99.5, 102.0, 101.0, 103.0, 100.0, 98.0, 99.0])
  # Two windows of 5 bars; the second ends at the path's last bar (next return unknown) and
  # has a masked bar inside (a gap in a window is skipped, its neighbours are compared).
  returns = labels_lib.next_bar_returns(path).reshape(2, 5)
  masks = np.isfinite(returns) & np.array([[1, 1, 1, 1, 1], [1, 1, 0, 1, 1]], bool)
  assert masks.sum() == 8
  logits = np.random.default_rng(0).normal(size=(2, 5, 3))
  objective = obj.TradingObjective(kind=kind, initial_position=initial, long_only=long_only,
                                   cost_multiplier=3.0, turnover_penalty=0.2, risk_aversion=4.0)
  expected, mean = _loop_loss(logits, [path[:6], path[5:]], masks, objective)
  with jax.enable_x64(True):
    loss, aux = obj.make_loss_fn(objective)(jnp.asarray(logits), {
        'forward_return': jnp.asarray(returns), 'mask': jnp.asarray(masks)})
  np.testing.assert_allclose(float(loss), expected, rtol=1e-12)
  np.testing.assert_allclose(float(aux['mean_return']), mean, rtol=1e-12)


# --------------------------------------------------------------- gradients, float64


def test_gradient_wrt_logits_matches_finite_differences():
  rng = np.random.default_rng(1)
  forward = 0.01 * rng.standard_normal((3, 6))
  mask = rng.random((3, 6)) > 0.2
  forward[~mask] = np.nan  # masked returns may be unknown: no NaN may reach the gradient
  objectives = [obj.TradingObjective(kind='sharpe', turnover_penalty=0.1),
                obj.TradingObjective(kind='utility', long_only=True, initial_position='flat',
                                     cost_multiplier=2.0, risk_aversion=5.0)]
  with jax.enable_x64(True):
    logits = jnp.asarray(rng.standard_normal((3, 6, 3)))
    batch = {'forward_return': jnp.asarray(forward), 'mask': jnp.asarray(mask)}
    for objective in objectives:
      loss = jax.jit(lambda x, o=objective: obj.make_loss_fn(o)(x, batch)[0])
      grad = np.asarray(jax.grad(loss)(logits))
      numeric = np.zeros(logits.shape)
      eps = 1e-6
      for index in np.ndindex(*logits.shape):
        step = jnp.zeros(logits.shape).at[index].set(eps)
        numeric[index] = (loss(logits + step) - loss(logits - step)) / (2 * eps)
      assert np.isfinite(grad).all()
      np.testing.assert_allclose(grad, numeric, rtol=1e-6, atol=1e-8 * np.abs(grad).max())
      assert np.abs(grad[..., 1]).max() == 0  # the HOLD logit takes no part
      assert np.abs(grad[~mask]).max() == 0  # masked bars take no part


@pytest.mark.slow
def test_gradient_wrt_model_params_matches_finite_differences():
  """Directional derivatives through a tiny FLAG-TRADER, params and data in float64.

  The model computes its LayerNorms in float32 and casts the logits to float32 (the loss is
  taken in float64 from them), which puts a noise floor of about 1e-3 under a finite
  difference of step 1e-3 (measured): every trainable leaf is checked to that floor, the
  derivative along the gradient (its norm, ~600) to a relative 1e-4.
  """
  config = dataclasses.replace(TINY, dtype='float64')
  rng = np.random.default_rng(2)
  with jax.enable_x64(True):
    params = jax.jit(model.init_params, static_argnums=(0, 2))(config, jax.random.key(0), 8)
    params = _random_adapters(jax.tree.map(lambda x: np.asarray(x, np.float64), params))
    # A larger head and inputs that alternate from bar to bar spread the positions: at init
    # neighbouring positions differ by ~1e-3 and a finite-difference step would cross the
    # kinks of |p_t - p_t-1|.
    params['action_head']['kernel'] = 0.15 * rng.standard_normal((16, 3))
    alternating = np.where(np.arange(8) % 2, 1.0, -1.0)[None, :, None] * rng.standard_normal(60)
    states = jnp.asarray(rng.standard_normal((4, 8, 60)) + 2 * alternating)
    batch = {'forward_return': jnp.asarray(0.01 * rng.standard_normal((4, 8))),
             'mask': jnp.ones((4, 8), bool)}
    loss_fn = obj.make_loss_fn(obj.TradingObjective(turnover_penalty=0.1))

    @jax.jit
    def loss(p):
      logits = model.FlagTrader(config).apply({'params': p}, states)
      return loss_fn(logits.astype(jnp.float64), batch)[0]

    @jax.jit
    def stencil(direction, h):
      """Fourth-order central difference of the loss along a direction (a param tree)."""
      def at(step):
        return loss(jax.tree.map(lambda x, d: x + step * d, params, direction))
      return (8 * (at(h) - at(-h)) - (at(2 * h) - at(-2 * h))) / (12 * h)

    def derivative(direction, h=1e-3):
      return float(stencil(direction, h))

    position = obj.positions(model.FlagTrader(config).apply({'params': params}, states))
    assert jnp.abs(jnp.diff(position, axis=1)).min() > 2e-3
    assert jnp.abs(position).max() < 0.99  # not saturated either
    grad = jax.jit(jax.grad(loss))(params)
    # The leaves a training step differentiates (LoRA, norms, embeddings, head).
    labels = dict(jax.tree_util.tree_leaves_with_path(model.param_labels(params)))
    trainable = [(path, leaf) for path, leaf in jax.tree_util.tree_leaves_with_path(params)
                 if labels[path] == 'trainable']
    assert len(trainable) == 23  # 12 LoRA factors, 3 LayerNorms, embeddings, pos table, head
    for path, leaf in trainable:
      direction = jax.tree.map(np.zeros_like, params)
      unit = rng.standard_normal(leaf.shape)
      direction = jax.tree_util.tree_map_with_path(
          lambda q, x, unit=unit, path=path: unit / np.linalg.norm(unit) if q == path else x,
          direction)
      analytic = sum(float(jnp.vdot(g, d)) for g, d in
                     zip(jax.tree.leaves(grad), jax.tree.leaves(direction), strict=True))
      np.testing.assert_allclose(analytic, derivative(direction), rtol=1e-2, atol=3e-3,
                                 err_msg=jax.tree_util.keystr(path))
    # Along the gradient itself the derivative is the gradient norm, far above the floor
    # (a smaller step: the loss moves fast that way and would cross kinks at 1e-3).
    norm = math.sqrt(sum(float(jnp.sum(g ** 2)) for g in jax.tree.leaves(grad)))
    assert norm > 10
    np.testing.assert_allclose(derivative(jax.tree.map(lambda g: g / norm, grad), h=1e-4),
                               norm, rtol=1e-4)


# --------------------------------------------------------------------------- causality


def test_position_at_bar_t_ignores_later_bars():
  """Bars -> causal features -> causal tiny model -> positions: bars after t change nothing
  at or before t (and do change the positions after t)."""
  bars = data.builtin_dataset('btc_usdt_1h_2020_2024', fill_gaps=True).iloc[800:800 + 200]
  changed = bars.copy()
  t = len(bars) - 6
  changed.iloc[t + 1:, :4] *= 1.05  # a 5 % jump of every price after bar t
  changed.iloc[t + 1:, 4] *= 3.0
  params = _random_adapters(jax.jit(model.init_params, static_argnums=(0, 2))(
      TINY, jax.random.key(0), 16))
  raw = features_lib.compute_features(bars)
  normalizer = features_lib.Normalizer.fit(raw, np.arange(len(bars)) >= features_lib.WARMUP_BARS)

  @jax.jit
  def head(states):
    return obj.positions(model.FlagTrader(TINY).apply({'params': params}, states))

  def window_positions(df):
    states = normalizer.apply(features_lib.compute_features(df))[-16:][None]
    return np.asarray(head(jnp.asarray(states, jnp.float32)))[0]

  before, after = window_positions(bars), window_positions(changed)
  t_in_window = t - (len(bars) - 16)  # the window holds the last 16 bars
  np.testing.assert_array_equal(before[:t_in_window + 1], after[:t_in_window + 1])
  assert np.abs(before[t_in_window + 1:] - after[t_in_window + 1:]).min() > 1e-6


# ---------------------------------------------------------------- planted predictable series


def _planted_batch(key, batch, length, scale=0.005):
  """Feature 0 is +-1 at random, the next bar's return is `scale * feature_0`."""
  k1, k2 = jax.random.split(key)
  sign = jnp.where(jax.random.bernoulli(k1, 0.5, (batch, length)), 1.0, -1.0)
  states = 0.5 * jax.random.normal(k2, (batch, length, 60)).at[..., 0].set(sign)
  return states, {'forward_return': scale * sign, 'mask': jnp.ones((batch, length), bool)}


def test_sharpe_training_learns_a_planted_series():
  objective = obj.TradingObjective(kind='sharpe')
  loss_fn = obj.make_loss_fn(objective)
  net = model.FlagTrader(TINY)
  params = jax.jit(net.init)(jax.random.key(0), jnp.zeros((1, 16, 60)))['params']
  optimizer = optax.adam(1e-2)

  @jax.jit
  def step(params, opt_state, key):
    states, batch = _planted_batch(key, 16, 16)
    (loss, aux), grads = jax.value_and_grad(
        lambda p: loss_fn(net.apply({'params': p}, states), batch), has_aux=True)(params)
    updates, opt_state = optimizer.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, loss, aux

  @jax.jit
  def held_out(params):
    states, batch = _planted_batch(jax.random.key(999), 32, 16)
    logits = net.apply({'params': params}, states)
    return loss_fn(logits, batch), obj.positions(logits), batch['forward_return']

  (start_loss, _), _, _ = held_out(params)
  opt_state = optimizer.init(params)
  for i in range(40):
    params, opt_state, _, _ = step(params, opt_state, jax.random.key(i))
  (end_loss, aux), position, forward = held_out(params)
  aligned = float(jnp.mean(jnp.sign(position) == jnp.sign(forward)))
  print(f'planted sharpe: held-out loss {float(start_loss):.2f} -> {float(end_loss):.2f}, '
        f'net Sharpe {float(aux["sharpe"]):.1f}, aligned {aligned:.3f}, '
        f'mean |p| {float(aux["mean_abs_position"]):.2f}, turnover {float(aux["turnover"]):.2f}')
  assert float(end_loss) < float(start_loss) - 50
  assert aligned > 0.95
  assert float(aux['accuracy']) == pytest.approx(aligned)


# ----------------------------------------------------------------------------- REINFORCE


def _episode_reward(actions, forward, cost, long_only, initial):
  """Net return of one action sequence, bar by bar (HOLD keeps, start flat)."""
  held, total, first = 0.0, 0.0, True
  for action, r in zip(actions, forward, strict=True):
    before = held
    if action == BUY:
      held = 1.0
    elif action == SELL:
      held = 0.0 if long_only else -1.0
    change = 0.0 if (first and initial == 'first') else abs(held - before)
    total += held * r - cost * change
    first = False
  return total


@pytest.mark.parametrize('long_only, initial', [(False, 'flat'), (True, 'first')])
def test_reinforce_gradient_is_the_expected_reward_gradient(long_only, initial):
  """Monte-Carlo REINFORCE gradient vs the exact gradient of E[net return], enumerated over
  all 27 action sequences of a 3-bar window."""
  forward = np.array([0.01, -0.02, 0.015])
  objective = obj.TradingObjective(cost_multiplier=2.0, long_only=long_only,
                                   initial_position=initial)
  sequences = np.array(list(itertools.product(range(3), repeat=3)))
  rewards = np.array([_episode_reward(s, forward, objective.cost, long_only, initial)
                      for s in sequences])
  with jax.enable_x64(True):
    logits = jnp.asarray(np.random.default_rng(3).normal(size=(1, 3, 3)))

    def expected_reward(x):
      log_probs = jax.nn.log_softmax(x[0], -1)
      chosen = log_probs[jnp.arange(3)[None], sequences].sum(-1)
      return jnp.sum(jnp.exp(chosen) * rewards)

    exact = -np.asarray(jax.grad(expected_reward)(logits)) / 3  # the loss averages over bars
    batch = {'forward_return': jnp.asarray(forward[None]), 'mask': jnp.ones((1, 3), bool)}
    loss = functools.partial(obj.reinforce_loss, objective=objective, num_samples=100_000,
                             entropy_coef=0.0, normalize_advantages=False)
    estimate = np.asarray(jax.jit(jax.grad(lambda x, b, k: loss(x, b, k)[0]))(
        logits, batch, jax.random.key(0)))
  cosine = np.vdot(exact, estimate) / np.linalg.norm(exact) / np.linalg.norm(estimate)
  print(f'REINFORCE vs exact gradient: cosine {cosine:.4f}, norm ratio '
        f'{np.linalg.norm(estimate) / np.linalg.norm(exact):.3f}')
  assert cosine > 0.99
  assert np.linalg.norm(estimate) / np.linalg.norm(exact) == pytest.approx(1.0, abs=0.05)


def test_reinforce_raises_the_probability_of_the_profitable_action():
  objective = obj.TradingObjective()
  key = jax.random.key(4)
  forward = 0.01 * jnp.where(jax.random.bernoulli(key, 0.5, (8, 12)), 1.0, -1.0)
  batch = {'forward_return': forward, 'mask': jnp.ones((8, 12), bool)}
  profitable = jnp.where(forward > 0, BUY, SELL)
  optimizer = optax.adam(0.1)

  def probability(logits):
    probs = jax.nn.softmax(logits, -1)
    return float(jnp.mean(jnp.take_along_axis(probs, profitable[..., None], -1)))

  @jax.jit
  def step(logits, opt_state, key):
    grads, aux = jax.grad(
        lambda x: obj.reinforce_loss(x, batch, key, objective, num_samples=8), has_aux=True)(
            logits)
    updates, opt_state = optimizer.update(grads, opt_state)
    return optax.apply_updates(logits, updates), opt_state, aux

  logits = jnp.zeros((8, 12, 3))
  opt_state = optimizer.init(logits)
  rewards = []
  for i in range(15):
    logits, opt_state, aux = step(logits, opt_state, jax.random.key(100 + i))
    rewards.append(float(aux['mean_reward']))
  print(f'REINFORCE planted: P(profitable action) 0.333 -> {probability(logits):.3f}, '
        f'sampled net reward per bar {rewards[0]:.5f} -> {rewards[-1]:.5f}')
  assert probability(logits) > 0.6
  assert rewards[-1] > rewards[0]


def test_sampled_positions_follow_the_backtester():
  actions = jnp.array([[HOLD, BUY, HOLD, SELL, BUY, HOLD]])
  mask = jnp.array([[True, True, True, True, False, True]])
  np.testing.assert_array_equal(obj.sampled_positions(actions, mask, False),
                                [[0, 1, 1, -1, -1, -1]])
  np.testing.assert_array_equal(obj.sampled_positions(actions, mask, True),
                                [[0, 1, 1, 0, 0, 0]])
  with pytest.raises(ValueError, match='num_samples=1 must be >= 2'):
    obj.reinforce_loss(jnp.zeros((1, 6, 3)), {'forward_return': jnp.zeros((1, 6)),
                                              'mask': mask}, jax.random.key(0),
                       obj.TradingObjective(), num_samples=1)


def test_reinforce_objective_from_config_is_the_policy_gradient_loss():
  train = ml_collections.ConfigDict({'objective': 'reinforce', 'reinforce_samples': 3,
                                     'entropy_coef': 0.05, 'long_only': True})
  objective = obj.TradingObjective.from_config(train)
  assert objective.acts and not obj.TradingObjective(kind='sharpe').acts
  logits = jax.random.normal(jax.random.key(1), (2, 6, 3))
  batch = {'forward_return': 0.01 * jax.random.normal(jax.random.key(2), (2, 6)),
           'mask': jnp.ones((2, 6), bool)}
  key = jax.random.key(3)
  loss, aux = obj.make_loss_fn(objective)(logits, batch, key)
  expected, _ = obj.reinforce_loss(logits, batch, key, objective, num_samples=3,
                                   entropy_coef=0.05)
  assert float(loss) == float(expected) and {'mean_reward', 'entropy'} <= set(aux)
  with pytest.raises(ValueError, match='pass loss_fn an rng key'):
    obj.make_loss_fn(objective)(logits, batch)
  # The greedy play: the argmax action at every bar, held by the backtester's rules.
  np.testing.assert_array_equal(
      obj.greedy_positions(logits, batch['mask'], True),
      obj.sampled_positions(jnp.argmax(logits, -1), batch['mask'], True))


# ------------------------------------------------------------- evaluation, decisions


def test_evaluate_positions_resets_each_series_and_matches_the_loss():
  rng = np.random.default_rng(5)
  position = np.tanh(rng.standard_normal((2, 50)))
  forward = 0.01 * rng.standard_normal((2, 50))
  mask = np.ones((2, 50), bool)
  mask[1, 40:] = False  # the second file is shorter: padding
  forward[~mask] = np.nan
  objective = obj.TradingObjective(cost_multiplier=2.0)
  metrics = obj.evaluate_positions(position, forward, mask, objective)
  net = [position[s, t] * forward[s, t]
         - objective.cost * abs(position[s, t] - position[s, max(t - 1, 0)])
         for s in range(2) for t in range(50) if mask[s, t]]
  assert metrics['val_bars'] == 90
  assert metrics['val_mean_net_return'] == pytest.approx(np.mean(net), rel=1e-12)
  assert metrics['val_net_sharpe'] == pytest.approx(
      np.mean(net) / np.std(net, ddof=1) * math.sqrt(8760), rel=1e-12)
  assert metrics['val_ic'] == pytest.approx(np.corrcoef(position[mask], forward[mask])[0, 1])
  logits = np.stack([np.zeros_like(position), np.zeros_like(position),
                     np.arctanh(position)], -1)
  with jax.enable_x64(True):
    loss, _ = obj.trading_loss(jnp.asarray(logits), jnp.asarray(forward), jnp.asarray(mask),
                               objective)
  assert metrics['val_loss'] == pytest.approx(float(loss), rel=1e-9)


def test_decisions_from_positions():
  actions, confidence = obj.decisions_from_positions(np.array([0.8, 0.1, -0.05, -0.6]),
                                                     threshold=0.2)
  np.testing.assert_array_equal(actions, [BUY, HOLD, HOLD, SELL])
  np.testing.assert_allclose(confidence, [0.8, 0.1, 0.05, 0.6])
  actions, confidence = obj.decisions_from_positions(np.array([0.9, 0.5, 0.45, 0.1]),
                                                     threshold=0.2, long_only=True)
  np.testing.assert_array_equal(actions, [BUY, HOLD, HOLD, SELL])
  np.testing.assert_allclose(confidence, [0.9, 0.5, 0.45, 0.9])
  with pytest.raises(ValueError, match='position at bar 1 is -0.5'):
    obj.decisions_from_positions(np.array([0.5, -0.5]), long_only=True)
