"""TensorBoard scalars written through tensorboardX read back, by our reader and TensorBoard's."""

import os

import pytest

from himari_jax.training import tb_events


def _write_run(logdir):
  writer = tb_events.SummaryWriter(logdir)
  writer.scalars(10, {'train/loss': 0.75, 'train/grad_norm': 2.5})
  writer.flush()
  writer.scalars(20, {'train/loss': 0.5})
  writer.scalars(20, {'val/val_accuracy': 0.375})
  writer.close()
  (name,) = os.listdir(logdir)
  assert name.startswith('events.out.tfevents.')
  return os.path.join(logdir, name)


def test_scalars_read_back_in_order(tmp_path):
  path = _write_run(tmp_path / 'tb')
  assert tb_events.read_scalars(path) == {
      'train/loss': [(10, 0.75), (20, 0.5)], 'train/grad_norm': [(10, 2.5)],
      'val/val_accuracy': [(20, 0.375)]}


def test_flush_makes_scalars_visible_before_close(tmp_path):
  writer = tb_events.SummaryWriter(tmp_path)
  writer.scalars(1, {'train/loss': 1.0})
  writer.flush()
  (name,) = os.listdir(tmp_path)
  assert tb_events.read_scalars(tmp_path / name) == {'train/loss': [(1, 1.0)]}
  writer.close()


def test_corrupt_file_is_reported(tmp_path):
  path = _write_run(tmp_path / 'tb')
  payload = bytearray(open(path, 'rb').read())
  payload[-6] ^= 0xFF  # a byte inside the last record's payload
  bad = tmp_path / 'bad.tfevents'
  bad.write_bytes(bytes(payload))
  with pytest.raises(ValueError, match='CRC mismatch'):
    tb_events.read_scalars(bad)
  bad.write_bytes(bytes(payload[:-3]))
  with pytest.raises(ValueError, match='truncated'):
    tb_events.read_scalars(bad)


@pytest.mark.extra
def test_tensorboard_own_loader_reads_the_file(tmp_path):
  loader = pytest.importorskip('tensorboard.backend.event_processing.event_file_loader')
  path = _write_run(tmp_path / 'tb')
  seen = {}
  for event in loader.EventFileLoader(path).Load():
    for value in event.summary.value:
      seen.setdefault(value.tag, []).append(event.step)
  assert seen == {'train/loss': [10, 20], 'train/grad_norm': [10], 'val/val_accuracy': [20]}
