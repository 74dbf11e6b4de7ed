"""How every entry point starts and fails: `cli.run(main)` in place of `absl.app.run(main)`.

A mistake a user can fix (a missing or malformed CSV, a bad config value or variant, a
corrupt checkpoint or `.pt`, an unknown feature set, an unreachable server) ends the program
with one line on stderr, `error: <message>`, and exit status 1; the message names the bad
file, row, field or flag. `--verbose` shows the Python traceback instead. Anything else is a
bug and keeps its traceback.

What counts as a user's mistake:

* `ValueError`, which the library raises for inputs it refuses, and so every error class of
  the package that derives from it: `data.DataError`, `config.ConfigError`,
  `convert.ConversionError`, `checkpoint.CheckpointError`, `features.FeatureSetError`,
  `adapters.AdapterError`, `baselines.BaselineError`;
* `OSError`: a missing file or folder, a permission, a network failure;
* `extras.MissingExtraError`: an optional package the run needs (torch for a `.pt`, LightGBM,
  Ray for `--ray_address`); the line names the extra to install;
* the errors that are not ValueErrors: `binance.DownloadError`, `live.FeedError`,
  `live.LedgerError`, `locks.LockError` (another process holds a workdir or ledger), and
  `train.TrainingDivergedError` (lower the learning rate);
* bad flags, including a config file that fails to load (`--config=...:no_such_variant`) and
  an override of a field the config does not have (`--config.train.no_such_field=1`). A
  config flag with a default path applies the overrides while it is defined, before `run`:
  define it with `define_config_file` to report them the same way.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence
from typing import Any, NoReturn

from absl import app, flags
from ml_collections import config_flags

from himari_jax.extras import MissingExtraError

_VERBOSE = flags.DEFINE_bool('verbose', False,
                             'Show the Python traceback of an error instead of one line.')

# Errors of modules an entry point may not import: looked up only once it has (importing
# `live` would load JAX and the model into every program, `download_data.py` included).
_MODULE_ERRORS = {'himari_jax.data.binance': ('DownloadError',),
                  'himari_jax.live.sources': ('FeedError',),
                  'himari_jax.live.ledger': ('LedgerError',),
                  'himari_jax.locks': ('LockError',),
                  'himari_jax.training.train_logging': ('TrainingDivergedError',)}


def user_errors() -> tuple[type[BaseException], ...]:
  """The exception classes reported as one line, among the modules imported so far."""
  errors = [ValueError, OSError, MissingExtraError]
  for module_name, names in _MODULE_ERRORS.items():
    module = sys.modules.get(module_name)
    if module is not None:
      errors += [getattr(module, name) for name in names]
  return tuple(errors)


def _verbose_in(argv: Sequence[str]) -> bool:
  """Whether `--verbose` is among raw arguments (for errors before they are parsed)."""
  return any(a == '--verbose' or a.lower() in ('--verbose=true', '--verbose=1') for a in argv)


def error_line(error: BaseException) -> str:
  """`error: <message>` on one line (`OSError`s as `<file>: <reason>`)."""
  if isinstance(error, OSError) and error.filename is not None and error.strerror:
    message = f'{error.filename}: {error.strerror}'
  else:
    message = str(error) or type(error).__name__
  return 'error: ' + ' '.join(message.split())


def _fail(message: str) -> NoReturn:
  print(message, file=sys.stderr, flush=True)
  sys.exit(1)


def _flag_error_message(error: BaseException) -> str:
  """One line for a flag that failed to parse.

  A config file that raises while loading comes back from `config_flags` as the flag's name
  followed by the whole traceback; its first line and the exception's own last line are what
  a user needs.
  """
  lines = [line.strip() for line in str(error).splitlines() if line.strip()]
  if any(line.startswith('Traceback') for line in lines):
    return f'{lines[0]} {lines[-1]}'
  return ' '.join(lines)


def parse_flags(argv: Sequence[str]) -> list[str]:
  """`absl.app`'s flag parsing, with its failures as one `error:` line (all of `--verbose`)."""
  try:
    return flags.FLAGS(argv)
  except flags.Error as e:
    if _verbose_in(argv):
      raise
    _fail(error_line(ValueError(_flag_error_message(e))))
  except (AttributeError, KeyError) as e:
    # ml_collections' answer to `--config.<path>=...` naming no field of the config.
    if _verbose_in(argv):
      raise
    _fail(_no_field_line(e, argv))


def _no_field_line(error: BaseException, argv: Sequence[str]) -> str:
  """`error: --config.x.y: the config has no field 'y'` for ml_collections' KeyError."""
  name = str(error).strip('"\'')
  overrides = [a.split('=', 1)[0] for a in argv[1:]
               if a.startswith('--') and '.' in a.split('=', 1)[0]]
  named = [a for a in overrides if a.rsplit('.', 1)[-1] == name] or overrides
  return error_line(ValueError(f'{", ".join(named) or "a flag"}: the config has no field '
                               f'{name!r}'))


def define_config_file(name: str, default: str | None, help_string: str, **kwargs: Any):
  """`config_flags.DEFINE_config_file`, with a bad override of a default config as one line.

  With a default path, `ml_collections` loads the config and applies the command line's
  `--<name>.<field>=...` overrides as the flag is defined (at import of the script), where an
  unknown field would otherwise end in a traceback.
  """
  try:
    return config_flags.DEFINE_config_file(name, default, help_string, **kwargs)
  except (AttributeError, KeyError) as e:
    if _verbose_in(sys.argv):
      raise
    _fail(_no_field_line(e, sys.argv))


def _guarded(main: Callable[[list[str]], Any]) -> Callable[[list[str]], Any]:
  def guarded(argv):
    try:
      return main(argv)
    except user_errors() as e:
      if _VERBOSE.value:
        raise
      _fail(error_line(e))
  return guarded


def run(main: Callable[[list[str]], Any], argv: Sequence[str] | None = None) -> None:
  """`absl.app.run(main)` with the errors above reported as one `error: ...` line.

  Args:
    main: the program, `main(argv)` as `absl.app.run` calls it; `app.UsageError` still
      prints the usage.
    argv: default `sys.argv`.
  """
  app.run(_guarded(main), argv=argv, flags_parser=parse_flags)
