"""Training step before a run: peak memory, FLOPs, step time and MFU per variant and dtype.

  python benchmarks/bench_train.py                              # seed and seed_long, fp32/bf16
  python benchmarks/bench_train.py --variants=seed_long --dtypes=bfloat16 --attention_dropout=0
  python benchmarks/bench_train.py --tiny                       # the same rows at CPU sizes

Variants (`profiling.TRAIN_VARIANTS`): `seed` is the seed model at T = 1, batch 64;
`seed_long` the same sizes at T = 256, batch 64 with remat on. For each variant, dtype and
attention dropout (0.1: explicit softmax with dropout, the seed's path; 0: fused
`jax.nn.dot_product_attention`) the real train step (`train.make_train_step`, sharded over
all devices as in training) is compiled, XLA's memory and cost analyses are read, and
`--steps` steps are timed (best of `--repeats`). MFU needs a known GPU (`profiling.
DEVICE_PEAK_TFLOPS`) and "fits" a device that reports its memory; on a CPU both are n/a.
At T = 1 attention is a copy of the values, so only one attention setting is run.
"""

import dataclasses

import jax
from absl import app, flags

from himari_jax.training import profiling

FLAGS = flags.FLAGS
flags.DEFINE_list('variants', list(profiling.TRAIN_VARIANTS), 'Variants to profile.')
flags.DEFINE_list('dtypes', ['float32', 'bfloat16'], 'Compute dtypes.')
flags.DEFINE_list('attention_dropout', ['0.1', '0.0'],
                  'Attention dropout values; 0 takes the fused attention path.')
flags.DEFINE_integer('steps', 10, 'Timed steps per measurement; 0 compiles only.')
flags.DEFINE_integer('repeats', 2, 'Measurements per setting; the fastest is reported.')
flags.DEFINE_integer('batch_size', 0, 'Global batch override; 0 = the variant\'s own.')
flags.DEFINE_bool('tiny', False, 'Tiny model and shapes (a CPU check of this script).')


def main(argv):
  del argv
  device = jax.devices()[0]
  print(f'JAX {jax.__version__}, {jax.device_count()} x {device.device_kind} '
        f'({device.platform})')
  print(f'{"variant":9} {"dtype":8} {"attn":5} {"batch":>5} {"T":>3} {"remat":5} '
        f'{"peak GiB":>8} {"act GiB":>7} {"GFLOP":>8} {"ms/step":>8} {"TFLOP/s":>7} '
        f'{"MFU":>6} {"fits":>4}')
  for variant in FLAGS.variants:
    model_config, batch, length, remat = profiling.variant_shapes(variant, FLAGS.tiny)
    batch = FLAGS.batch_size or batch
    drops = FLAGS.attention_dropout[:1] if length == 1 else FLAGS.attention_dropout
    for dtype in FLAGS.dtypes:
      for drop in drops:
        config = dataclasses.replace(model_config, attention_dropout=float(drop))
        p = profiling.profile_train_step(config, batch, length, dtype=dtype, remat=remat,
                                         steps=FLAGS.steps, repeats=FLAGS.repeats)
        attn = 'fused' if float(drop) == 0 and length > 1 else 'soft'
        ms = f'{1e3 * p.step_s:8.2f}' if p.step_s else '     n/a'
        tflops = f'{p.achieved_tflops:7.3f}' if p.achieved_tflops else '    n/a'
        mfu = f'{100 * p.mfu:5.1f}%' if p.mfu is not None else '   n/a'
        fits = {None: 'n/a', True: 'yes', False: 'NO'}[p.fits]
        print(f'{variant:9} {dtype:8} {attn:5} {batch:5d} {length:3d} {str(remat):5} '
              f'{p.peak_memory_bytes / 2**30:8.3f} {p.temp_bytes / 2**30:7.3f} '
              f'{p.flops / 1e9:8.2f} {ms} {tflops} {mfu} {fits:>4}', flush=True)


if __name__ == '__main__':
  app.run(main)
