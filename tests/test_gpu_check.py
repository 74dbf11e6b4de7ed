"""benchmarks/gpu_check.sh in its CPU mode (--tiny): every section runs and reports."""

import json
import os
import pathlib
import subprocess
import sys

import pytest

REPO = pathlib.Path(__file__).resolve().parent.parent


@pytest.mark.slow
def test_gpu_check_tiny_mode_writes_a_complete_report(tmp_path):
  env = {**os.environ, 'PYTHON': sys.executable, 'JAX_PLATFORMS': 'cpu'}
  done = subprocess.run(['bash', str(REPO / 'benchmarks' / 'gpu_check.sh'), str(tmp_path),
                         '--tiny'], env=env, capture_output=True, text=True, timeout=600,
                        check=False)
  assert done.returncode == 0, done.stderr[-3000:]
  report = json.loads((tmp_path / 'gpu_check.json').read_text())
  assert report['mode'] == 'tiny'
  assert set(report['seconds']) == {'device', 'parity', 'train_step', 'latency', 'sweep'}
  assert report['device']['platform'] == 'cpu'
  assert report['parity']['ok'] and report['parity']['max_abs_diff'] == 0.0  # CPU vs CPU
  rows = {(r['variant'], r['dtype'], r['attention']) for r in report['train_step']}
  assert rows == {('seed', 'float32', 'softmax'), ('seed', 'bfloat16', 'softmax'),
                  *(('seed_long', d, a) for d in ('float32', 'bfloat16')
                     for a in ('softmax', 'fused'))}
  for row in report['train_step']:
    assert row['flops'] > 0 and row['peak_memory_bytes'] > 0 and row['step_s'] > 0
    assert row['mfu'] is None  # no peak table entry for a CPU
  assert report['latency']['median_ms'] > 0
  sweep = report['sweep']
  assert (sweep['settings'], sweep['bars']) == (64, 2000)
  assert sweep['finite_sharpe_share'] == 1.0 and sweep['setting_bars_per_s'] > 0


def test_gpu_check_without_an_output_folder_explains_its_usage():
  done = subprocess.run(['bash', str(REPO / 'benchmarks' / 'gpu_check.sh')],
                        capture_output=True, text=True, timeout=30, check=False)
  assert done.returncode == 2 and 'usage:' in done.stderr
