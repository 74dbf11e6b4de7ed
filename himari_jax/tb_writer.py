"""A dependency-free TensorBoard scalar writer (and reader), so runs always have TB logs.

TensorBoard reads `events.out.tfevents.*` files: TFRecords (length, masked CRC-32C of the
length, payload, masked CRC-32C of the payload) whose payloads are `Event` protocol buffers.
Scalars need only four proto fields, encoded here by hand, so neither TensorFlow nor
tensorboardX is required:

  Event   { double wall_time = 1; int64 step = 2; string file_version = 3; Summary summary = 5; }
  Summary { repeated Value value = 1; }
  Value   { string tag = 1; float simple_value = 2; }
"""

from __future__ import annotations

import os
import socket
import struct
import time
from collections.abc import Mapping

_CRC32C_POLY = 0x82F63B78  # Castagnoli, reflected


def _crc32c_table() -> list[int]:
  table = []
  for byte in range(256):
    crc = byte
    for _ in range(8):
      crc = (crc >> 1) ^ _CRC32C_POLY if crc & 1 else crc >> 1
    table.append(crc)
  return table


_TABLE = _crc32c_table()


def crc32c(data: bytes) -> int:
  """CRC-32C (Castagnoli) of `data`, as TFRecord framing uses."""
  crc = 0xFFFFFFFF
  for byte in data:
    crc = _TABLE[(crc ^ byte) & 0xFF] ^ (crc >> 8)
  return crc ^ 0xFFFFFFFF


def _masked_crc(data: bytes) -> int:
  crc = crc32c(data)
  return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


def _varint(value: int) -> bytes:
  value &= (1 << 64) - 1  # int64 two's complement, as protobuf encodes negatives
  out = bytearray()
  while True:
    bits = value & 0x7F
    value >>= 7
    if value:
      out.append(bits | 0x80)
    else:
      out.append(bits)
      return bytes(out)


def _length_delimited(field: int, payload: bytes) -> bytes:
  return _varint(field << 3 | 2) + _varint(len(payload)) + payload


def _event(step: int, *, file_version: str | None = None,
           scalars: Mapping[str, float] | None = None) -> bytes:
  out = _varint(1 << 3 | 1) + struct.pack('<d', time.time()) + _varint(2 << 3) + _varint(step)
  if file_version is not None:
    out += _length_delimited(3, file_version.encode())
  if scalars:
    values = b''.join(
        _length_delimited(1, _length_delimited(1, tag.encode())
                          + _varint(2 << 3 | 5) + struct.pack('<f', float(value)))
        for tag, value in scalars.items())
    out += _length_delimited(5, values)
  return out


def _record(payload: bytes) -> bytes:
  length = struct.pack('<Q', len(payload))
  return (length + struct.pack('<I', _masked_crc(length)) + payload
          + struct.pack('<I', _masked_crc(payload)))


class SummaryWriter:
  """Appends scalar summaries to a new event file in `logdir` (created if missing).

  Usage: `writer.scalars(step, {'train/loss': 0.7})`; `flush()` after each logging step so a
  pre-empted run keeps its curves; `close()` at the end.
  """

  def __init__(self, logdir: str | os.PathLike):
    os.makedirs(logdir, exist_ok=True)
    name = f'events.out.tfevents.{time.time():.6f}.{socket.gethostname()}.{os.getpid()}'
    self.path = os.path.join(logdir, name)
    self._file = open(self.path, 'ab')  # open for the writer's lifetime
    self._file.write(_record(_event(0, file_version='brain.Event:2')))
    self.flush()

  def scalars(self, step: int, values: Mapping[str, float]) -> None:
    """Writes one event holding every `tag -> value` of `values` at `step`."""
    self._file.write(_record(_event(int(step), scalars=values)))

  def flush(self) -> None:
    self._file.flush()

  def close(self) -> None:
    if not self._file.closed:
      self._file.close()


def _read_varint(buf: bytes, pos: int) -> tuple[int, int]:
  value = shift = 0
  while True:
    byte = buf[pos]
    pos += 1
    value |= (byte & 0x7F) << shift
    shift += 7
    if not byte & 0x80:
      return value, pos


def _fields(buf: bytes):
  """Yields (field number, wire type, value) of a protobuf message."""
  pos = 0
  while pos < len(buf):
    key, pos = _read_varint(buf, pos)
    field, wire = key >> 3, key & 7
    if wire == 0:
      value, pos = _read_varint(buf, pos)
    elif wire == 1:
      value, pos = buf[pos:pos + 8], pos + 8
    elif wire == 2:
      size, pos = _read_varint(buf, pos)
      value, pos = buf[pos:pos + size], pos + size
    elif wire == 5:
      value, pos = buf[pos:pos + 4], pos + 4
    else:
      raise ValueError(f'unsupported protobuf wire type {wire}')
    yield field, wire, value


def read_scalars(path: str | os.PathLike) -> dict[str, list[tuple[int, float]]]:
  """All scalars of an event file: `{tag: [(step, value), ...]}` in file order.

  Raises:
    ValueError: if a record's CRC does not match (a corrupt or truncated file).
  """
  with open(path, 'rb') as f:
    data = f.read()
  out: dict[str, list[tuple[int, float]]] = {}
  pos = 0
  while pos < len(data):
    length_bytes = data[pos:pos + 8]
    (length,) = struct.unpack('<Q', length_bytes)
    (length_crc,) = struct.unpack('<I', data[pos + 8:pos + 12])
    payload = data[pos + 12:pos + 12 + length]
    (payload_crc,) = struct.unpack('<I', data[pos + 12 + length:pos + 16 + length])
    if length_crc != _masked_crc(length_bytes) or payload_crc != _masked_crc(payload):
      raise ValueError(f'{path}: CRC mismatch in the record at byte {pos}')
    pos += 16 + length
    step, summary = 0, None
    for field, _, value in _fields(payload):
      if field == 2:
        step = value
      elif field == 5:
        summary = value
    if summary is None:
      continue
    for _, _, value_msg in _fields(summary):
      tag, scalar = '', None
      for field, _, value in _fields(value_msg):
        if field == 1:
          tag = value.decode()
        elif field == 2:
          (scalar,) = struct.unpack('<f', value)
      if scalar is not None:
        out.setdefault(tag, []).append((step, scalar))
  return out
