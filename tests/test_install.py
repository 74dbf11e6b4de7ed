"""The package works installed (not editable) and run from another directory: it needs
nothing from the repository's configs/ or launch/ at run time."""

import os
import shutil
import subprocess
import sys
import textwrap

import pytest

SCRIPT = textwrap.dedent('''
    import os, sys
    import numpy as np
    import himari_jax
    from himari_jax import config
    from himari_jax.model import convert
    from himari_jax.data import ohlcv as data
    from himari_jax.inference import members
    from himari_jax.model import flag_trader as model
    from himari_jax.inference import predict

    site, checkpoint, pt = sys.argv[1:]
    assert himari_jax.__file__.startswith(site), himari_jax.__file__
    df = data.load_dataset('btc_usdt_1h_2025_2026').iloc[:400]
    shipped = members.load_member(checkpoint)
    logits = predict.predict_logits(shipped, df).logits
    model_config = model.ModelConfig.from_config(config.flag_trader_config('tiny').model)
    import jax
    params = model.init_params(model_config, jax.random.key(0), 1)
    convert.save_torch_checkpoint(pt, jax.tree.map(np.asarray, params), model_config)
    member = members.load_member(pt)  # normaliser fitted on the package's default data
    pt_logits = predict.predict_logits(member, df).logits
    for loaded, out in ((shipped, logits), (member, pt_logits)):
      first = predict.first_available_bar(loaded.config.train.context_length)
      assert np.isfinite(out[first:]).all() and np.isnan(out[:first]).all()
    print('scored', shipped.config.train.context_length, member.config.train.context_length)
''')


@pytest.mark.extra
@pytest.mark.slow
def test_non_editable_install_scores_a_shipped_checkpoint_and_a_pt_elsewhere(tmp_path,
                                                                            repo_root):
  pytest.importorskip('torch')
  source = tmp_path / 'source'  # a copy: building in place would write into the checkout
  shutil.copytree(repo_root / 'himari_jax', source / 'himari_jax',
                  ignore=shutil.ignore_patterns('__pycache__'))
  for name in ('pyproject.toml', 'README.md'):
    shutil.copy(repo_root / name, source / name)
  site = tmp_path / 'site'
  subprocess.run([sys.executable, '-m', 'pip', 'install', '--quiet', '--no-deps',
                  '--no-build-isolation', '--no-index', '--target', str(site), str(source)],
                 check=True, capture_output=True, timeout=120)
  elsewhere = tmp_path / 'elsewhere'
  elsewhere.mkdir()
  env = {k: v for k, v in os.environ.items() if k != 'PYTHONPATH'}
  done = subprocess.run(
      [sys.executable, '-c', SCRIPT, str(site), str(repo_root / 'checkpoints' / 'small_a'),
       str(tmp_path / 'member.pt')],
      cwd=elsewhere, env={**env, 'PYTHONPATH': str(site), 'JAX_PLATFORMS': 'cpu'},
      capture_output=True, text=True, timeout=240)
  assert done.returncode == 0, done.stderr[-3000:]
  assert done.stdout.split() == ['scored', '32', '1']  # a .pt is scored at T = 1
