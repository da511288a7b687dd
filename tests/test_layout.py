"""The rooms of the library and who may import whom, read from the source (imports inside functions count)."""

from __future__ import annotations

import ast
import pathlib

ROOT = pathlib.Path(__file__).resolve().parents[1] / "perceiver_jax"

# Room -> the rooms its modules may import (its own always allowed). README.md's map says the same.
MAY_IMPORT = {
  "models": set(),
  "front_ends": {"models"},
  "data": set(),
  "config_args": set(),
  "cli": {"config_args"},
  "training": {"models", "front_ends", "data", "config_args"},
  "tools": {"models", "front_ends", "data", "config_args", "training", "cli"},
  "pretrained": {"models", "front_ends", "training"},
}


def module_name(path: pathlib.Path) -> str:
  parts = path.relative_to(ROOT.parent).with_suffix("").parts
  return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def library_modules() -> dict[str, pathlib.Path]:
  return {module_name(p): p for p in sorted(ROOT.rglob("*.py"))}


def imports_of(path: pathlib.Path, modules) -> set[str]:
  """The library modules `path` imports anywhere in its body, `from pkg import submodule` resolved."""
  found = set()
  for node in ast.walk(ast.parse(path.read_text())):
    if isinstance(node, ast.Import):
      names = [a.name for a in node.names]
    elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
      names = [
        f"{node.module}.{a.name}" if f"{node.module}.{a.name}" in modules else node.module for a in node.names
      ]
    else:
      continue
    found.update(n for n in names if n.split(".")[0] == "perceiver_jax")
  return found


def room(module: str) -> str:
  parts = module.split(".")
  return parts[1] if len(parts) > 1 else "top"


def graph() -> dict[str, set[str]]:
  modules = library_modules()
  return {name: imports_of(path, modules) - {name} for name, path in modules.items()}


def test_every_module_lives_in_a_room_and_imports_only_the_rooms_it_may():
  edges = graph()
  assert set(map(room, edges)) <= set(MAY_IMPORT) | {"top"}, sorted(set(map(room, edges)))
  bad = [
    f"{src} -> {dst}"
    for src, dsts in edges.items()
    if room(src) != "top"
    for dst in dsts
    if room(dst) != room(src) and room(dst) not in MAY_IMPORT[room(src)]
  ]
  assert not bad, bad


def find_cycle(edges: dict[str, set[str]]) -> list[str] | None:
  """One cycle of `edges` as a path that ends where it starts, or None."""
  state: dict[str, int] = {}  # 1: on the current path, 2: done

  def visit(node, path):
    state[node] = 1
    for nxt in sorted(edges.get(node, ())):
      if state.get(nxt) == 1:
        return [*path, node][[*path, node].index(nxt) :] + [nxt]
      if nxt not in state and (cycle := visit(nxt, [*path, node])):
        return cycle
    state[node] = 2
    return None

  for node in sorted(edges):
    if node not in state and (cycle := visit(node, [])):
      return cycle
  return None


def test_the_import_graph_has_no_cycle():
  assert find_cycle(graph()) is None


def test_the_checks_see_imports_inside_functions_and_cycles(tmp_path):
  # The two checks above could pass by reading nothing: an import inside a function, a module named by
  # `from package import module`, and a cycle through three modules must be seen.
  (tmp_path / "a.py").write_text(
    "def f():\n  from perceiver_jax.training import train\n  import perceiver_jax.data\n"
  )
  modules = {"perceiver_jax.training.train", "perceiver_jax.data"}
  assert imports_of(tmp_path / "a.py", modules) == modules
  assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == ["a", "b", "c", "a"]
  assert find_cycle({"a": {"b"}, "b": {"c"}, "d": {"a", "c"}}) is None
  assert "perceiver_jax.training.train" in graph()["perceiver_jax.tools.visualize"]


# README map rows outside the library: folder -> the library modules its files may import (None: any).
OUTSIDE = {"configs": {"perceiver_jax.config_args"}, "experiments": None, "scripts": None}


def test_configs_experiments_and_scripts_import_what_the_map_says_and_the_library_none_of_them():
  modules = library_modules()
  for folder, allowed in OUTSIDE.items():
    paths = sorted((ROOT.parent / folder).glob("*.py"))
    assert paths, folder
    for path in paths:
      found = imports_of(path, modules)
      assert found <= set(modules), (path, sorted(found - set(modules)))  # No import of a moved module.
      assert allowed is None or found <= allowed, (path, sorted(found - allowed))
  outside = [
    f"{name} -> {node.module if isinstance(node, ast.ImportFrom) else alias.name}"
    for name, path in modules.items()
    for node in ast.walk(ast.parse(path.read_text()))
    if isinstance(node, (ast.Import, ast.ImportFrom))
    for alias in node.names
    if ((node.module or "") if isinstance(node, ast.ImportFrom) else alias.name).split(".")[0] in OUTSIDE
  ]
  assert not outside, outside
