"""Placebo runs: the configured pipeline on N markets with nothing to find, and the real result.

  python launch/placebo.py --config=configs/placebo.py:quickstart --workdir=runs/placebo --runs=20
  python launch/placebo.py --config=configs/placebo.py:tiny --workdir=/tmp/placebo --runs=2

1. runs the pipeline (`pipeline.run_pipeline`: train, calibrate, decide, backtest) on the real
   training and test files -> `<workdir>/real.json`,
2. runs exactly the same pipeline on `--runs` synthetic markets, each built from the real
   training and test files by `synthetic.make_markets` with market seed
   `placebo.first_seed + i` -> `<workdir>/placebo/run_XXX.json`,
3. writes the null distribution of every result number and the real result's empirical
   p-value: `placebo_summary.json`, `placebo_table.md`, `placebo_hist.png` and
   `placebo_section.html` in `<workdir>`, and puts that section into the real run's
   `<workdir>/real/backtest/backtest_report.html`, so one page holds the result and its null.
Each run's folder (`<workdir>/real`, `<workdir>/placebo/run_XXX`) holds its market as CSV
files, its checkpoints and its backtest reports. Compiled programs are cached in
`<workdir>/jax_cache` (unless JAX_COMPILATION_CACHE_DIR names another folder): the runs
compile the same programs, so every run after the first skips most compilation.
Re-running with the same workdir (and the same config, stored in
`<workdir>/placebo_config.json`; another one is refused) skips finished runs (a run stopped
mid-training resumes from its checkpoints); a larger --runs adds runs, a smaller one
summarises the first --runs. With --ray_address the missing placebo runs train in parallel
as Ray tasks (one per GPU); the workdir must then be on storage every node sees.
"""

import json
import math
import os
import sys

import jax
from absl import app, flags

from himari_jax import cli
from himari_jax.backtest import report
from himari_jax.data import ohlcv as data
from himari_jax.data import synthetic
from himari_jax.model import checkpoint
from himari_jax.research import dispatch, pipeline, placebo
from himari_jax.training import train_logging

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

_CONFIG = cli.define_config_file(
    'config', os.path.join(REPO, 'configs', 'placebo.py') + ':quickstart',
    'Pipeline and placebo settings.')
_WORKDIR = flags.DEFINE_string('workdir', 'runs/placebo', 'Experiment folder.')
_RUNS = flags.DEFINE_integer('runs', 20, 'Number of placebo runs (synthetic markets).')
_REAL = flags.DEFINE_bool('real', True, 'Also run the pipeline on the real files.')
_RAY_ADDRESS = flags.DEFINE_string(
    'ray_address', None, "Run the missing placebo runs as Ray tasks on this cluster ('auto', "
    "'ray://head:10001', 'local'), one per GPU.")

REAL_JSON = 'real.json'
REAL_SUBDIR = 'real'
CONFIG_JSON = 'placebo_config.json'
JAX_CACHE_SUBDIR = 'jax_cache'  # unless JAX_COMPILATION_CACHE_DIR names one
# Every number of a run, summarised over the placebo runs.
SUMMARY_METRICS = (*placebo.DEFAULT_METRICS, 'rank_ic', 'num_trades', 'gross_total_return',
                   'benchmark_sharpe')


def _log(line: str) -> None:
  print(line, flush=True)  # unbuffered: progress and ETA show up in a log file as they happen


def _run_real(config, workdir: str, train_frames, test_frame) -> dict:
  """The real result, computed once and stored in `workdir/real.json`."""
  path = os.path.join(workdir, REAL_JSON)
  if os.path.exists(path):
    with open(path) as f:
      _log(f'real result: stored in {path}')
      return json.load(f)['result']
  result = pipeline.run_pipeline(config.train, config.backtest,
                                 os.path.join(workdir, REAL_SUBDIR), train_frames=train_frames,
                                 test_frame=test_frame, log=_log)
  with open(path + '.tmp', 'w') as f:
    json.dump({'result': {k: v if math.isfinite(v) else None for k, v in result.items()}}, f,
              indent=1, allow_nan=False)
  os.replace(path + '.tmp', path)
  _log('real result: ' + ', '.join(f'{k} {v:.4g}' for k, v in result.items()))
  return result


def _flat(tree: dict, prefix: str = '') -> dict:
  """{'a': {'b': 1}} -> {'a.b': 1}."""
  out = {}
  for key, value in tree.items():
    if isinstance(value, dict):
      out.update(_flat(value, f'{prefix}{key}.'))
    else:
      out[prefix + key] = value
  return out


def _check_config(config, workdir: str) -> None:
  """Stores the config in `workdir` on the first call; later calls must bring the same one,
  since stored runs are skipped, not redone: a mixed null would compare different pipelines."""
  path = os.path.join(workdir, CONFIG_JSON)
  current = json.loads(config.to_json_best_effort())
  if not os.path.exists(path):
    os.makedirs(workdir, exist_ok=True)
    with open(path, 'w') as f:
      json.dump(current, f, indent=1)
    return
  with open(path) as f:
    stored, now = _flat(json.load(f)), _flat(current)
  changed = sorted(k for k in stored.keys() | now.keys() if stored.get(k) != now.get(k))
  if changed:
    raise ValueError(f'{workdir} holds runs of another config ({", ".join(changed)} differ from '
                     f'{path}); use another --workdir, or the config its runs were made with')


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {argv[1:]}')
  checkpoint.quiet_orbax_logging()
  config, workdir = _CONFIG.value, os.path.abspath(_WORKDIR.value)
  if jax.config.jax_compilation_cache_dir is None:
    # Every run compiles the same programs (same config, same shapes): the persistent cache
    # compiles them once, which on CPU saves most of a small run's fixed cost.
    jax.config.update('jax_persistent_cache_min_compile_time_secs', 0.0)
  dispatch.share_compilation_cache(os.path.join(workdir, JAX_CACHE_SUBDIR), _RAY_ADDRESS.value)
  if _RUNS.value < 1:
    sys.exit(f'error: --runs must be >= 1, got {_RUNS.value}')
  p = config.placebo
  if p.method not in synthetic.MARKET_KINDS:
    sys.exit(f'error: config.placebo.method={p.method!r}; valid: '
             f'{", ".join(synthetic.MARKET_KINDS)}')
  try:
    _check_config(config, workdir)
    train_frames = pipeline.load_recent_frames(config.train.data.train,
                                               fill_gaps=config.train.data.fill_gaps,
                                               last_bars=p.train_bars)
    test_name = config.backtest.dataset
    test = pipeline.load_recent_frames(test_name, fill_gaps=True,
                                       last_bars=p.test_bars)[test_name]
    real = (_run_real(config, workdir, train_frames, (test_name, test))
            if _REAL.value else None)
    options = {'method': p.method, 'remove_drift': p.remove_drift}
    if p.method == 'block':
      options['mean_block_length'] = p.mean_block_length
    names = list(train_frames)

    def run_one(seed: int) -> dict:
      *markets, market = synthetic.make_markets([*train_frames.values(), test], seed=seed,
                                                **options)
      run_dir = os.path.join(workdir, placebo.RUNS_DIR, f'run_{seed - p.first_seed:03d}')
      return pipeline.run_pipeline(config.train, config.backtest, run_dir,
                                   train_frames=dict(zip(names, markets, strict=True)),
                                   test_frame=(test_name, market), log=_log)

    results = placebo.run_placebos(run_one, _RUNS.value, workdir, first_seed=p.first_seed,
                                   ray_address=_RAY_ADDRESS.value, log=_log)
    summary = placebo.summarize_placebos(real, results, metrics=SUMMARY_METRICS)
    summary['config'] = {'variant': config.get('variant', ''), 'placebo': p.to_dict(),
                         'train': config.train.train.to_dict()}
    paths = placebo.write_outputs(summary, workdir)
    real_report = os.path.join(workdir, REAL_SUBDIR, pipeline.BACKTEST_SUBDIR,
                               report.REPORT_HTML)
    if real is not None and os.path.exists(real_report):
      with open(paths['html']) as f:
        paths['report'] = placebo.embed_in_report(real_report, f.read())
  except (checkpoint.CheckpointError, data.DataError, ValueError, OSError,
          train_logging.TrainingDivergedError) as e:
    sys.exit(f'error: {e}')
  print()
  print(placebo.markdown_table(summary))
  print('\nwrote:')
  for name, path in paths.items():
    print(f'  {name:>9}: {path}')


if __name__ == '__main__':
  cli.run(main)
