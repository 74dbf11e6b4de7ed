"""Trains FLAG-TRADER: `python launch/train.py --config=configs/flag_trader.py:small
--workdir=runs/small`. Re-running with the same workdir resumes from its latest checkpoint.

Any config field can be overridden, e.g. `--config.train.batch_size=32`. Multi-host runs add
`--jax_distributed` (coordinator, process count and id from the cluster environment, or
`--coordinator_address`, `--num_processes` and `--process_id`).

SIGTERM / SIGINT (a spot machine being stopped, Ctrl-C) finish the current step, save a
checkpoint and exit with status 0 after the line "pre-empted by SIGTERM: stopped at step
...; rerun the same command to resume"; a second signal stops at once.

`--dry_run` compiles the training step for the devices at hand without reading any data
(`profiling.profile_train_step`), prints its peak memory, FLOPs and (on a GPU, after timing a
few steps) MFU, and whether it fits in device memory; exit status 1 when it does not fit.

A config, data, conversion or checkpoint error, a missing file or a diverged run prints one
`error: ...` line and exits with status 1 (`himari_jax.cli`); `--verbose` shows the traceback.
"""

import sys

import jax
from absl import app, flags, logging
from ml_collections import config_flags

from himari_jax import cli
from himari_jax.model import checkpoint
from himari_jax.training import profiling, train

FLAGS = flags.FLAGS

flags.DEFINE_string('workdir', None, 'Directory for checkpoints, metrics and TensorBoard logs.')
flags.DEFINE_bool('dry_run', False, 'Compile the training step, print its memory, FLOPs, '
                  'MFU (GPU) and whether it fits, then exit without training.')
flags.DEFINE_bool('jax_distributed', False, 'Call jax.distributed.initialize() (multi-host).')
flags.DEFINE_string('coordinator_address', None, 'host:port of process 0 (multi-host).')
flags.DEFINE_integer('num_processes', None, 'Number of processes (multi-host).')
flags.DEFINE_integer('process_id', None, 'Index of this process (multi-host).')
config_flags.DEFINE_config_file(
    'config', None, 'Training configuration, e.g. configs/flag_trader.py:small.',
    lock_config=True)
flags.mark_flags_as_required(['config'])

TIMED_STEPS = 10  # steps timed by --dry_run on an accelerator, for the MFU


def dry_run(config) -> bool:
  """Compiles (and on an accelerator times) the training step; True when it fits."""
  model_config = train.validate_config(config)
  steps = TIMED_STEPS if jax.default_backend() != 'cpu' else 0
  profile = profiling.profile_train_step(model_config, config.train.batch_size,
                                         config.train.context_length,
                                         train_config=config.train, steps=steps)
  logging.info('dry run on %d x %s, batch %d, context %d: %s', jax.device_count(),
               profile.device_kind, config.train.batch_size, config.train.context_length,
               profile.summary())
  if profile.fits is None:
    logging.info('fits: unknown (the device does not report its memory)')
  return profile.fits is not False


def run(config) -> int:
  """The exit status of training (or a dry run) with `config`."""
  if FLAGS.dry_run:
    return 0 if dry_run(config) else 1
  if not FLAGS.workdir:
    raise app.UsageError('--workdir is required (unless --dry_run).')
  metrics = train.train_and_evaluate(config, FLAGS.workdir)
  if not metrics.get('preempted'):
    logging.info('final metrics: %s', metrics)
  return 0


def main(argv):
  if len(argv) > 1:
    raise app.UsageError('Too many command-line arguments.')
  checkpoint.quiet_orbax_logging()
  if FLAGS.jax_distributed:
    jax.distributed.initialize(FLAGS.coordinator_address, FLAGS.num_processes,
                               FLAGS.process_id)
  logging.info('JAX process %d / %d, local devices %s', jax.process_index(),
               jax.process_count(), jax.local_devices())
  logging.info('config:\n%s', FLAGS.config)
  sys.exit(run(FLAGS.config))


if __name__ == '__main__':
  jax.config.config_with_absl()
  cli.run(main)
