"""The package layering and module sizes that docs/design.md promises."""

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# Each top-level package and the packages it may import (its own and lower).
ALLOWED = {"preprocessing": {"preprocessing"},
           "pvl_jax": {"preprocessing", "pvl_jax"},
           "launch": {"preprocessing", "pvl_jax", "launch"},
           "benchmarks": {"preprocessing", "pvl_jax", "launch", "configs",
                          "benchmarks"}}
MAX_LINES = 400


def _project_imports(path: Path) -> set[str]:
  """Top-level project packages imported anywhere in a module."""
  names = set()
  for node in ast.walk(ast.parse(path.read_text())):
    if isinstance(node, ast.Import):
      names |= {alias.name.split(".")[0] for alias in node.names}
    elif isinstance(node, ast.ImportFrom) and node.level == 0:
      names.add(node.module.split(".")[0])
  return names & set(ALLOWED) | (names & {"configs"})


@pytest.mark.parametrize("package", sorted(ALLOWED))
def test_packages_import_only_their_own_level_or_below(package):
  violations = [f"{path.relative_to(ROOT)} imports {sorted(bad)}"
                for path in sorted((ROOT / package).rglob("*.py"))
                if (bad := _project_imports(path) - ALLOWED[package])]
  assert not violations


def test_modules_stay_small():
  big = [f"{path.relative_to(ROOT)}: {n} lines"
         for package in ALLOWED
         for path in sorted((ROOT / package).rglob("*.py"))
         if (n := len(path.read_text().splitlines())) > MAX_LINES]
  assert not big
