"""Walk-forward evaluation: retrain per fold, test on the following bars, one stitched backtest.

  python launch/walk_forward.py --config=configs/walk_forward.py:small --workdir=runs/wf
  python launch/walk_forward.py --config=configs/walk_forward.py:small --workdir=runs/wf_exp \
      --config.mode=expanding --config.test_start=2024-01-01
  python launch/walk_forward.py --workdir=runs/wf_sel --config.policy.mode=select  # per fold

Prints the per-fold table, each fold's selected policy against the seed rule on its test
window (and whether 'auto' falls back to the seed rule on that record), the stitched
out-of-sample metrics against buy-and-hold and their error bars. Re-running with the same
workdir skips finished folds and resumes a fold's training where it stopped. Compiled steps
are cached in <workdir>/compilation_cache (unless JAX_COMPILATION_CACHE_DIR names another
place), so folds after the first skip compilation.
With --ray_address the unfinished folds train in parallel as Ray tasks (one per GPU).
"""

import os

from absl import app, flags, logging

from himari_jax import cli
from himari_jax.model import checkpoint
from himari_jax.research import dispatch, walkforward

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

_CONFIG = cli.define_config_file(
    'config', os.path.join(REPO, 'configs', 'walk_forward.py') + ':small',
    'Walk-forward configuration, e.g. configs/walk_forward.py:small.')
_WORKDIR = flags.DEFINE_string('workdir', 'runs/walk_forward', 'Run folder (resumed if present).')
_RAY_ADDRESS = flags.DEFINE_string(
    'ray_address', None, "Train the unfinished folds as Ray tasks on this cluster ('auto', "
    "'ray://head:10001', 'local'), one per GPU; the workdir must be on storage every node sees.")


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {argv[1:]}')
  checkpoint.quiet_orbax_logging()
  # Every fold compiles the same training and inference steps: compile them once.
  dispatch.share_compilation_cache(os.path.join(_WORKDIR.value, 'compilation_cache'),
                                   _RAY_ADDRESS.value)
  outcome = walkforward.run_walk_forward(_CONFIG.value, _WORKDIR.value,
                                         ray_address=_RAY_ADDRESS.value, log=logging.info)
  walkforward.print_walk_forward_summary(outcome)


if __name__ == '__main__':
  cli.run(main)
