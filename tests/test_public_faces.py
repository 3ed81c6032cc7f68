"""The package's public faces: no module reaches into another's private names, and the
package docstring names every subpackage and top-level module."""

import ast
from pathlib import Path

import geomsim

ROOT = Path(__file__).resolve().parents[1]


def private_imports(source: str, module: str) -> list[str]:
    """Each `from geomsim.x import _name` in `source` (of the module `module`) with x not
    `module` itself, as `geomsim.x._name`."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("geomsim") and node.module != module:
            found += [f"{node.module}.{a.name}" for a in node.names
                      if a.name.startswith("_") and not a.name.startswith("__")]
    return found


def test_no_module_imports_another_modules_private_names():
    offenders = {}
    for folder in ("geomsim", "benchmarks", "paper_repro"):
        for path in (ROOT / folder).rglob("*.py"):
            module = ".".join(path.relative_to(ROOT).with_suffix("").parts)
            if names := private_imports(path.read_text(), module):
                offenders[module] = names
    assert offenders == {}, offenders


def test_the_checker_finds_a_private_import():
    """Negative control: the check above can fail."""
    assert private_imports("from geomsim.sweep.run import _chunk, chunk_path\n", "geomsim.sweep.worker") == [
        "geomsim.sweep.run._chunk"]
    assert private_imports("from geomsim.sweep.run import chunk_path\n", "geomsim.sweep.worker") == []


def test_the_package_docstring_names_every_subpackage_and_module():
    names = {p.name if p.is_dir() else p.stem for p in (ROOT / "geomsim").iterdir()
             if (p.is_dir() and (p / "__init__.py").exists()) or (p.suffix == ".py" and not p.stem.startswith("_"))}
    assert {"curvature", "testbed", "config", "watchdog"} <= names
    missing = sorted(n for n in names if f"`{n}`" not in geomsim.__doc__)
    assert missing == [], missing
