"""The layer rule: imports point one way.

`mimic` (the model library) never imports `db`, `app`, `retraining`, gradio, the benchmarks or the
demo builder; `db` (the store) uses only `mimic`'s data records and never imports `app`,
`retraining` or gradio; `retraining` joins the two and is imported by nobody below it. Checked on
every import statement (including those inside functions) and, at run time, on what importing
every library module actually loads.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

FORBIDDEN = {
    "mimic": {"db", "app", "retraining", "gradio", "benchmarks", "assets"},
    "db": {"app", "retraining", "gradio", "benchmarks", "assets"},
}
# What `db` may take from the library: its data records (and image validation, a data concern).
DB_MAY_USE = ("mimic.data",)


def _modules(package: str) -> list[Path]:
    return sorted(p for p in (ROOT / package).rglob("*.py") if "migrations" not in p.parts)


def _imports(path: Path, root: Path = ROOT) -> list[tuple[int, str]]:
    """(line, absolute module name) of every import in a file, relative ones resolved."""
    rel = path.relative_to(root).with_suffix("")
    package = list(rel.parts[:-1]) if rel.name != "__init__" else list(rel.parts[:-1])
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - (node.level - 1)]
                name = ".".join(base + ([node.module] if node.module else []))
            else:
                name = node.module or ""
            found.append((node.lineno, name))
            # `from mimic import training` names a submodule: check it as mimic.training
            found += [(node.lineno, f"{name}.{a.name}") for a in node.names]
    return found


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_no_import_points_up(package):
    wrong = []
    for path in _modules(package):
        for line, name in _imports(path):
            top = name.split(".")[0]
            if top in FORBIDDEN[package]:
                wrong.append(f"{path.relative_to(ROOT)}:{line} imports {name}")
            if package == "db" and top == "mimic" and not name.startswith(DB_MAY_USE):
                wrong.append(f"{path.relative_to(ROOT)}:{line} imports {name} (db may use only {DB_MAY_USE})")
    assert not wrong, "imports that point the wrong way:\n" + "\n".join(wrong)


@pytest.mark.slow
def test_importing_the_library_loads_nothing_above_it():
    """Run-time check: importing every module of `mimic` and `db` pulls in no higher layer."""
    names = []
    for package in ("mimic", "db"):
        for path in _modules(package):
            rel = path.relative_to(ROOT).with_suffix("")
            if rel.name == "__main__":
                continue
            names.append(".".join(rel.parts[:-1] if rel.name == "__init__" else rel.parts))
    code = (
        "import importlib, sys\n"
        f"for n in {names!r}: importlib.import_module(n)\n"
        "bad = sorted({m.split('.')[0] for m in sys.modules} & {'app', 'retraining', 'gradio', 'benchmarks'})\n"
        "print(','.join(bad))\n"
    )
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "", f"importing mimic/db loaded: {r.stdout.strip()}"


def test_the_rule_catches_a_wrong_import(tmp_path):
    """The checker itself: an `import db` hidden in a function, and a relative import, are found."""
    fake = tmp_path / "mimic" / "serving" / "probe.py"
    fake.parent.mkdir(parents=True)
    fake.write_text("def f():\n    from db import open_store\n    from ..data import schema\n", encoding="utf-8")
    names = [n for _, n in _imports(fake, tmp_path)]
    assert {"db", "db.open_store", "mimic.data", "mimic.data.schema"} <= set(names)
