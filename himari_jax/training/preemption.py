"""Pre-emption of a training run: SIGTERM / SIGINT become a request to stop after a step.

SIGTERM is how spot machines are stopped. `train.train_and_evaluate` asks `stop_requests`
after each step; on a request it finishes the step in flight, logs
the metrics so far, saves a checkpoint of that step, waits for the pending saves and returns
with `preempted` set, so rerunning the same command resumes bit-identically. A second signal
stops at once. Multi-process runs install no handler: jax.distributed's pre-emption notifier
and Orbax's sync point pick the step every process stops at.
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
from collections.abc import Callable, Iterator
from typing import Any

import jax
import orbax.checkpoint as ocp
from absl import logging

PREEMPTION_SIGNALS = (signal.SIGTERM, signal.SIGINT)


class PreemptionGuard:
  """Turns SIGTERM / SIGINT into a request to stop after the current step.

  A context manager: the handlers are installed on entry (main thread only; elsewhere the
  signals keep their handlers and `requested` stays None) and the previous ones restored on
  exit. A second signal while a stop is pending runs the previous handler (SIGINT raises
  KeyboardInterrupt, SIGTERM terminates), so an impatient user is never ignored.

  Attributes:
    requested: the name of the signal received ('SIGTERM'), or None.
  """

  def __init__(self, signals: tuple[signal.Signals, ...] = PREEMPTION_SIGNALS):
    self.signals, self.requested, self._previous = signals, None, {}

  def __enter__(self) -> PreemptionGuard:
    if threading.current_thread() is threading.main_thread():
      self._previous = {s: signal.signal(s, self._handle) for s in self.signals}
    return self

  def __exit__(self, *exc_info) -> None:
    for s, handler in self._previous.items():
      signal.signal(s, handler)
    self._previous = {}

  def _handle(self, signum: int, frame: Any) -> None:
    if self.requested is None:
      self.requested = signal.Signals(signum).name
      logging.warning('%s received: stopping after the current step with a checkpoint '
                      '(send it again to stop at once)', self.requested)
      return
    previous = self._previous.get(signal.Signals(signum), signal.SIG_DFL)
    signal.signal(signum, previous)
    if callable(previous):
      previous(signum, frame)
    else:
      os.kill(os.getpid(), signum)


@contextlib.contextmanager
def stop_requests(manager: ocp.CheckpointManager) -> Iterator[Callable[[int], str | None]]:
  """`requested(step)`: the name of the signal that stops training after `step`, or None.

  One process: SIGTERM / SIGINT through a `PreemptionGuard` installed for the `with` block.
  Several processes must stop at the same step: jax.distributed's pre-emption notifier
  (SIGTERM) and Orbax's sync point (`manager.reached_preemption`) decide there, so no handler
  of ours is installed.
  """
  if jax.process_count() == 1:
    with PreemptionGuard() as guard:
      yield lambda step: guard.requested
  else:
    yield lambda step: 'SIGTERM' if manager.reached_preemption(step) else None
