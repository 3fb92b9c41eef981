"""Layers import downward only: model <- tasks <- data pipeline <- run <- evaluator/predict <-
trainer (each with its command-line main; command_line.py holds what the mains share). Read from the source with `ast` (module-level and function-level imports alike), so a
late import that dodges a circle still counts as an arrow.

An arrow A -> B means running A's imports runs B. `import a.b.c` and `from a.b import c` also
run the packages a and a.b (their __init__.py) first, so those are arrows too, except into A's
own packages: Python has already run them (or is running them) before A starts, so they never
run again because of A; without that exception every package whose __init__.py re-exports
its submodules would look circular.
"""

import ast
import pathlib

PACKAGE_DIR = pathlib.Path(__file__).resolve().parents[1] / 'perceiver_jax'
MODEL = 'perceiver_jax.model'
PIPELINE = 'perceiver_jax.data.pipeline'



def module_names(package_dir: pathlib.Path) -> dict[str, pathlib.Path]:
  """{dotted module name: file}; a package is named by its __init__.py."""
  root = package_dir.parent
  out = {}
  for path in sorted(package_dir.rglob('*.py')):
    parts = list(path.relative_to(root).with_suffix('').parts)
    if parts[-1] == '__init__':
      parts.pop()
    out['.'.join(parts)] = path
  return out


def _ancestors(name: str) -> list[str]:
  parts = name.split('.')
  return ['.'.join(parts[:i]) for i in range(1, len(parts))]


def import_graph(package_dir: pathlib.Path = PACKAGE_DIR) -> dict[str, set[str]]:
  """{module: modules of the package it imports}, as the module docstring defines arrows."""
  modules = module_names(package_dir)
  top = package_dir.name
  graph = {}
  for name, path in modules.items():
    is_package = path.name == '__init__.py'
    targets = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
      if isinstance(node, ast.Import):
        targets.update(alias.name for alias in node.names)
      elif isinstance(node, ast.ImportFrom):
        base = node.module or ''
        if node.level:  # relative: from the importer's package, `level` steps up
          package = name if is_package else name.rpartition('.')[0]
          for _ in range(node.level - 1):
            package = package.rpartition('.')[0]
          base = f'{package}.{base}' if base else package
        for alias in node.names:
          sub = f'{base}.{alias.name}'
          targets.add(sub if sub in modules else base)
    own = set(_ancestors(name)) | ({name} if is_package else set())
    edges = set()
    for target in targets:
      if target.split('.')[0] != top:
        continue
      edges.add(target)
      edges.update(a for a in _ancestors(target) if a not in own)
    edges.discard(name)
    graph[name] = {e for e in edges if e in modules}
  return graph


def circles(graph: dict[str, set[str]]) -> list[set[str]]:
  """The strongly connected components of more than one module (Tarjan)."""
  index, low, stack, on_stack, out = {}, {}, [], set(), []

  def visit(v):
    index[v] = low[v] = len(index)
    stack.append(v)
    on_stack.add(v)
    for w in sorted(graph[v]):
      if w not in index:
        visit(w)
        low[v] = min(low[v], low[w])
      elif w in on_stack:
        low[v] = min(low[v], index[w])
    if low[v] == index[v]:
      component = set()
      while True:
        w = stack.pop()
        on_stack.discard(w)
        component.add(w)
        if w == v:
          break
      if len(component) > 1:
        out.append(component)

  for v in sorted(graph):
    if v not in index:
      visit(v)
  return out


def reachable(graph: dict[str, set[str]], start: str) -> set[str]:
  """Modules that importing `start` runs, directly or through others."""
  seen, todo = set(), [start]
  while todo:
    for w in graph[todo.pop()]:
      if w not in seen:
        seen.add(w)
        todo.append(w)
  return seen


def model_imports_outside(graph) -> dict[str, set[str]]:
  """{model module: modules outside the model it imports, errors aside}, direct arrows."""
  out = {}
  for name, targets in graph.items():
    if name != MODEL and not name.startswith(MODEL + '.'):
      continue
    outside = {t for t in targets if t != 'perceiver_jax.errors' and t != MODEL
               and not t.startswith(MODEL + '.')}
    if outside:
      out[name] = outside
  return out


def tasks_reaching_pipeline(graph) -> list[str]:
  """Task modules whose imports run the pipeline, directly or through other modules."""
  return sorted(name for name in graph if name.startswith('perceiver_jax.tasks')
                and PIPELINE in reachable(graph, name))


def test_the_model_imports_only_the_model_and_errors():
  assert model_imports_outside(import_graph()) == {}


def test_tasks_never_import_the_pipeline():
  assert tasks_reaching_pipeline(import_graph()) == []


def test_the_package_has_no_import_circles():
  assert circles(import_graph()) == []


def test_the_checks_catch_a_circle_and_upward_imports():
  # A hand-made graph: the checks above must be able to fail.
  graph = {'perceiver_jax.model.encoder': {'perceiver_jax.sharding'},
           'perceiver_jax.sharding': {'perceiver_jax.errors'},
           'perceiver_jax.errors': set(),
           'perceiver_jax.tasks.mlm': {'perceiver_jax.data'},
           'perceiver_jax.data': {PIPELINE},
           PIPELINE: {'perceiver_jax.tasks.mlm'}}
  assert model_imports_outside(graph) == {'perceiver_jax.model.encoder': {'perceiver_jax.sharding'}}
  assert tasks_reaching_pipeline(graph) == ['perceiver_jax.tasks.mlm']
  assert circles(graph) == [{'perceiver_jax.tasks.mlm', 'perceiver_jax.data', PIPELINE}]
