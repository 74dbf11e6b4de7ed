"""The optional extras (`pip install "himari-jax[<extra>]"`): imported only where a feature
needs one, and a missing one named in the error.

`import_extra('torch', 'torch', 'reading runs/x.pt')` returns the module or raises
`MissingExtraError`, which entry points report as one line (`cli.run`):

  error: reading runs/x.pt: torch is not installed (pip install "himari-jax[torch]")

Plots are optional output: `pyplot('the backtest plots')` returns None after a warning instead.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from types import ModuleType

from absl import logging


class MissingExtraError(ImportError):
  """A feature needs an optional package that is not installed; the message names the extra.

  Attributes:
    needed_for: what needs it, e.g. 'reading runs/x.pt'.
    package: the top-level module, e.g. 'torch'.
    extra: the `[project.optional-dependencies]` entry that installs it, e.g. 'torch'.
  """

  def __init__(self, needed_for: str, package: str, extra: str, cause: ImportError):
    self.needed_for, self.package, self.extra = needed_for, package, extra
    if isinstance(cause, ModuleNotFoundError) and cause.name == package:
      reason = f'{package} is not installed'
    else:  # installed but broken, e.g. a wheel for another platform
      reason = f'{package} failed to import ({" ".join(str(cause).split())})'
    self.reason = f'{reason} (pip install "himari-jax[{extra}]")'
    super().__init__(f'{needed_for}: {self.reason}', name=package)


def import_extra(module: str, extra: str, needed_for: str) -> ModuleType:
  """`importlib.import_module(module)`, or `MissingExtraError` naming `extra`.

  Args:
    module: e.g. 'torch' or 'tensorboard.backend.event_processing'.
    extra: the extra that installs it, e.g. 'torch', 'baselines', 'ray', 'plot'.
    needed_for: what the user asked for, as the error's first words, e.g. 'reading runs/x.pt'.
  """
  try:
    return importlib.import_module(module)
  except ImportError as e:
    raise MissingExtraError(needed_for, module.partition('.')[0], extra, e) from e


def pyplot(needed_for: str, warn: Callable[[str], None] = logging.warning
           ) -> ModuleType | None:
  """`matplotlib.pyplot` on the file-only Agg backend, or None after `warn`ing that
  `needed_for` (e.g. 'the backtest plots') is skipped because the `plot` extra is missing."""
  try:
    matplotlib = import_extra('matplotlib', 'plot', needed_for)
  except MissingExtraError as e:
    warn(f'skipping {e.needed_for}: {e.reason}')
    return None
  matplotlib.use('Agg')
  return importlib.import_module('matplotlib.pyplot')
