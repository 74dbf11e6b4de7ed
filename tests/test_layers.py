"""The package's shape: the import-linter layer contract holds and no module imports itself
back through others (no import cycle), checked on the imports as written."""

import subprocess
import sys

import pytest

grimp = pytest.importorskip('grimp')  # import-linter's graph library (the dev extra)


def _cycles(graph) -> list[list[str]]:
  """Strongly connected components of more than one module (Tarjan)."""
  index, low, stack, on_stack, found = {}, {}, [], set(), []

  def visit(module):
    index[module] = low[module] = len(index)
    stack.append(module)
    on_stack.add(module)
    for other in graph.find_modules_directly_imported_by(module):
      if other not in index:
        visit(other)
        low[module] = min(low[module], low[other])
      elif other in on_stack:
        low[module] = min(low[module], index[other])
    if low[module] == index[module]:
      component = []
      while True:
        other = stack.pop()
        on_stack.discard(other)
        component.append(other)
        if other == module:
          break
      if len(component) > 1:
        found.append(sorted(component))

  for module in sorted(graph.modules):
    if module not in index:
      visit(module)
  return found


def test_no_import_cycle():
  sys.setrecursionlimit(max(sys.getrecursionlimit(), 10_000))
  assert _cycles(grimp.build_graph('himari_jax')) == []


def test_a_cycle_is_found():
  graph = grimp.ImportGraph()
  for a, b in (('p.a', 'p.b'), ('p.b', 'p.c'), ('p.c', 'p.a'), ('p.c', 'p.d')):
    graph.add_import(importer=a, imported=b)
  assert _cycles(graph) == [['p.a', 'p.b', 'p.c']]


def test_layer_contract_holds(repo_root):
  done = subprocess.run([sys.executable, '-c', 'from importlinter.cli import lint_imports_command;'
                         ' lint_imports_command()'], cwd=repo_root, capture_output=True,
                        text=True, timeout=300)
  assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
  assert 'Subpackages by layer KEPT' in done.stdout
