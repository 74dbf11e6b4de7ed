"""TensorBoard scalars through tensorboardX, and a reader for the event files it writes.

`SummaryWriter` writes with tensorboardX's synchronous `EventsWriter` (pure Python, no
TensorFlow) behind the small interface the training loop uses: `scalars(step, {'train/loss':
0.7})`, `flush()` after each logging step so a pre-empted run keeps its curves, and `close()`.
tensorboardX's own `SummaryWriter` queues events for a background thread whose `flush()` does
not wait for the queue, so a run stopped right after a flush could lose its last scalars.

`read_scalars` reads an event file back with tensorboardX's own `Event` protocol buffer and
checks the TFRecord framing (length, masked CRC-32C of the length, payload, masked CRC-32C of
the payload), so tests and tools need no TensorBoard install.
"""

from __future__ import annotations

import os
import struct
import time
from collections.abc import Mapping

from tensorboardX.event_file_writer import EventsWriter
from tensorboardX.proto import event_pb2, summary_pb2
from tensorboardX.record_writer import masked_crc32c

_HEADER_BYTES = 12  # uint64 length + uint32 masked CRC of the length
_FOOTER_BYTES = 4  # uint32 masked CRC of the payload


class SummaryWriter:
  """Appends scalar summaries to a new event file in `logdir` (created if missing)."""

  def __init__(self, logdir: str | os.PathLike):
    os.makedirs(logdir, exist_ok=True)
    # EventsWriter names files by the second and opens them with 'wb': the process id and
    # nanoseconds keep a resumed run from truncating the file of an earlier one.
    self._events = EventsWriter(os.path.join(os.fspath(logdir), 'events'),
                                filename_suffix=f'.{os.getpid()}.{time.time_ns()}')
    self._closed = False

  def scalars(self, step: int, values: Mapping[str, float]) -> None:
    """Writes one event holding every `tag -> value` of `values` at `step`."""
    summary = summary_pb2.Summary(value=[
        summary_pb2.Summary.Value(tag=tag, simple_value=float(value))
        for tag, value in values.items()])
    self._events.write_event(event_pb2.Event(wall_time=time.time(), step=int(step),
                                             summary=summary))

  def flush(self) -> None:
    """Writes buffered events to disk (and fsyncs the file)."""
    self._events.flush()

  def close(self) -> None:
    if not self._closed:
      self._events.close()
      self._closed = True


def read_scalars(path: str | os.PathLike) -> dict[str, list[tuple[int, float]]]:
  """All scalars of an event file: `{tag: [(step, value), ...]}` in file order.

  Raises:
    ValueError: if a record is truncated or its CRC does not match (a corrupt file).
  """
  with open(path, 'rb') as f:
    data = f.read()
  out: dict[str, list[tuple[int, float]]] = {}
  pos = 0
  while pos < len(data):
    header = data[pos:pos + _HEADER_BYTES]
    if len(header) < _HEADER_BYTES:
      raise ValueError(f'{path}: truncated record header at byte {pos}')
    length, length_crc = struct.unpack('<QI', header)
    if length_crc != masked_crc32c(header[:8]):
      raise ValueError(f'{path}: CRC mismatch in the length of the record at byte {pos}')
    start = pos + _HEADER_BYTES
    payload = data[start:start + length]
    footer = data[start + length:start + length + _FOOTER_BYTES]
    if len(payload) < length or len(footer) < _FOOTER_BYTES:
      raise ValueError(f'{path}: truncated record at byte {pos}')
    if struct.unpack('<I', footer)[0] != masked_crc32c(payload):
      raise ValueError(f'{path}: CRC mismatch in the record at byte {pos}')
    pos = start + length + _FOOTER_BYTES
    event = event_pb2.Event.FromString(payload)
    for value in event.summary.value:
      if value.WhichOneof('value') == 'simple_value':
        out.setdefault(value.tag, []).append((int(event.step), float(value.simple_value)))
  return out
