"""Models x assets x walk-forward folds x seeds on equal terms (SPEC 10).

  python launch/benchmark.py --config=configs/benchmark.py:cpu --workdir=runs/bench

Writes <workdir>/results.jsonl (one line per trial), benchmark.md (the table), summary.json
and plots. Re-running with the same workdir skips finished trials. Compiled steps are cached
in <workdir>/compilation_cache (unless JAX_COMPILATION_CACHE_DIR names another place).
"""

import os
import sys

import jax
from absl import app, flags
from ml_collections import config_flags

from himari_jax import benchmark, checkpoint, config, data

_CONFIG = config_flags.DEFINE_config_file(
    'config', None, 'Benchmark configuration, e.g. configs/benchmark.py:cpu.')
_WORKDIR = flags.DEFINE_string('workdir', 'runs/bench', 'Run folder (resumed if present).')


def _log(line: str) -> None:
  print(line, flush=True)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {argv[1:]}')
  if _CONFIG.value is None:
    sys.exit('error: --config is required, e.g. --config=configs/benchmark.py:cpu')
  checkpoint.quiet_orbax_logging()
  if not jax.config.jax_compilation_cache_dir:
    jax.config.update('jax_compilation_cache_dir',
                      os.path.join(os.path.abspath(_WORKDIR.value), 'compilation_cache'))
  try:
    benchmark.run_benchmark(_CONFIG.value, _WORKDIR.value, log=_log)
  except (config.ConfigError, data.DataError, FileNotFoundError) as e:
    sys.exit(f'error: {e}')


if __name__ == '__main__':
  app.run(main)
