"""Entry points fail with one `error:` line; `--verbose` shows the traceback instead.

The launchers are run as a user runs them (one subprocess each, on a bad input that fails
before any work); what `--verbose` changes is the shared helper's, tested in-process.
"""

import importlib.util
import os
import subprocess
import sys

import pandas as pd
import pytest
from absl import flags
from absl.testing import flagsaver
from ml_collections import config_flags

from himari_jax import cli, extras
from himari_jax.data import ohlcv as data

# A config flag without a default path: overrides are applied while flags are parsed.
config_flags.DEFINE_config_file('test_cli_config', None, 'A config for the tests below.')

_NEEDS_TORCH = [pytest.mark.extra, pytest.mark.skipif(
    importlib.util.find_spec('torch') is None, reason='reading a .pt needs the torch extra')]

# `python -c _NOT_INSTALLED <modules> <script> <args>`: runs the script as `python <script>
# <args>` would, with <modules> (comma-separated) failing to import as where they are not
# installed, whether they are installed here or not.
_NOT_INSTALLED = """
import importlib.abc, os, runpy, sys
missing = set(sys.argv[1].split(','))
class NotInstalled(importlib.abc.MetaPathFinder):
  def find_spec(self, name, path=None, target=None):
    if name.partition('.')[0] in missing:
      raise ModuleNotFoundError(f'No module named {name!r}', name=name.partition('.')[0])
sys.meta_path.insert(0, NotInstalled())
sys.argv = sys.argv[2:]
sys.path[0] = os.path.dirname(os.path.abspath(sys.argv[0]))
runpy.run_path(sys.argv[0], run_name='__main__')
"""


def run_launcher(repo_root, script, *args, not_installed=()):
  env = {**os.environ, 'JAX_PLATFORMS': 'cpu', 'PYTHONPATH': str(repo_root)}
  python = [sys.executable]
  if not_installed:
    python += ['-c', _NOT_INSTALLED, ','.join(not_installed)]
  return subprocess.run([*python, str(repo_root / 'launch' / script), *args],
                        capture_output=True, text=True, cwd=repo_root, env=env, timeout=300)


def error_lines(stderr):
  return [line for line in stderr.splitlines() if line.startswith('error:')]


@pytest.mark.parametrize('script, args, message', [
    ('diagnose.py', ['--checkpoints=checkpoints/small_a', '--dataset={tmp}/missing.csv'],
     'missing.csv: no such file'),
    pytest.param('convert_checkpoint.py', ['--input={tmp}/corrupt.pt', '--output={tmp}/run'],
                 'corrupt.pt', marks=_NEEDS_TORCH),
    ('download_data.py', ['--start=2024-13', '--end=2024-12', '--output={tmp}/out.csv'],
     "start='2024-13'"),
    ('pretrain_compare.py', ['--workdir={tmp}/runs', '--arms=finetune,no_such_arm'],
     "arms ['no_such_arm']"),
    ('power.py', ['--market=fixed', '--test_start=2030-01-01', '--test_end=2030-02-01',
                  '--outdir={tmp}/p'],
     'need 2160 bars before the test window and 100 in it'),
    ('trade_signal.py', ['--checkpoints=checkpoints/small_a', '--data={tmp}/missing.csv'],
     'missing.csv: no such file'),
    # The data is checked before any model is loaded (a missing one included).
    ('trade_signal.py', ['--checkpoints=no/such/run', '--data={tmp}/bad.csv'],
     'bad.csv row 3, column high: high 100.0 < close 101.0'),
    ('trade_signal.py', ['--data={tmp}/bad.csv', '--interval=abc'],
     '--interval=abc: not a bar length'),
    ('trade_signal.py', ['--data={tmp}/bad.csv', '--interval=0s'],
     '--interval=0s: a bar length must be positive'),
    # Implausible data: another bar interval than the settings say, a 1000x price jump.
    ('backtest.py', ['--checkpoints=checkpoints/small_a', '--config.dataset={tmp}/5min.csv',
                     '--outdir={tmp}/run'],
     '5min.csv: the bars are 5min apart but --config.periods_per_year=8760 means 1h bars'),
    ('backtest.py', ['--checkpoints=checkpoints/small_a', '--config.dataset={tmp}/jump.csv',
                     '--outdir={tmp}/run', '--config.refuse_large_moves=True'],
     'jump.csv: 1 bar(s) move more than 50% from the previous close'),
    ('train.py', ['--config=configs/flag_trader.py:tiny', '--workdir={tmp}/run',
                  '--config.data.train={tmp}/5min.csv'],
     '5min.csv: the bars are 5min apart but training'),
    ('trade_signal.py', ['--checkpoints=checkpoints/small_a', '--data={tmp}/1h.csv',
                         '--interval=15min'],
     '1h.csv: the bars are 1h apart but --interval=15min means 15min bars'),
    # Numbers out of range: one line naming the flag, before anything runs.
    ('backtest.py', ['--config.periods_per_year=0', '--outdir={tmp}/run'],
     '--config.periods_per_year=0.0: must be > 0'),
    ('backtest.py', ['--config.max_position_pct=5', '--outdir={tmp}/run'],
     '--config.max_position_pct=5.0: must be in (0, 1]'),
    ('train.py', ['--config=configs/flag_trader.py:tiny', '--workdir={tmp}/run',
                  '--config.train.warmup_steps=-1'],
     '--config.train.warmup_steps=-1: must be >= 0'),
    ('trade_signal.py', ['--data={tmp}/1h.csv', '--config.commission=-0.1'],
     '--config.commission=-0.1: must be in [0, 1)'),
    # A config flag with a default path applies its overrides as the script is imported.
    ('walk_forward.py', ['--config.no_such_field=1'],
     "--config.no_such_field: the config has no field 'no_such_field'"),
])
def test_a_bad_input_is_one_error_line(repo_root, tmp_path, script, args, message):
  (tmp_path / 'corrupt.pt').write_bytes(b'PK\x03\x04 not a checkpoint')
  bars = data.builtin_dataset('btc_usdt_1h_2025_2026').iloc[:400].copy()
  bars.to_csv(tmp_path / '1h.csv')
  bars.index = pd.date_range(bars.index[0], periods=len(bars), freq='5min', name='timestamp')
  bars.to_csv(tmp_path / '5min.csv')
  bars = data.builtin_dataset('btc_usdt_1h_2025_2026').iloc[:400].copy()
  bars.iloc[300:, :4] *= 1000
  bars.to_csv(tmp_path / 'jump.csv')
  (tmp_path / 'bad.csv').write_text('timestamp,open,high,low,close,volume\n'
                                    '2025-01-01 00:00,100,101,99,100,5\n'
                                    '2025-01-01 01:00,100,100,99,101,5\n')
  done = run_launcher(repo_root, script, *(a.format(tmp=tmp_path) for a in args))
  assert done.returncode == 1, done.stderr[-3000:]
  (line,) = error_lines(done.stderr)
  assert message in line, line
  assert 'Traceback' not in done.stderr
  assert not (tmp_path / 'run').exists() and not (tmp_path / 'out.csv').exists()


@pytest.mark.parametrize('script, args, missing, extra, names', [
    ('convert_checkpoint.py', ['--input={tmp}/corrupt.pt', '--output={tmp}/run'], 'torch',
     'torch', 'reading the PyTorch file {tmp}/corrupt.pt'),
    ('convert_checkpoint.py', ['--reverse', '--input=checkpoints/small_a',
                               '--output={tmp}/out.pt'], 'torch', 'torch', 'writing'),
    ('backtest.py', ['--checkpoints={tmp}/corrupt.pt', '--outdir={tmp}/run'], 'torch', 'torch',
     'corrupt.pt'),
    ('ensemble_backtest.py', ['--checkpoints=checkpoints/small_a,{tmp}/corrupt.pt',
                              '--outdir={tmp}/run'], 'torch', 'torch', 'corrupt.pt'),
    ('diagnose.py', ['--checkpoints={tmp}/corrupt.pt', '--output={tmp}/run'], 'torch', 'torch',
     'corrupt.pt'),
    ('trade_signal.py', ['--checkpoints={tmp}/corrupt.pt',
                         '--data=himari_jax/data/datasets/btc_usdt_1h_binance_2025_2026.csv.gz'],
     'torch', 'torch', 'corrupt.pt'),
    ('train.py', ['--config=configs/flag_trader.py:tiny', '--workdir={tmp}/run',
                  '--config.train.init_from={tmp}/corrupt.pt'], 'torch', 'torch', 'corrupt.pt'),
    ('benchmark.py', ['--config=configs/benchmark.py:cpu', '--config.models=lightgbm',
                      '--workdir={tmp}/run'], 'lightgbm', 'baselines', 'lightgbm'),
    ('benchmark.py', ['--config=configs/benchmark.py:cpu', '--ray_address=auto',
                      '--workdir={tmp}/run'], 'ray', 'ray', '--ray_address=auto'),
    ('walk_forward.py', ['--ray_address=auto', '--workdir={tmp}/run'], 'ray', 'ray',
     '--ray_address=auto'),
    ('placebo.py', ['--ray_address=auto', '--workdir={tmp}/run'], 'ray', 'ray',
     '--ray_address=auto'),
])
def test_a_missing_extra_is_one_error_line_naming_it(repo_root, tmp_path, script, args, missing,
                                                    extra, names):
  (tmp_path / 'corrupt.pt').write_bytes(b'PK\x03\x04 not a checkpoint')
  done = run_launcher(repo_root, script, *(a.format(tmp=tmp_path) for a in args),
                      not_installed=[missing])
  assert done.returncode == 1, done.stderr[-3000:]
  (line,) = error_lines(done.stderr)
  assert f'{missing} is not installed (pip install "himari-jax[{extra}]")' in line, line
  assert names.format(tmp=tmp_path) in line, line
  assert 'Traceback' not in done.stderr
  assert not (tmp_path / 'out.pt').exists()


def test_a_missing_extra_is_one_line_and_verbose_reraises(capsys):
  def main(argv):
    del argv
    extras.import_extra('himari_jax_no_such_module.sub', 'plot', 'the test plots')

  with flagsaver.flagsaver(), pytest.raises(SystemExit) as exited:
    cli.run(main, argv=['prog'])
  assert exited.value.code == 1
  assert error_lines(capsys.readouterr().err) == [
      'error: the test plots: himari_jax_no_such_module is not installed '
      '(pip install "himari-jax[plot]")']
  with flagsaver.flagsaver(), pytest.raises(extras.MissingExtraError):
    cli.run(main, argv=['prog', '--verbose'])


def test_an_extra_that_fails_to_import_says_why(tmp_path, monkeypatch):
  (tmp_path / 'himari_jax_broken_extra.py').write_text('import himari_jax_no_such_dependency\n')
  monkeypatch.syspath_prepend(tmp_path)
  with pytest.raises(extras.MissingExtraError) as raised:
    extras.import_extra('himari_jax_broken_extra', 'plot', 'the test plots')
  assert str(raised.value) == (
      "the test plots: himari_jax_broken_extra failed to import (No module named "
      "'himari_jax_no_such_dependency') (pip install \"himari-jax[plot]\")")


def test_plots_without_matplotlib_are_skipped_with_a_warning_naming_the_extra(monkeypatch):
  warnings = []
  monkeypatch.setitem(sys.modules, 'matplotlib', None)
  assert extras.pyplot('the test plots', warn=warnings.append) is None
  assert warnings == ['skipping the test plots: matplotlib is not installed '
                      '(pip install "himari-jax[plot]")']


def test_a_damaged_checkpoint_is_one_error_line_naming_step_and_file(repo_root, tmp_path):
  import shutil

  shutil.copytree(repo_root / 'checkpoints' / 'small_a', tmp_path / 'small_a')
  data_file = max((p for p in (tmp_path / 'small_a' / 'checkpoints' / '1200' / 'state').rglob('*')
                   if p.is_file()), key=lambda p: p.stat().st_size)
  payload = bytearray(data_file.read_bytes())
  payload[len(payload) // 2] ^= 0x01  # one flipped bit
  data_file.write_bytes(bytes(payload))
  done = run_launcher(repo_root, 'backtest.py', f'--checkpoints={tmp_path / "small_a"}',
                      f'--outdir={tmp_path / "out"}')
  assert done.returncode == 1, done.stderr[-3000:]
  (line,) = error_lines(done.stderr)
  assert line.startswith(f'error: checkpoint step 1200 is damaged: {data_file} does not match')
  assert 'Traceback' not in done.stderr and not (tmp_path / 'out').exists()


def _main_raising(error):
  def main(argv):
    del argv
    raise error
  return main


@pytest.mark.parametrize('error', [
    data.DataError('prices.csv row 7: close is not a number'),
    FileNotFoundError(2, 'No such file or directory', 'prices.csv'),
])
def test_user_errors_are_one_line_and_verbose_reraises(error, capsys):
  with flagsaver.flagsaver(), pytest.raises(SystemExit) as exited:
    cli.run(_main_raising(error), argv=['prog'])
  assert exited.value.code == 1
  stderr = capsys.readouterr().err
  assert error_lines(stderr) == [cli.error_line(error)] and 'prices.csv' in stderr
  assert 'Traceback' not in stderr
  with flagsaver.flagsaver(), pytest.raises(type(error)):
    cli.run(_main_raising(error), argv=['prog', '--verbose'])


def test_a_bug_keeps_its_traceback():
  with flagsaver.flagsaver(), pytest.raises(TypeError):
    cli.run(_main_raising(TypeError('a bug, not a bad input')), argv=['prog'])


@pytest.mark.parametrize('argv, message', [
    (['--test_cli_config=configs/flag_trader.py:no_such_variant'],
     "unknown config variant 'no_such_variant'"),
    (['--no_such_flag=1'], 'no_such_flag'),
])
def test_bad_flags_are_one_line_and_verbose_reraises(repo_root, monkeypatch, capsys, argv,
                                                     message):
  monkeypatch.chdir(repo_root)
  with flagsaver.flagsaver(), pytest.raises(SystemExit) as exited:
    cli.parse_flags(['prog', *argv])
  assert exited.value.code == 1
  (line,) = error_lines(capsys.readouterr().err)
  assert message in line, line
  with flagsaver.flagsaver(), pytest.raises(flags.Error):
    cli.parse_flags(['prog', *argv, '--verbose'])


def test_an_override_of_no_config_field_names_it(repo_root, monkeypatch, capsys):
  monkeypatch.chdir(repo_root)
  argv = ['prog', '--test_cli_config=configs/flag_trader.py:tiny',
          '--test_cli_config.train.no_such_field=1']
  monkeypatch.setattr(sys, 'argv', argv)  # where ml_collections looks for override flags
  with flagsaver.flagsaver(), pytest.raises(SystemExit):
    cli.parse_flags(argv)
  assert error_lines(capsys.readouterr().err) == [
      "error: --test_cli_config.train.no_such_field: the config has no field 'no_such_field'"]


def test_an_override_of_no_field_of_a_default_config_names_it(repo_root, monkeypatch, capsys):
  default = str(repo_root / 'configs' / 'flag_trader.py') + ':tiny'
  argv = ['prog', '--cfg.train.no_such_field=1']
  monkeypatch.setattr(sys, 'argv', argv)
  with pytest.raises(SystemExit) as exited:
    cli.define_config_file('cfg', default, 'help', flag_values=flags.FlagValues())
  assert exited.value.code == 1
  assert error_lines(capsys.readouterr().err) == [
      "error: --cfg.train.no_such_field: the config has no field 'no_such_field'"]
  monkeypatch.setattr(sys, 'argv', [*argv, '--verbose'])
  with pytest.raises((AttributeError, KeyError)):
    cli.define_config_file('cfg', default, 'help', flag_values=flags.FlagValues())
  # A known field is applied, as by config_flags itself.
  monkeypatch.setattr(sys, 'argv', ['prog', '--cfg.train.batch_size=3'])
  values = flags.FlagValues()
  cli.define_config_file('cfg', default, 'help', flag_values=values)
  values(['prog', '--cfg.train.batch_size=3'])
  assert values.cfg.train.batch_size == 3


def test_error_line_is_one_line():
  assert cli.error_line(ValueError('first\nsecond')) == 'error: first second'
  assert cli.error_line(IsADirectoryError(21, 'Is a directory', 'runs')) == (
      'error: runs: Is a directory')
