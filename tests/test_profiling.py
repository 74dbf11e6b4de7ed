"""profiling: compiled memory / FLOPs / timing of the real train step, and the fits verdict."""

import types

import pytest

from himari_jax.model import flag_trader as model
from himari_jax.training import profiling

TINY = model.ModelConfig(d_model=32, num_layers=2, num_heads=4, dim_feedforward=64,
                         max_length=32, lora_rank=4)


@pytest.mark.slow
def test_train_step_profile_reports_memory_flops_and_time():
  profile = profiling.profile_train_step(TINY, batch_size=8, context_length=4, steps=2,
                                         repeats=1)
  assert profile.flops > 0 and profile.peak_memory_bytes >= profile.argument_bytes > 0
  assert profile.step_s > 0 and profile.achieved_tflops > 0
  assert profile.mfu is None and profile.fits is None  # CPU: no peak, no memory limit
  assert 'GFLOP/step' in profile.summary()


@pytest.mark.slow
def test_remat_recomputes_the_forward_pass():
  # CPU buffer assignment keeps its temporaries either way; the extra FLOPs show the blocks'
  # forward pass is rerun in the backward pass (the memory saving is measured on a GPU).
  plain = profiling.profile_train_step(TINY, batch_size=8, context_length=8, remat=False)
  remat = profiling.profile_train_step(TINY, batch_size=8, context_length=8, remat=True)
  assert remat.flops > plain.flops
  assert remat.step_s is None  # steps=0 compiles only


@pytest.mark.slow
def test_fits_verdict_against_a_given_memory():
  small = profiling.profile_train_step(TINY, batch_size=8, context_length=4, device_memory=1)
  assert small.fits is False and 'DOES NOT FIT' in small.summary()
  big = profiling.profile_train_step(TINY, batch_size=8, context_length=4,
                                     device_memory=2 ** 40)
  assert big.fits is True


def test_batch_not_divisible_by_the_mesh_is_rejected():
  mesh = types.SimpleNamespace(size=3)
  with pytest.raises(ValueError, match='batch_size=8 is not divisible by the 3 devices'):
    profiling.profile_train_step(TINY, batch_size=8, context_length=4, mesh=mesh)


@pytest.mark.parametrize('kind, platform, dtype, peak', [
    ('NVIDIA H100 80GB HBM3', 'gpu', 'bfloat16', 989.4),
    ('NVIDIA H200', 'gpu', 'float32', 494.7),
    ('NVIDIA GeForce RTX 3090', 'gpu', 'bfloat16', 71.0),
    ('NVIDIA GeForce RTX 4090', 'gpu', 'float32', 82.6),
    ('Tesla T4', 'gpu', 'bfloat16', None),
    ('cpu', 'cpu', 'float32', None)])
def test_device_peak_table(kind, platform, dtype, peak):
  device = types.SimpleNamespace(device_kind=kind, platform=platform)
  assert profiling.device_peak_tflops(device, dtype) == peak
