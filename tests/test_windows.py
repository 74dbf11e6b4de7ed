"""Split and window tests: index arithmetic, embargo, masks and T = 1 parity."""

import jax.numpy as jnp
import numpy as np
import pandas as pd
import pytest

from himari_jax.data import labels as L
from himari_jax.data import windows as W
from himari_jax.data.features import WARMUP_BARS


def _arrays(n=400, f=60, horizon=6):
  features = np.arange(n * f, dtype=np.float32).reshape(n, f)  # row t holds t * f ..
  labels = (np.arange(n) % 3).astype(np.int32)
  valid = np.arange(n) < n - horizon
  return features, labels, valid


def test_fraction_split_with_embargo():
  split = W.chronological_split(1000, val=0.2, test=0.1, embargo=6)
  assert split.train == slice(0, 694)
  assert split.val == slice(700, 894)
  assert split.test == slice(900, 1000)
  assert split.sizes() == {'train': 694, 'val': 194, 'test': 100}
  # A label at t reads bars up to t + horizon: none of a part's labels reaches the next part.
  assert split.train.stop - 1 + 6 < split.val.start
  assert split.val.stop - 1 + 6 < split.test.start


def test_split_without_test_keeps_the_last_part_whole():
  split = W.chronological_split(1000, val=0.15, embargo=24)
  assert split.train == slice(0, 826) and split.val == slice(850, 1000)
  assert split.test == slice(1000, 1000)
  no_val = W.chronological_split(1000, val=0.0, test=0.2, embargo=6)
  assert no_val.train == slice(0, 794)  # embargoed before test although val is empty
  assert no_val.val == slice(800, 800)


def test_date_split():
  index = pd.date_range('2024-01-01', periods=24 * 10, freq='h', tz='UTC', name='timestamp')
  split = W.chronological_split(index, val='2024-01-08', test='2024-01-10 00:00', embargo=6)
  assert index[split.val.start] == pd.Timestamp('2024-01-08', tz='UTC')
  assert index[split.test.start] == pd.Timestamp('2024-01-10', tz='UTC')
  assert split.train.stop == split.val.start - 6 and split.val.stop == split.test.start - 6
  with pytest.raises(ValueError, match='DatetimeIndex'):
    W.chronological_split(240, val='2024-01-08')
  with pytest.raises(ValueError, match='before the test'):
    W.chronological_split(index, val='2024-01-09', test='2024-01-05')
  with pytest.raises(ValueError, match='< 1'):
    W.chronological_split(100, val=0.6, test=0.5)


def test_windows_shapes_and_contents():
  features, labels, valid = _arrays()
  inputs, targets, masks = W.make_windows(features, labels, valid, 16, start=200, end=300)
  assert inputs.shape == (300 - 200 - 15, 16, 60)
  assert targets.shape == masks.shape == (85, 16)
  assert targets.dtype == np.int32 and masks.dtype == bool
  ends = W.window_ends(400, 16, start=200, end=300)
  assert ends[0] == 215 and ends[-1] == 299
  for w in (0, 40, 84):
    bars = np.arange(ends[w] - 15, ends[w] + 1)
    np.testing.assert_array_equal(inputs[w], features[bars])
    np.testing.assert_array_equal(targets[w], labels[bars])
    np.testing.assert_array_equal(masks[w], valid[bars])


def test_windows_stay_inside_the_range_and_after_warmup():
  for start, end, t in [(0, 400, 1), (0, 400, 64), (150, 260, 32), (300, 400, 8)]:
    ends = W.window_ends(400, t, start=start, end=end)
    assert ends.min() - t + 1 >= max(start, WARMUP_BARS)
    assert ends.max() < end
    assert np.all(np.diff(ends) == 1)
  assert W.window_ends(400, 64, start=350, end=400).size == 0
  assert W.window_ends(400, 1, start=0, end=200, warmup=0)[0] == 0


def test_context_one_equals_per_bar_rows():
  features, labels, valid = _arrays()
  inputs, targets, masks = W.make_windows(features, labels, valid, 1)
  rows = np.flatnonzero((np.arange(400) >= WARMUP_BARS) & valid)
  np.testing.assert_array_equal(inputs[:, 0], features[rows])
  np.testing.assert_array_equal(targets[:, 0], labels[rows])
  assert masks.all()


def test_windows_without_valid_labels_are_dropped_and_masks_kept():
  features, labels, valid = _arrays(horizon=24)
  ends = W.window_ends(400, 8, valid=valid)
  assert ends[-1] == (400 - 24 - 1) + 7  # the last window still holds one valid label
  _, _, masks = W.make_windows(features, labels, valid, 8)
  assert masks[-1].sum() == 1 and masks[-1, 0]
  assert masks.any(axis=1).all()


def test_stride_and_gather_with_jax_arrays():
  features, labels, valid = _arrays()
  ends = W.window_ends(400, 4, stride=10, start=200, end=260)
  np.testing.assert_array_equal(ends, [203, 213, 223, 233, 243, 253])
  batch = W.gather_windows(jnp.asarray(features), ends[:3], 4)
  assert isinstance(batch, jnp.ndarray) and batch.shape == (3, 4, 60)
  np.testing.assert_array_equal(np.asarray(batch[1, -1]), features[213])
  with pytest.raises(ValueError):
    W.window_ends(400, 0)


def test_embargoed_split_windows_never_use_the_next_parts_prices():
  n, horizon, t = 2000, L.label_horizon('threshold'), 32
  features, labels, valid = _arrays(n, horizon=horizon)
  split = W.chronological_split(n, val=0.2, test=0.1, embargo=horizon)
  parts = {}
  for name in ('train', 'val', 'test'):
    part = getattr(split, name)
    parts[name] = W.window_ends(n, t, start=part.start, end=part.stop, valid=valid)
    assert parts[name].min() - t + 1 >= part.start and parts[name].max() < part.stop
  # Every training target (and its label horizon) ends before validation inputs begin.
  assert parts['train'].max() + horizon < split.val.start
  assert parts['val'].max() + horizon < split.test.start
