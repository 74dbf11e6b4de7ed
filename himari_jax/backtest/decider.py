"""One decision path from bars to positions: the backtest's, and paper trading's.

A `Decider` is the chain members -> calibration -> ensemble -> decision rule -> fills (SPEC 5,
6 and 8). Its `Scorer` (trained members, each with its calibration; none for callers that
bring their own decisions) gives calibrated probabilities per bar, `decisions.decide` combines
them by the ensemble strategy and confidence threshold, and the rule trades them with the
backtester's costs, sizing and fill timing: the seed's rule (the ensemble's actions through
`engine.continue_backtest`) or a SPEC 8 policy (`policy.continue_policy`: hysteresis, minimum
hold, cooldown, sizing, band, shorting). It runs

* `run(df)`: every bar of a span at once (a backtest), or
* `step(window, state)`: the last bar of a window, from the `engine.BarState` the previous bar
  left (cash, position, the policy's side and the bars since it changed, the decision still to
  fill at the next open): paper trading.

Both make the same calls (members score in batches of `MemberScorer.batch_size` windows either
way, since other batch shapes round differently), so a span stepped bar by bar is the span run
at once, bit for bit, wherever each window holds every bar before it that the span held
(features read their whole window).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple, Protocol

import jax
import ml_collections
import numpy as np
import pandas as pd

from himari_jax import config as config_lib
from himari_jax import constants
from himari_jax.backtest import engine as backtest_lib
from himari_jax.backtest import policy as policy_lib
from himari_jax.inference import calibration as calibration_lib
from himari_jax.inference import decisions as decisions_lib
from himari_jax.inference import members as members_lib
from himari_jax.inference import predict as predict_lib
from himari_jax.model import checkpoint as checkpoint_lib

SIDES = {-1: 'short', 0: 'flat', 1: 'long'}


class Scorer(Protocol):
  """Calibrated probabilities of M members for the bars of a frame.

  names: the M members; min_bars: bars a window needs before its last bar can be scored.
  """

  names: Sequence[str]
  min_bars: int

  def probabilities(self, df: pd.DataFrame, bars: np.ndarray | None = None
                    ) -> tuple[np.ndarray, np.ndarray, list[dict]]:
    """(probs (M, N, 3), `decisions.HOLD_PROBS` where a member cannot score; available (N,),
    every member scores the bar; one calibration summary per member). `bars`: only these B
    bar indices, (M, B, 3) and (B,)."""


@dataclasses.dataclass(frozen=True)
class MemberScorer:
  """Trained members (`members.load_member`), each with its fitted calibration
  (`members.fit_member_calibration`), scoring with the normaliser of `asset`."""

  members: Sequence[checkpoint_lib.LoadedModel]
  names: Sequence[str]
  fitted: Sequence[tuple[calibration_lib.Calibration, dict]]
  calibration_config: ml_collections.ConfigDict
  asset: str | None = None
  batch_size: int = 512

  @property
  def min_bars(self) -> int:
    return max(predict_lib.first_available_bar(int(m.config.train.context_length))
               for m in self.members) + 1

  def probabilities(self, df: pd.DataFrame, bars: np.ndarray | None = None
                    ) -> tuple[np.ndarray, np.ndarray, list[dict]]:
    return members_lib.member_probabilities(
        self.members, df, self.calibration_config, asset=self.asset, fitted=self.fitted,
        batch_size=self.batch_size, bars=bars)

  def identity(self) -> list[dict[str, Any]]:
    """The members as a policy file and a ledger record them: path and checkpoint step."""
    return [{'path': name, 'step': int(m.step)}
            for name, m in zip(self.names, self.members, strict=True)]


def load_scorer(paths: Sequence[str], config: ml_collections.ConfigDict, *,
                asset: str | None = None, log=print,
                members: Sequence[checkpoint_lib.LoadedModel] | None = None) -> MemberScorer:
  """Loads the members of `paths` (`config.which`; or takes them loaded, `members`) and fits
  each one's calibration (`config.calibration`, on its own validation split);
  `config.predict_batch_size` windows per compiled call."""
  if members is None:
    members = [members_lib.load_member(p, config.which) for p in paths]
  fitted = [members_lib.fit_member_calibration(m, config.calibration) for m in members]
  for path, (_, summary) in zip(paths, fitted, strict=True):
    if 'skipped' in summary:
      log(f'{path}: {summary["skipped"]}')
  return MemberScorer(members, list(paths), fitted, config.calibration, asset,
                      int(config.get('predict_batch_size', 512)))


class Step(NamedTuple):
  """One bar decided and filled: `decisions` of that bar alone, its combined `probs` (3,)
  and annualised volatility `sigma` (NaN before it is defined), the backtest `result` of the
  bar (every field (1,)) and the `state` after it."""

  time: pd.Timestamp
  decisions: decisions_lib.Decisions
  probs: np.ndarray
  sigma: float
  result: backtest_lib.BacktestResult
  state: backtest_lib.BarState


@dataclasses.dataclass(frozen=True)
class Decider:
  """Members -> calibration -> ensemble -> decision rule -> fills (module docstring).

  params: the backtest's costs, capital, sizing and fill timing; policy: a scalar
  `PolicyParams`, or None for the seed's rule (the ensemble's actions and confidence
  threshold, sized by `params`); scorer: where probabilities come from (None: `trade` only);
  strategy, threshold, weights: the ensemble (`decisions.decide`); vol_window,
  periods_per_year: the volatility `vol_target` sizes by.
  """

  params: backtest_lib.BacktestParams
  policy: policy_lib.PolicyParams | None = None
  scorer: Scorer | None = None
  strategy: str = 'voting'
  threshold: float = 0.0
  weights: tuple[float, ...] | None = None
  vol_window: int = 168
  periods_per_year: float = constants.PERIODS_PER_YEAR

  @classmethod
  def from_config(cls, config: ml_collections.ConfigDict,
                  policy: policy_lib.PolicyParams | None, scorer: Scorer | None = None,
                  weights: Sequence[float] | None = None) -> Decider:
    """The decider of a `configs/backtest.py` config (costs, sizing, ensemble, volatility
    window) trading `policy` (None: the seed's rule)."""
    return cls(params=backtest_lib.params_from_config(config), policy=policy, scorer=scorer,
               strategy=config.strategy, threshold=float(config.confidence_threshold),
               weights=None if weights is None else tuple(float(w) for w in weights),
               vol_window=int(config.policy.vol_window),
               periods_per_year=float(config.periods_per_year))

  @property
  def min_bars(self) -> int:
    """Bars a window needs before its last bar can be decided."""
    return self._scorer().min_bars

  def _scorer(self) -> Scorer:
    if self.scorer is None:
      raise ValueError('this decider has no members to score bars with; pass its decisions '
                       'to `trade`')
    return self.scorer

  def decide(self, df: pd.DataFrame, bars: np.ndarray | None = None
             ) -> decisions_lib.Decisions:
    """The members' calibrated, combined decisions on the N bars of `df` (on `bars` only,
    when given: the last bar of a window; features still read every bar of `df`)."""
    scorer = self._scorer()
    probs, available, summaries = scorer.probabilities(df, bars)
    index = df.index if bars is None else df.index[np.asarray(bars)]
    return decisions_lib.decide(probs, available, strategy=self.strategy,
                                threshold=self.threshold, weights=self.weights,
                                members=scorer.names, calibrations=summaries, index=index)

  def sigma(self, df: pd.DataFrame) -> np.ndarray:
    """(N,) annualised volatility of bars <= t that `vol_target` sizes by."""
    return policy_lib.annualized_volatility(np.asarray(df['close'], np.float64),
                                            window=self.vol_window,
                                            periods_per_year=self.periods_per_year)

  def start(self, df: pd.DataFrame) -> backtest_lib.BarState:
    """The state before the first bar of `df`: the capital in cash, flat."""
    if self.policy is None:
      return backtest_lib.start_state(df, self.params)
    return policy_lib.start_policy_state(df, self.policy, self.params)

  def trade(self, df: pd.DataFrame, *, actions: Any = None, confidence: Any = None,
            probs: Any = None, sigma: Any = None, start: backtest_lib.BarState | None = None
            ) -> tuple[backtest_lib.BacktestResult, backtest_lib.BarState]:
    """Decisions of the N bars of `df` traded by the rule, from `start` (default flat).

    Args:
      df: OHLCV of the N bars.
      actions, confidence: (N,) the ensemble's actions and confidence (the seed's rule).
      probs: (N, 3) combined calibrated probabilities (a policy).
      sigma: (N,) annualised volatility for `vol_target` (default: `self.sigma(df)`).

    Returns:
      (BacktestResult of (N,) arrays, the BarState after the last bar).
    """
    start = self.start(df) if start is None else start
    if self.policy is None:
      if actions is None or confidence is None:
        raise ValueError("the seed's rule trades actions and their confidence")
      return backtest_lib.continue_backtest(df, actions, confidence, self.params, start)
    if probs is None:
      raise ValueError('a decision policy trades probabilities')
    return policy_lib.continue_policy(
        df, probs, self.policy, self.params, start,
        sigma_annual=self.sigma(df) if sigma is None else sigma,
        periods_per_year=self.periods_per_year)

  def run(self, df: pd.DataFrame
          ) -> tuple[decisions_lib.Decisions, backtest_lib.BacktestResult]:
    """Every bar of `df` decided and traded from flat: (decisions, BacktestResult (N,))."""
    decisions = self.decide(df)
    result, _ = self.trade(df, actions=decisions.actions, confidence=decisions.confidence,
                           probs=decisions.combined())
    return decisions, result

  def step(self, window: pd.DataFrame, state: backtest_lib.BarState | None) -> Step:
    """The last bar of `window` decided and traded from `state` (None: flat, a first bar).

    Raises:
      ValueError: the window has fewer than `min_bars` bars.
    """
    if len(window) < self.min_bars:
      raise ValueError(f'{len(window)} bars up to {window.index[-1]}: a decision needs '
                       f'{self.min_bars}')
    last = np.array([len(window) - 1])
    decisions = self.decide(window, bars=last)
    probs = decisions.combined()
    sigma = self.sigma(window)[last]
    bar = window.iloc[last]
    result, state = self.trade(bar, actions=decisions.actions, confidence=decisions.confidence,
                               probs=probs, sigma=sigma,
                               start=self.start(bar) if state is None else state)
    return Step(window.index[-1], decisions, probs[0], float(sigma[0]), result, state)

  def last_step(self, df: pd.DataFrame) -> Step:
    """The last bar of a run over every bar of `df` from flat, as a `Step`."""
    decided = self.decide(df)
    probs, sigma = decided.combined(), self.sigma(df)
    result, state = self.trade(df, actions=decided.actions, confidence=decided.confidence,
                               probs=probs, sigma=sigma)
    last = np.array([len(df) - 1])
    return Step(df.index[-1], _bars_of(decided, last), probs[-1], float(sigma[-1]),
                jax.tree.map(lambda x: np.asarray(x)[last], result), state)

  # ------------------------------------------------------------- the state, as a ledger row

  def side_and_bars(self, state: backtest_lib.BarState) -> tuple[int, float]:
    """The side the rule holds after a bar (-1, 0, 1) and, for a policy, the bars since it
    last changed (NaN for the seed's rule, which keeps no count)."""
    if self.policy is None:
      return int(np.sign(float(state.position))), math.nan
    side, bars = policy_lib.state_side_and_bars(state.rule_state)
    return side, float(bars)

  def row(self, step: Step) -> dict[str, Any]:
    """A ledger row of a step: the decision, the fill and everything the next bar continues
    from (`state_from_row` reads it back)."""
    side, bars = self.side_and_bars(step.state)
    fields = {'action': constants.ACTION_NAMES[int(step.decisions.actions[0])],
              'p_sell': step.probs[0], 'p_hold': step.probs[1], 'p_buy': step.probs[2],
              'confidence': step.decisions.confidence[0], 'sigma': step.sigma, 'side': side,
              'bars_in_side': bars}
    for name in ('fill_qty', 'fill_price', 'commission', 'slippage', 'position', 'cash',
                 'equity'):
      fields[name] = getattr(step.result, name)[0]
    return {k: float(v) if k != 'action' else v for k, v in fields.items()}

  def state_from_row(self, row: Mapping[str, Any]) -> backtest_lib.BarState:
    """The BarState a ledger row (or `carry` of a ledger's state) ends in: exactly the state
    the step that wrote it returned."""
    dtype = jax.numpy.result_type(float)
    value = lambda name: np.asarray(float(row[name]), dtype)  # noqa: E731
    if self.policy is None:
      rule_state = ()
      signal = (np.asarray(constants.ACTION_NAMES.index(row['action']), np.int32),
                value('confidence'))
    else:
      rule_state = policy_lib.state_from_side_and_bars(int(row['side']),
                                                       float(row['bars_in_side']))
      probs = np.array([[float(row[k]) for k in ('p_sell', 'p_hold', 'p_buy')]])
      sigma = np.array([np.nan if row['sigma'] is None else float(row['sigma'])])
      signal = tuple(x[0] for x in policy_lib.policy_signal(probs, sigma))
    return backtest_lib.BarState(cash=value('cash'), position=value('position'),
                                 rule_state=rule_state, signal=signal, open=value('open'),
                                 close=value('close'))

  def describe_state(self, state: backtest_lib.BarState) -> dict[str, Any]:
    """The state for people: cash, position and the rule's side (a policy's also bars held,
    minimum hold and cooldown still to run: `policy.describe_state`)."""
    described = {'cash': float(state.cash), 'position': float(state.position)}
    if self.policy is None:
      return {**described, 'side': SIDES[int(np.sign(float(state.position)))]}
    return {**described, **policy_lib.describe_state(state.rule_state, self.policy)}


def _bars_of(decisions: decisions_lib.Decisions, bars: np.ndarray) -> decisions_lib.Decisions:
  """`decisions` of the given bar indices only."""
  return dataclasses.replace(
      decisions, probs=decisions.probs[:, bars], available=decisions.available[bars],
      actions=decisions.actions[bars], confidence=decisions.confidence[bars],
      index=None if decisions.index is None else decisions.index[bars])


def weights_from_config(config: ml_collections.ConfigDict, num_members: int
                        ) -> list[float] | None:
  """`config.weights` (comma-separated, one per member), or None for equal weights."""
  weights = [float(w) for w in config_lib.split_list(config.get('weights', '') or '')]
  if weights and len(weights) != num_members:
    raise ValueError(f'weights has {len(weights)} entries for {num_members} checkpoints; give '
                     'one per checkpoint or leave it empty for equal weights')
  return weights or None
