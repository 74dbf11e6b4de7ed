"""Trading objectives: train FLAG-TRADER on the net-of-cost return it will trade.

The classifier learns 6-hour moves with cross-entropy and the costs that decide the result
never reach its gradient. Here the model's output is read as a *position* and the loss is
the negative Sharpe ratio (or mean-variance utility) of the position's net return, costs
included (Moody & Saffell 2001, "Learning to trade via direct reinforcement"; Lim, Zohren &
Roberts 2019). `reinforce_loss` is the policy-gradient form of the FLAG-Trader paper
(arXiv 2502.11433): a stochastic SELL / HOLD / BUY policy rewarded with the same net return
(`config.train.objective='reinforce'`); its logits stay action scores, and it is validated
and traded by its greedy action (`greedy_positions`).

Position head. The position is read from the model's existing three logits (0 = SELL,
1 = HOLD, 2 = BUY), `d = l_buy - l_sell`:

* `tanh(d)` in [-1, 1], or `sigmoid(d)` in [0, 1] long-only (`= p_buy / (p_buy + p_sell)`).

No parameter is added, so the network, the parameter tree and the checkpoint layout stay
those of the classifier: a converted seed model or a supervised checkpoint starts from its own
BUY-versus-SELL preference (0 when indifferent, 0.5 long-only), and every entry point that
loads a run still works. The HOLD logit takes no part (its gradient is zero).

Net return of bar t in a window (all arrays (B, T); `R_{t+1} = close_{t+1} / close_t - 1`,
the next bar's return, so the position at t, which sees features up to t, earns the bar
after it):

  net_t = p_t * R_{t+1} - cost * |p_t - p_prev(t)|,   cost = cost_multiplier * (commission +
  slippage),

with `p_prev(t)` the position at the window's previous valid bar. Before the window's first
valid bar, `initial_position='first'` (default) takes the first position itself, so no entry
cost is charged: windows are random slices of one continuous series, the model already held
some position before, and charging entry in every window would add a bias towards flat of
`cost / T` per bar, as large as the mean hourly return. `'flat'` starts from 0 instead and
charges the entry. With `'first'` a window of one bar has no turnover at all, so the trading
objectives need `context_length >= 2` (the cost is seen through the window's own changes).

Bars whose next return is unknown (`mask` False; the last bar of a series) take no part.
This is the usual additive approximation: fractions of equity, no compounding inside a window.

Losses, pooled over every valid bar of the batch (`n` bars, population moments):

* `sharpe`:  `-mean(net) / sqrt(var(net) + std_epsilon^2) * sqrt(periods_per_year)`.
* `utility`: `-(mean(net) - risk_aversion / 2 * var(net)) * periods_per_year`, annualised so
  `risk_aversion` has its usual meaning on annual returns and the loss is of order 1 like the
  Sharpe loss.
* both plus `turnover_penalty * mean(|p_t - p_prev(t)|)` (mean position change per bar, a
  regulariser on top of the cost that is already in `net`).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from himari_jax.constants import BUY, HOLD, PERIODS_PER_YEAR, SELL
from himari_jax.stats import metrics as metrics_lib

OBJECTIVES = ('classification', 'sharpe', 'utility', 'reinforce')
TRADING_KINDS = ('sharpe', 'utility', 'reinforce')
INITIAL_POSITIONS = ('first', 'flat')


@dataclasses.dataclass(frozen=True)
class TradingObjective:
  """What a position model is trained for.

  Attributes:
    kind: 'sharpe' or 'utility' (a position model, see the module docstring), or 'reinforce'
      (an action policy trained by `reinforce_loss`, played greedily: see `acts`).
    cost_multiplier: scales `commission + slippage` (0 trains on gross returns; > 1 for
      robustness to costs higher than assumed).
    commission, slippage: fractions of traded notional, as in the backtester (SPEC 6).
    turnover_penalty: weight of the mean absolute position change per bar in the loss.
    risk_aversion: variance weight of the 'utility' objective (annual units).
    long_only: positions in [0, 1] (sigmoid) instead of [-1, 1] (tanh).
    initial_position: 'first' (no entry cost at a window's first bar) or 'flat'.
    std_epsilon: added in quadrature to the std of the Sharpe ratio, so its gradient stays
      finite when the positions (and with them the std) go to zero.
    periods_per_year: bars per year (default: hourly bars, as in metrics.py).
    reinforce_samples: 'reinforce': plays of each window per step (>= 2).
    entropy_coef: 'reinforce': weight of the policy-entropy bonus (>= 0).
  """

  kind: str = 'sharpe'
  cost_multiplier: float = 1.0
  commission: float = 0.001
  slippage: float = 0.0005
  turnover_penalty: float = 0.0
  risk_aversion: float = 1.0
  long_only: bool = False
  initial_position: str = 'first'
  std_epsilon: float = 1e-6
  periods_per_year: float = PERIODS_PER_YEAR
  reinforce_samples: int = 4
  entropy_coef: float = 0.01

  def __post_init__(self):
    if self.kind not in TRADING_KINDS:
      raise ValueError(f'objective={self.kind!r} is not a trading objective; use one of '
                       f'{", ".join(TRADING_KINDS)}.')
    if self.initial_position not in INITIAL_POSITIONS:
      raise ValueError(f'initial_position={self.initial_position!r} is unknown; use one of '
                       f'{", ".join(INITIAL_POSITIONS)}.')
    for name in ('cost_multiplier', 'turnover_penalty', 'risk_aversion'):
      value = getattr(self, name)
      if not (math.isfinite(value) and value >= 0):
        raise ValueError(f'{name}={value} must be a finite number >= 0.')
    for name in ('commission', 'slippage'):
      value = getattr(self, name)
      if not 0 <= value < 1:
        raise ValueError(f'{name}={value} must be in [0, 1) (a fraction of traded notional).')
    for name in ('std_epsilon', 'periods_per_year'):
      value = getattr(self, name)
      if not (math.isfinite(value) and value > 0):
        raise ValueError(f'{name}={value} must be a finite number > 0.')
    if not (isinstance(self.reinforce_samples, int) and self.reinforce_samples >= 2):
      raise ValueError(f'reinforce_samples={self.reinforce_samples} must be an integer >= 2 '
                       '(the leave-one-out baseline needs the other samples).')
    if not (math.isfinite(self.entropy_coef) and self.entropy_coef >= 0):
      raise ValueError(f'entropy_coef={self.entropy_coef} must be a finite number >= 0.')

  @property
  def acts(self) -> bool:
    """Whether the model is an action policy ('reinforce'): its logits score SELL / HOLD /
    BUY like a classifier's, and it trades by its greedy action, the position following
    the backtester's rules (`greedy_positions`), not by `positions(logits)`."""
    return self.kind == 'reinforce'

  @property
  def cost(self) -> float:
    """Cost per unit of position change: `cost_multiplier * (commission + slippage)`."""
    return self.cost_multiplier * (self.commission + self.slippage)

  @classmethod
  def from_config(cls, train_config: Mapping[str, Any]) -> TradingObjective | None:
    """From `config.train`; None when `objective` is 'classification' (or absent).

    Reads `objective` as `kind` and any of the other field names present; the rest of
    `config.train` is ignored. Errors name the `config.train` field.
    """
    kind = train_config.get('objective', 'classification')
    if kind == 'classification':
      return None
    if kind not in OBJECTIVES:
      raise ValueError(f'config.train.objective={kind!r} is unknown; use one of '
                       f'{", ".join(OBJECTIVES)}.')
    names = {f.name for f in dataclasses.fields(cls)} - {'kind'}
    values = {k: train_config[k] for k in names if k in train_config}
    try:
      return cls(kind=kind, **values)
    except ValueError as e:
      raise ValueError(f'config.train.{e}') from e


# ------------------------------------------------------------------- position head


def positions(logits: jax.Array, long_only: bool = False) -> jax.Array:
  """Target position per bar from the three action logits.

  Args:
    logits: (..., 3) in SELL / HOLD / BUY order.
    long_only: sigmoid in [0, 1] instead of tanh in [-1, 1].

  Returns:
    (...,) `tanh(l_buy - l_sell)`, or `sigmoid(l_buy - l_sell)` long-only.
  """
  preference = logits[..., BUY] - logits[..., SELL]
  return jax.nn.sigmoid(preference) if long_only else jnp.tanh(preference)


def _previous_valid(x: jax.Array, mask: jax.Array, first: jax.Array) -> jax.Array:
  """x at the previous valid bar of the same row; `first` where there is none.

  x, mask, first: (B, T). Gathers, so gradients flow to the bar gathered from.
  """
  length = x.shape[-1]
  index = jnp.where(mask, jnp.arange(length), -1)
  last = jax.lax.cummax(index, axis=x.ndim - 1)
  previous = jnp.concatenate([jnp.full_like(last[..., :1], -1), last[..., :-1]], axis=-1)
  gathered = jnp.take_along_axis(x, jnp.maximum(previous, 0), axis=-1)
  return jnp.where(previous >= 0, gathered, first)


def net_returns(position: jax.Array, forward_return: jax.Array, mask: jax.Array, cost: float,
                initial_position: str = 'first') -> dict[str, jax.Array]:
  """Per-bar gross return, position change and net return of a window of positions.

  Args:
    position: (B, T) positions.
    forward_return: (B, T) next-bar returns; any value (NaN too) where `mask` is False.
    mask: (B, T) bool, True where the next return is known.
    cost: cost per unit of position change.
    initial_position: 'first' or 'flat' (module docstring).

  Returns:
    {'gross', 'turnover', 'net'}: (B, T) each, zero where `mask` is False.
  """
  if initial_position not in INITIAL_POSITIONS:
    raise ValueError(f'initial_position={initial_position!r} is unknown; use one of '
                     f'{", ".join(INITIAL_POSITIONS)}.')
  mask = mask.astype(bool)
  # Zeroed with where, not multiplied: a NaN return times a zero mask would poison gradients.
  forward_return = jnp.where(mask, forward_return, 0.0).astype(position.dtype)
  first = position if initial_position == 'first' else jnp.zeros_like(position)
  change = jnp.where(mask, jnp.abs(position - _previous_valid(position, mask, first)), 0.0)
  gross = position * forward_return
  return {'gross': gross, 'turnover': change, 'net': gross - cost * change}


def _moments(x: jax.Array, mask: jax.Array) -> tuple[jax.Array, jax.Array]:
  """Mean and population variance of x over the True entries of mask."""
  count = jnp.maximum(jnp.sum(mask), 1)
  mean = jnp.sum(jnp.where(mask, x, 0.0)) / count
  var = jnp.sum(jnp.where(mask, (x - mean) ** 2, 0.0)) / count
  return mean, var


def _directional_accuracy(position: jax.Array, forward_return: jax.Array, mask: jax.Array,
                          long_only: bool) -> jax.Array:
  """Share of valid bars with a non-zero return whose position leans the return's way."""
  lean = position - 0.5 if long_only else position
  moved = mask & (jnp.where(mask, forward_return, 0.0) != 0)
  right = moved & (jnp.sign(lean) == jnp.sign(jnp.where(mask, forward_return, 0.0)))
  return jnp.sum(right) / jnp.maximum(jnp.sum(moved), 1)


def trading_loss(logits: jax.Array, forward_return: jax.Array, mask: jax.Array,
                 objective: TradingObjective) -> tuple[jax.Array, dict[str, jax.Array]]:
  """The objective's loss over every valid bar of a batch of windows.

  Args:
    logits: (B, T, 3) model outputs.
    forward_return: (B, T) next-bar returns (see `labels.next_bar_returns`).
    mask: (B, T) bool, True where the next return is known.
    objective: the TradingObjective.

  Returns:
    (loss, aux) with aux scalars: `sharpe` and `gross_sharpe` (annualised, population std,
    no epsilon), `mean_return` (net, per bar), `turnover` (mean |position change| per bar),
    `mean_abs_position`, `accuracy` (directional, see `_directional_accuracy`).
  """
  mask = mask.astype(bool)
  position = positions(logits, objective.long_only)
  parts = net_returns(position, forward_return, mask, objective.cost, objective.initial_position)
  mean, var = _moments(parts['net'], mask)
  turnover = _moments(parts['turnover'], mask)[0]
  loss = _objective_loss(mean, var, turnover, objective)
  annual = objective.periods_per_year
  gross_mean, gross_var = _moments(parts['gross'], mask)
  aux = {'sharpe': _sharpe(mean, var, annual), 'gross_sharpe': _sharpe(gross_mean, gross_var,
                                                                         annual),
         'mean_return': mean, 'turnover': turnover,
         'mean_abs_position': _moments(jnp.abs(position), mask)[0],
         'accuracy': _directional_accuracy(position, forward_return, mask, objective.long_only)}
  return loss, jax.tree.map(jax.lax.stop_gradient, aux)


def _objective_loss(mean: jax.Array, var: jax.Array, turnover: jax.Array,
                    objective: TradingObjective) -> jax.Array:
  """The loss from the net return's mean and variance and the mean position change."""
  annual = objective.periods_per_year
  if objective.kind in ('sharpe', 'reinforce'):  # a policy's validation loss: -net Sharpe
    score = metrics_lib.sharpe_from_moments(mean, jnp.sqrt(var + objective.std_epsilon ** 2),
                                            annual)
  else:
    score = (mean - 0.5 * objective.risk_aversion * var) * annual
  return -score + objective.turnover_penalty * turnover


def _sharpe(mean: jax.Array, var: jax.Array, periods_per_year: float) -> jax.Array:
  """Annualised Sharpe ratio, 0 for a flat return series (reporting, not differentiated)."""
  return metrics_lib.sharpe_from_moments(mean, jnp.sqrt(var), periods_per_year, undefined=0.0)


def make_loss_fn(objective: TradingObjective) -> Callable[..., tuple[jax.Array, dict]]:
  """`loss_fn(logits, batch, rng=None) -> (loss, aux)` for a training step.

  batch: 'forward_return' (B, T) and 'mask' (B, T) bool (True where the next return is
  known); other keys are ignored. logits: (B, T, 3). `rng` draws the actions of
  'reinforce' (`reinforce_loss`); the differentiable objectives do not use it.
  """

  def loss_fn(logits: jax.Array, batch: Mapping[str, jax.Array],
              rng: jax.Array | None = None) -> tuple[jax.Array, dict]:
    if objective.acts:
      if rng is None:
        raise ValueError("objective 'reinforce' samples actions: pass loss_fn an rng key")
      return reinforce_loss(logits, batch, rng, objective,
                            num_samples=objective.reinforce_samples,
                            entropy_coef=objective.entropy_coef)
    return trading_loss(logits, batch['forward_return'], batch['mask'], objective)

  return loss_fn


# ----------------------------------------------------------------- policy gradient


def sampled_positions(actions: jax.Array, mask: jax.Array, long_only: bool) -> jax.Array:
  """Positions held under sampled SELL / HOLD / BUY actions, with the backtester's semantics.

  BUY goes long 1, SELL goes short -1 (flat 0 long-only), HOLD keeps the position (SPEC 6);
  every window starts flat and an action at a masked bar counts as HOLD.

  Args:
    actions: (..., T) ints; mask: (..., T) bool.

  Returns:
    (..., T) float32 positions after each bar's action.
  """
  targets = jnp.asarray([0.0 if long_only else -1.0, 0.0, 1.0], jnp.float32)[actions]
  trades = mask.astype(bool) & (actions != HOLD)
  index = jnp.where(trades, jnp.arange(actions.shape[-1]), -1)
  last = jax.lax.cummax(index, axis=actions.ndim - 1)
  held = jnp.take_along_axis(targets, jnp.maximum(last, 0), axis=-1)
  return jnp.where(last >= 0, held, 0.0)


def greedy_positions(logits: jax.Array, mask: jax.Array, long_only: bool) -> jax.Array:
  """Positions held when an action policy plays its most likely action at every bar
  (`sampled_positions` of the argmax), as the backtester trades an argmax decision.

  Args:
    logits: (..., T, 3); mask: (..., T) bool (False bars count as HOLD).

  Returns:
    (..., T) float32 positions.
  """
  return sampled_positions(jnp.argmax(logits, -1), mask, long_only)


def reinforce_loss(logits: jax.Array, batch: Mapping[str, jax.Array], rng: jax.Array,
                   objective: TradingObjective, *, num_samples: int = 4,
                   entropy_coef: float = 0.01,
                   normalize_advantages: bool = True) -> tuple[jax.Array, dict[str, jax.Array]]:
  """REINFORCE on the net return of a stochastic SELL / HOLD / BUY policy (FLAG-Trader).

  Each window is played `num_samples` times with actions drawn from `softmax(logits)`
  (`sampled_positions`); bar t's reward is the sampled position's net return (`net_returns`,
  same costs and `initial_position` as the differentiable objectives). An action is credited
  with the reward-to-go `G_t = sum_{s >= t} net_s` of its window, less the leave-one-out
  mean of the other samples' `G_t` (an unbiased baseline), optionally divided by the batch
  std of these advantages so `entropy_coef` does not depend on the return scale.

  Args:
    logits: (B, T, 3).
    batch: 'forward_return' (B, T), 'mask' (B, T) bool.
    rng: key for the action samples.
    objective: costs, `long_only` and `initial_position`; `kind` is not used.
    num_samples: K >= 2 samples per window (the baseline needs the others).
    entropy_coef: weight of the mean policy entropy (a bonus: subtracted from the loss).
    normalize_advantages: divide advantages by their std over the batch.

  Returns:
    (loss, aux): aux scalars `mean_reward` (net per bar of the samples), `entropy`, `turnover`
    (sampled, per bar), `accuracy` (directional, from `positions(logits)`).
  """
  if num_samples < 2:
    raise ValueError(f'num_samples={num_samples} must be >= 2 (leave-one-out baseline).')
  if entropy_coef < 0:
    raise ValueError(f'entropy_coef={entropy_coef} must be >= 0.')
  mask = batch['mask'].astype(bool)
  forward_return = batch['forward_return']
  log_probs = jax.nn.log_softmax(logits, axis=-1)
  actions = jax.random.categorical(rng, logits, shape=(num_samples, *logits.shape[:-1]))
  samples_mask = jnp.broadcast_to(mask, actions.shape)
  held = sampled_positions(actions, samples_mask, objective.long_only).astype(logits.dtype)
  # (K, B, T) -> (K * B, T): every sample of every window is one row of `net_returns`.
  rows = (-1, held.shape[-1])
  parts = net_returns(held.reshape(rows),
                      jnp.broadcast_to(forward_return, actions.shape).reshape(rows),
                      samples_mask.reshape(rows), objective.cost, objective.initial_position)
  reward = parts['net'].reshape(actions.shape)
  to_go = jnp.flip(jnp.cumsum(jnp.flip(reward, -1), -1), -1)
  baseline = (jnp.sum(to_go, 0, keepdims=True) - to_go) / (num_samples - 1)
  advantage = jnp.where(samples_mask, to_go - baseline, 0.0)
  if normalize_advantages:
    advantage = advantage / jnp.maximum(jnp.sqrt(_moments(advantage, samples_mask)[1]), 1e-12)
  advantage = jax.lax.stop_gradient(advantage)
  chosen = jnp.take_along_axis(log_probs[None], actions[..., None], axis=-1)[..., 0]
  count = jnp.maximum(jnp.sum(samples_mask), 1)
  policy_loss = -jnp.sum(jnp.where(samples_mask, advantage * chosen, 0.0)) / count
  entropy = _moments(-jnp.sum(jnp.exp(log_probs) * log_probs, -1), mask)[0]
  aux = {'mean_reward': jnp.sum(reward) / count, 'entropy': entropy,
         'turnover': jnp.sum(parts['turnover']) / count,
         'accuracy': _directional_accuracy(positions(logits, objective.long_only),
                                           forward_return, mask, objective.long_only)}
  return policy_loss - entropy_coef * entropy, jax.tree.map(jax.lax.stop_gradient, aux)


# ------------------------------------------------------------ evaluation, decisions


def evaluate_positions(position: Any, forward_return: Any, mask: Any,
                       objective: TradingObjective) -> dict[str, float]:
  """Validation metrics of a position model over contiguous bars (host side).

  Args:
    position: (S, L) positions of S independent series (one row per file; pad the shorter
      ones with `mask` False), or (L,) for one series. Bar l of a row follows bar l - 1.
    forward_return: same shape, next-bar returns (NaN allowed where masked).
    mask: same shape, bool.
    objective: costs and `initial_position` (the first bar of each row).

  Returns:
    `val_loss` (the objective's loss on these bars), `val_net_sharpe` / `val_gross_sharpe`
    (annualised, `ddof=1` as metrics.py), `val_mean_net_return` (per bar),
    `val_turnover_per_year` (sum of |position change| per year), `val_mean_abs_position`,
    `val_ic` (Pearson correlation of position with the next return), `val_accuracy`
    (directional, as `trading_loss`'s aux), `val_bars`.
  """
  position = np.atleast_2d(np.asarray(position, np.float64))
  forward_return = np.atleast_2d(np.asarray(forward_return, np.float64))
  mask = np.atleast_2d(np.asarray(mask, bool))
  if not position.shape == forward_return.shape == mask.shape:
    raise ValueError(f'position {position.shape}, forward_return {forward_return.shape} and '
                     f'mask {mask.shape} must have one shape.')
  with jax.enable_x64(True):
    parts = net_returns(jnp.asarray(position), jnp.asarray(forward_return), jnp.asarray(mask),
                        objective.cost, objective.initial_position)
    mean, var = _moments(parts['net'], mask)
    turnover = _moments(parts['turnover'], mask)[0]
    loss = float(_objective_loss(mean, var, turnover, objective))
    accuracy = float(_directional_accuracy(jnp.asarray(position), jnp.asarray(forward_return),
                                           jnp.asarray(mask), objective.long_only))
  net, gross = (np.asarray(parts[k])[mask] for k in ('net', 'gross'))
  held, ahead = position[mask], forward_return[mask]
  annual = objective.periods_per_year

  def sharpe(x: np.ndarray) -> float:
    if len(x) < 2:
      return float('nan')
    return float(metrics_lib.sharpe_from_moments(x.mean(), x.std(ddof=1), annual))

  ic = (float(np.corrcoef(held, ahead)[0, 1])
        if len(held) > 1 and held.std() > 0 and ahead.std() > 0 else float('nan'))
  return {'val_loss': loss, 'val_net_sharpe': sharpe(net), 'val_gross_sharpe': sharpe(gross),
          'val_mean_net_return': float(mean), 'val_turnover_per_year': float(turnover) * annual,
          'val_mean_abs_position': float(np.abs(held).mean()) if len(held) else 0.0,
          'val_ic': ic, 'val_accuracy': accuracy, 'val_bars': len(held)}


def decisions_from_positions(position: Any, *, threshold: float = 0.0,
                             long_only: bool = False) -> tuple[np.ndarray, np.ndarray]:
  """Interim: positions -> (actions, confidence) for the seed backtester (`run_backtest`).

  Until the backtester takes target positions, a position becomes an order: with the lean
  `s = p` (or `s = 2p - 1` for long-only positions in [0, 1], so 0.5 is indifferent),
  `s > threshold` -> BUY, `s < -threshold` -> SELL, else HOLD. A BUY's confidence is the
  target size (`|p|`, or `p` long-only), which the backtester's `confidence` sizing scales by
  `max_position_pct`; a SELL's is `|p|` (`1 - p` long-only). A signed position in a
  long-only backtest closes on SELL, as the backtester does without shorting.

  Args:
    position: (N,) positions in [-1, 1], or [0, 1] with `long_only`.
    threshold: in [0, 1); the HOLD band around indifference.
    long_only: the positions come from a long-only (sigmoid) model.

  Returns:
    actions int32 (N,) (0 = SELL, 1 = HOLD, 2 = BUY), confidence float64 (N,) in [0, 1].
  """
  if not 0 <= threshold < 1:
    raise ValueError(f'threshold={threshold} must be in [0, 1).')
  position = np.asarray(position, np.float64)
  low = 0.0 if long_only else -1.0
  bad = np.flatnonzero(~((position >= low) & (position <= 1)))
  if bad.size:
    raise ValueError(f'position at bar {bad[0]} is {position[bad[0]]}; expected values in '
                     f'[{low:g}, 1].')
  lean = 2 * position - 1 if long_only else position
  actions = np.where(lean > threshold, BUY, np.where(lean < -threshold, SELL, HOLD))
  confidence = np.where(actions == SELL, 1 - position, position) if long_only else np.abs(
      position)
  return actions.astype(np.int32), confidence
