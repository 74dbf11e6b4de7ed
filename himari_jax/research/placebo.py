"""Placebo runs: the null distribution of a pipeline's results on markets with nothing to find.

A placebo run is the whole pipeline (same config, model, calibration, policy, costs) applied to
a synthetic market (`synthetic.make_market`) whose future cannot be read from its past. The
results of N such runs are the distribution a real result is read against: "the same pipeline
on markets with nothing to find does this well or better in k of N runs".

* `run_placebos(run_one, num_runs, workdir)` calls `run_one(market_seed) -> dict of metrics`
  per run, stores each result in `workdir/placebo/run_XXX.json` and skips stored runs when
  called again (resumable).
* `summarize_placebos(real, placebos)` gives, per metric, the null's mean, std and quantiles and the
  real result's empirical p-value `(1 + #{null >= real}) / (1 + N)` (the +1 counts the real
  result as one draw of the null, so p is never 0 and is exact under the null: Phipson &
  Smyth 2010). Metrics are read from the dicts by name, with dots for nested dicts
  (`'significance.test_psr.psr'`); a run where a metric is undefined (None, NaN: the
  Sharpe ratio of a run that never traded) is left out of that metric's null and counted.
* `markdown_table`, `plot_histograms` (matplotlib optional) and `html_section` show a summary;
  `write_outputs` writes all of them.

Every p-value is upper-tailed: "is the real result this high by luck". For turnover it reads
as the share of placebo runs trading at least as much, a description rather than a test.
"""

from __future__ import annotations

import base64
import dataclasses
import html
import json
import math
import os
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from himari_jax import extras, json_types
from himari_jax.research import dispatch

# The metrics of the null, as `run_one` should name them, and how they are shown.
DEFAULT_METRICS = ('net_sharpe', 'gross_sharpe', 'total_return', 'test_psr', 'ic',
                   'turnover')
_LABELS = {'net_sharpe': 'net Sharpe', 'gross_sharpe': 'gross Sharpe (zero cost)',
           'total_return': 'total return', 'test_psr': 'test PSR(0), HAC', 'ic': 'IC',
           'turnover': 'turnover'}
DEFAULT_QUANTILES = (0.05, 0.25, 0.5, 0.75, 0.95)
RUNS_DIR = 'placebo'
SUMMARY_JSON = 'placebo_summary.json'
TABLE_MD = 'placebo_table.md'
HISTOGRAM_PNG = 'placebo_hist.png'
SECTION_HTML = 'placebo_section.html'


# ---------------------------------------------------------------------------------- statistics


def metric_value(result: Mapping[str, Any], name: str) -> float:
  """`result[name]` as a float, following dots into nested dicts; NaN when absent or undefined."""
  value: Any = result
  for key in name.split('.'):
    if not isinstance(value, Mapping) or key not in value:
      return math.nan
    value = value[key]
  if value is None or isinstance(value, (bool, str)):
    return math.nan
  if np.ndim(value) != 0:
    raise ValueError(f'metric {name} is an array of shape {np.shape(value)}, not a number')
  value = float(np.asarray(value))
  return value if math.isfinite(value) else math.nan


def empirical_p_value(real: float, null: Sequence[float] | np.ndarray) -> float:
  """`(1 + #{null >= real}) / (1 + N)` over the N finite null values; NaN if there are none or
  the real value is undefined."""
  null = np.asarray(null, np.float64)
  null = null[np.isfinite(null)]
  if not math.isfinite(real) or not null.size:
    return math.nan
  return float((1 + np.count_nonzero(null >= real)) / (1 + null.size))


def _finite_or_none(value: float) -> float | None:
  return float(value) if math.isfinite(value) else None


def _quantile_name(level: float) -> str:
  """'q05' for 0.05, 'q50' for 0.5, 'q2.5' for 0.025."""
  percent = 100 * level
  return f'q{percent:02.0f}' if float(percent).is_integer() else f'q{percent:g}'


def null_summary(null: Sequence[float] | np.ndarray, real: float = math.nan,
                 quantiles: Sequence[float] = DEFAULT_QUANTILES) -> dict[str, Any]:
  """Summary of one metric's null distribution and where `real` falls in it.

  Args:
    null: (N,) the metric over the placebo runs; NaN where undefined.
    real: the real result's value (NaN: none).
    quantiles: levels in [0, 1] to report.

  Returns:
    JSON-ready dict: `num_runs` (N), `num_defined` (finite values), `mean`, `std` (ddof=1),
    `min`, `max`, `quantiles` {'q05': ...}, `real`, `p_value`, `percentile` (share of the
    defined null strictly below the real value) and `values` (the N values, None where
    undefined). Undefined statistics are None.
  """
  null = np.asarray(null, np.float64).ravel()
  defined = null[np.isfinite(null)]
  stats = {'mean': math.nan, 'std': math.nan, 'min': math.nan, 'max': math.nan}
  levels = {_quantile_name(q): math.nan for q in quantiles}
  if defined.size:
    stats.update(mean=defined.mean(), min=defined.min(), max=defined.max())
    levels = dict(zip(levels, np.quantile(defined, quantiles), strict=True))
  if defined.size > 1:
    stats['std'] = defined.std(ddof=1)
  percentile = (np.count_nonzero(defined < real) / defined.size
                if defined.size and math.isfinite(real) else math.nan)
  return {
      'num_runs': int(null.size),
      'num_defined': int(defined.size),
      **{k: _finite_or_none(v) for k, v in stats.items()},
      'quantiles': {k: _finite_or_none(v) for k, v in levels.items()},
      'real': _finite_or_none(real),
      'p_value': _finite_or_none(empirical_p_value(real, defined)),
      'percentile': _finite_or_none(percentile),
      'values': [_finite_or_none(v) for v in null],
  }


def summarize_placebos(real: Mapping[str, Any] | None, placebos: Sequence[Mapping[str, Any]],
                       metrics: Sequence[str] = DEFAULT_METRICS,
                       quantiles: Sequence[float] = DEFAULT_QUANTILES) -> dict[str, Any]:
  """The null distribution of every metric over the placebo results, and the real result in it.

  Args:
    real: the real run's result dict (None: the null alone).
    placebos: one result dict per placebo run.
    metrics: names to summarise (dots reach into nested dicts); a metric no run reports is
      still listed, with `num_defined` 0.
    quantiles: levels of the null to report.

  Returns:
    JSON-ready {'num_runs': N, 'metrics': {name: `null_summary(...)`}} (`json.dumps` with
    `allow_nan=False` works).
  """
  if not placebos:
    raise ValueError('no placebo results to summarise; run at least one placebo run')
  bad = [q for q in quantiles if not 0.0 <= q <= 1.0]
  if bad:
    raise ValueError(f'quantiles must be in [0, 1], got {bad[0]}')
  return {
      'num_runs': len(placebos),
      'metrics': {
          name: null_summary([metric_value(p, name) for p in placebos],
                             math.nan if real is None else metric_value(real, name), quantiles)
          for name in metrics},
  }


# ---------------------------------------------------------------------------------- displays


def _label(name: str) -> str:
  return _LABELS.get(name, name)


def _number(value: float | None, fmt: str = '.3f') -> str:
  return 'n/a' if value is None else format(value, fmt)


def _table_rows(summary: Mapping[str, Any]) -> list[list[str]]:
  """Header plus one row per metric, as strings (for markdown and HTML alike)."""
  first = next(iter(summary['metrics'].values()), {'quantiles': {}})
  levels = list(first['quantiles'])
  rows = [['metric', 'real', 'p-value', 'null mean', 'null std', *levels, 'runs']]
  for name, s in summary['metrics'].items():
    rows.append([_label(name), _number(s['real']), _number(s['p_value']), _number(s['mean']),
                 _number(s['std']), *(_number(s['quantiles'].get(q)) for q in levels),
                 f'{s["num_defined"]}/{s["num_runs"]}'])
  return rows


def markdown_table(summary: Mapping[str, Any]) -> str:
  """A markdown table: one row per metric with the real value, its p-value and the null."""
  rows = _table_rows(summary)
  lines = ['| ' + ' | '.join(row) + ' |' for row in rows]
  lines.insert(1, '|' + '|'.join(['---'] + ['---:'] * (len(rows[0]) - 1)) + '|')
  return '\n'.join(lines)


def plot_histograms(summary: Mapping[str, Any], path: str | os.PathLike) -> str | None:
  """One histogram per metric of the null, the real value as a vertical line; writes a PNG.

  Returns:
    The path written, or None (with a logged notice) when matplotlib is not installed.
  """
  plt = extras.pyplot('the placebo histogram')
  if plt is None:
    return None

  items = list(summary['metrics'].items())
  columns = min(3, len(items))
  rows = -(-len(items) // columns)
  fig, axes = plt.subplots(rows, columns, figsize=(4.2 * columns, 3.2 * rows), squeeze=False)
  for ax, (name, s) in zip(axes.flat, items, strict=False):
    values = [v for v in s['values'] if v is not None]
    if values:
      ax.hist(values, bins=min(30, max(5, len(values) // 2)), color='#8aa6c1',
              edgecolor='white', label=f'placebo ({len(values)})')
    if s['real'] is not None:
      ax.axvline(s['real'], color='#c0392b', lw=2,
                 label=f'real (p = {_number(s["p_value"], ".2f")})')
    ax.set_title(_label(name))
    ax.grid(alpha=0.3)
    if values or s['real'] is not None:
      ax.legend(fontsize=8)
  for ax in axes.flat[len(items):]:
    ax.axis('off')
  fig.suptitle(f'Placebo runs: the pipeline on {summary["num_runs"]} markets with nothing '
               'to find')
  fig.tight_layout()
  fig.savefig(path, dpi=100)
  plt.close(fig)
  return os.fspath(path)


def html_section(summary: Mapping[str, Any], image_path: str | os.PathLike | None = None) -> str:
  """An HTML fragment for a report page: heading, reading, table and (embedded) histogram."""
  rows = _table_rows(summary)
  head = ''.join(f'<th>{html.escape(c)}</th>' for c in rows[0])
  body = '\n'.join('<tr>' + ''.join(f'<td>{html.escape(c)}</td>' for c in row) + '</tr>'
                   for row in rows[1:])
  image = ''
  if image_path is not None:
    with open(image_path, 'rb') as f:
      data = base64.b64encode(f.read()).decode('ascii')
    image = f'<img alt="placebo histograms" src="data:image/png;base64,{data}">'
  return (f'<h2>Placebo runs</h2>\n<p>The same pipeline on {summary["num_runs"]} synthetic '
          'markets with nothing to find. p-value: the share of placebo runs at least as good '
          'as the real result, counting the real one: (1 + #{null &gt;= real}) / (1 + N).</p>\n'
          f'<table><tr>{head}</tr>\n{body}\n</table>\n{image}\n')


def write_outputs(summary: Mapping[str, Any], outdir: str | os.PathLike) -> dict[str, str]:
  """Writes the summary JSON, the markdown table, the histogram (if matplotlib) and the HTML
  fragment into `outdir`; returns {'json', 'markdown', 'html'[, 'histogram']: path}."""
  os.makedirs(outdir, exist_ok=True)
  paths = {'json': os.path.join(outdir, SUMMARY_JSON),
           'markdown': os.path.join(outdir, TABLE_MD),
           'html': os.path.join(outdir, SECTION_HTML)}
  with open(paths['json'], 'w') as f:
    json.dump(summary, f, indent=2, allow_nan=False)
  with open(paths['markdown'], 'w') as f:
    f.write(markdown_table(summary) + '\n')
  image = plot_histograms(summary, os.path.join(outdir, HISTOGRAM_PNG))
  if image is not None:
    paths['histogram'] = image
  with open(paths['html'], 'w') as f:
    f.write(html_section(summary, image))
  return paths


_SECTION_START, _SECTION_END = '<!-- placebo section -->', '<!-- /placebo section -->'


def embed_in_report(report_path: str | os.PathLike, section: str) -> str:
  """Puts `section` (`html_section`) into an HTML report (the real run's
  `backtest_report.html`) before `</body>`, replacing the one a previous call put there, so
  the real result and its null are read on one page. Returns the report's path.

  Raises:
    ValueError: the file has no `</body>` (not an HTML page).
  """
  with open(report_path) as f:
    page = f.read()
  start, end = page.find(_SECTION_START), page.find(_SECTION_END)
  if start >= 0 and end > start:
    page = page[:start] + page[end + len(_SECTION_END):]
  close = page.rfind('</body>')
  if close < 0:
    raise ValueError(f'{report_path}: no </body>; not an HTML report')
  page = f'{page[:close]}{_SECTION_START}\n{section}{_SECTION_END}\n{page[close:]}'
  with open(f'{report_path}.tmp', 'w') as f:
    f.write(page)
  os.replace(f'{report_path}.tmp', report_path)
  return os.fspath(report_path)


# ---------------------------------------------------------------------------------- runner



def run_path(workdir: str | os.PathLike, run: int) -> str:
  """Where placebo run `run` (0-based) is stored: `workdir/placebo/run_XXX.json`."""
  return os.path.join(workdir, RUNS_DIR, f'run_{run:03d}.json')


def _load_run(path: str, market_seed: int) -> dict[str, Any]:
  with open(path) as f:
    try:
      stored = json.load(f)
    except json.JSONDecodeError as e:
      raise ValueError(f'{path}: not a placebo result ({e}); delete it to rerun that run') from e
  if stored.get('market_seed') != market_seed:
    raise ValueError(f'{path} holds the run with market seed {stored.get("market_seed")}, this '
                     f'call expects {market_seed} (a different first_seed?); use another '
                     'workdir or the first_seed it was made with')
  return stored['result']


def _duration(seconds: float) -> str:
  seconds = round(seconds)
  hours, rest = divmod(seconds, 3600)
  return f'{hours}h{rest // 60:02d}m' if hours else f'{rest // 60}m{rest % 60:02d}s'


def run_placebos(run_one: Callable[[int], Mapping[str, Any]], num_runs: int,
                 workdir: str | os.PathLike, *, first_seed: int = 0,
                 show: Sequence[str] = ('net_sharpe', 'gross_sharpe'),
                 ray_address: str | None = None,
                 log: Callable[[str], None] = print) -> list[dict[str, Any]]:
  """Runs `run_one(market_seed)` for runs 0 .. num_runs - 1, skipping stored ones.

  Run i uses market seed `first_seed + i` and is stored, as soon as it finishes, in
  `run_path(workdir, i)` as {'run', 'market_seed', 'seconds', 'result'} (written to a
  temporary file and renamed, so an interrupted run leaves no partial file). A second call
  with the same arguments runs only what is missing; raising `num_runs` adds runs.

  Args:
    run_one: the pipeline on the market of one seed -> dict of metrics (JSON-able after
      numpy scalars become floats; NaN and inf are stored as null). With `ray_address` it is
      pickled to the workers (`dispatch.run_trials`), so any folder it writes must be on
      storage every node sees.
    num_runs: N.
    workdir: the experiment's directory.
    first_seed: market seed of run 0.
    show: metrics printed in each progress line when the result has them.
    ray_address: None runs here, one run after another; otherwise the missing runs are Ray
      tasks on that cluster (one GPU each when it has GPUs), stored here as each finishes.
    log: where progress lines go.

  Returns:
    The N results (as stored: JSON round-tripped), in run order.
  """
  if num_runs < 1:
    raise ValueError(f'num_runs must be >= 1, got {num_runs}')
  os.makedirs(os.path.join(workdir, RUNS_DIR), exist_ok=True)
  results: list[dict[str, Any] | None] = [None] * num_runs
  for i in range(num_runs):
    if os.path.exists(run_path(workdir, i)):
      results[i] = _load_run(run_path(workdir, i), first_seed + i)
  todo = [i for i in range(num_runs) if results[i] is None]
  where = f' on Ray at {ray_address}' if ray_address is not None else ''
  log(f'placebo: {num_runs - len(todo)} of {num_runs} runs stored in '
      f'{os.path.join(workdir, RUNS_DIR)}, {len(todo)} to run{where}')
  started = time.monotonic()

  def store(_: int, outcome: tuple[int, dict[str, Any], float]) -> None:
    i, result, seconds = outcome
    seed = first_seed + i
    record = {'run': i, 'market_seed': seed, 'seconds': seconds, 'result': result}
    try:
      text = json.dumps(record, indent=1, allow_nan=False)
    except TypeError as e:
      raise TypeError(f'run_one({seed}) returned a value JSON cannot hold ({e}); return '
                      'numbers, strings, lists and dicts') from e
    path = run_path(workdir, i)
    with open(path + '.tmp', 'w') as f:
      f.write(text)
    os.replace(path + '.tmp', path)
    results[i] = result
    stored = sum(results[j] is not None for j in todo)
    eta = (time.monotonic() - started) / stored * (len(todo) - stored)
    shown = ', '.join(f'{name} {_number(_finite_or_none(metric_value(result, name)))}'
                      for name in show if name.split('.')[0] in result)
    log(f'placebo run {i + 1}/{num_runs} (market seed {seed}) in {seconds:.1f}s'
        f'{": " + shown if shown else ""}; {stored}/{len(todo)} new, ETA {_duration(eta)}')

  dispatch.run_trials(_Run(run_one, first_seed), todo, ray_address, on_result=store)
  return results


@dataclasses.dataclass(frozen=True)
class _Run:
  """Run i of `run_placebos` (a `dispatch.run_trials` trial): (i, its result, seconds)."""

  run_one: Callable[[int], Mapping[str, Any]]
  first_seed: int

  def __call__(self, i: int) -> tuple[int, dict[str, Any], float]:
    start = time.monotonic()
    result = json_types.to_json_types(dict(self.run_one(self.first_seed + i)), finite_only=True)
    return i, result, time.monotonic() - start
