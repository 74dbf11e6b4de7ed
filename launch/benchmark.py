"""Models x assets x walk-forward folds x seeds on equal terms (SPEC 10).

  python launch/benchmark.py --config=configs/benchmark.py:cpu --workdir=runs/bench
  python launch/benchmark.py --config=configs/benchmark.py:universe_smoke --workdir=runs/u

The universe variants (`universe_smoke`, `universe_cpu`, `universe_gpu`) run the pooled
walk-forward benchmark over many coins (research/universe_benchmark.py) and write
<workdir>/results.jsonl, universe_benchmark.md (the table and its answers stated as tests),
universe_tests.json and plots; with --ray_address each fold is one Ray task.

Writes <workdir>/results.jsonl (one line per trial), benchmark.md (the table), summary.json
and plots. Re-running with the same workdir skips finished trials. Compiled steps are cached
in <workdir>/compilation_cache (unless JAX_COMPILATION_CACHE_DIR names another place).
With --ray_address the unfinished trials run in parallel as Ray tasks (one GPU per
FLAG-TRADER trial, one CPU per baseline trial).
"""

import os
import sys

from absl import app, flags

from himari_jax import cli, config
from himari_jax.data import ohlcv as data
from himari_jax.model import checkpoint
from himari_jax.research import benchmark, dispatch, universe_benchmark

_CONFIG = cli.define_config_file(
    'config', None, 'Benchmark configuration, e.g. configs/benchmark.py:cpu.')
_WORKDIR = flags.DEFINE_string('workdir', 'runs/bench', 'Run folder (resumed if present).')
_RAY_ADDRESS = flags.DEFINE_string(
    'ray_address', None, "Run the unfinished trials as Ray tasks on this cluster ('auto', "
    "'ray://head:10001', 'local'); the workdir must be on storage every node sees.")


def _log(line: str) -> None:
  print(line, flush=True)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {argv[1:]}')
  if _CONFIG.value is None:
    sys.exit('error: --config is required, e.g. --config=configs/benchmark.py:cpu')
  checkpoint.quiet_orbax_logging()
  try:
    dispatch.share_compilation_cache(os.path.join(_WORKDIR.value, 'compilation_cache'),
                                     _RAY_ADDRESS.value)
    if _CONFIG.value.get('variant') in config.UNIVERSE_BENCHMARK_VARIANTS:
      universe_benchmark.run_universe_benchmark(_CONFIG.value, _WORKDIR.value,
                                                ray_address=_RAY_ADDRESS.value, log=_log)
      return
    benchmark.run_benchmark(_CONFIG.value, _WORKDIR.value, ray_address=_RAY_ADDRESS.value,
                            log=_log)
  except (config.ConfigError, data.DataError, FileNotFoundError) as e:
    sys.exit(f'error: {e}')


if __name__ == '__main__':
  cli.run(main)
