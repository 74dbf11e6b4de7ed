"""Trains FLAG-TRADER: `python launch/train.py --config=configs/flag_trader.py:small
--workdir=runs/small`. Re-running with the same workdir resumes from its latest checkpoint.

Any config field can be overridden, e.g. `--config.train.batch_size=32`. Multi-host runs add
`--jax_distributed` (coordinator, process count and id from the cluster environment, or
`--coordinator_address`, `--num_processes` and `--process_id`).

SIGTERM / SIGINT (a spot machine being stopped, Ctrl-C) finish the current step, save a
checkpoint and exit with status 0 after the line "pre-empted by SIGTERM: stopped at step
...; rerun the same command to resume"; a second signal stops at once.
"""


import jax
from absl import app, flags, logging
from ml_collections import config_flags

from himari_jax import checkpoint, train

FLAGS = flags.FLAGS

flags.DEFINE_string('workdir', None, 'Directory for checkpoints, metrics and TensorBoard logs.')
flags.DEFINE_bool('jax_distributed', False, 'Call jax.distributed.initialize() (multi-host).')
flags.DEFINE_string('coordinator_address', None, 'host:port of process 0 (multi-host).')
flags.DEFINE_integer('num_processes', None, 'Number of processes (multi-host).')
flags.DEFINE_integer('process_id', None, 'Index of this process (multi-host).')
config_flags.DEFINE_config_file(
    'config', None, 'Training configuration, e.g. configs/flag_trader.py:small.',
    lock_config=True)
flags.mark_flags_as_required(['config', 'workdir'])


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
  metrics = train.train_and_evaluate(FLAGS.config, FLAGS.workdir)
  if not metrics.get('preempted'):
    logging.info('final metrics: %s', metrics)


if __name__ == '__main__':
  jax.config.config_with_absl()
  app.run(main)
