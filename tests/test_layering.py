"""The import layering of DESIGN section 2, checked on the source: every import of a product module (module
level or inside a function) must follow an allowed edge, and no module imports another package's private
names."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("pipeline", "renderers", "captioning", "generators", "sinks", "evaluation", "flows")
# package -> what it may import besides itself: a package name allows all its modules, a dotted name one
# module
ALLOWED = {
    "pipeline": (),
    "renderers": ("pipeline",),
    "captioning": ("pipeline",),
    "sinks": ("pipeline",),
    "generators": ("pipeline", "sinks.records"),  # training reads prepared shards (the record format)
    "evaluation": ("pipeline", "renderers", "sinks"),  # checks written runs, re-rendering their labels
    "flows": PACKAGES,
}


def _imports(path: Path):
    """(line, imported module, imported names) of every import in ``path``, relative imports resolved."""
    tree = ast.parse(path.read_text(), filename=str(path))
    module = ".".join(path.relative_to(ROOT).with_suffix("").parts)
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name, ()
        elif isinstance(node, ast.ImportFrom):
            name = node.module or ""
            if node.level:
                base = module.split(".")[: -node.level]
                name = ".".join([*base, name] if name else base)
            yield node.lineno, name, tuple(a.name for a in node.names)


def _allowed(package: str, target: str) -> bool:
    top = target.split(".")[0]
    if top not in PACKAGES or top == package:
        return True
    return any(target == edge or target.startswith(edge + ".") for edge in ALLOWED[package])


def _violations() -> list[str]:
    out = []
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            for line, target, names in _imports(path):
                where = f"{path.relative_to(ROOT)}:{line}"
                top = target.split(".")[0]
                if not _allowed(package, target):
                    out.append(f"{where}: {package} may not import {target}")
                if top in PACKAGES and top != package:
                    private = [n for n in names if n.startswith("_")]
                    if private or any(part.startswith("_") for part in target.split(".")):
                        out.append(f"{where}: imports private {target} {private}")
    return out


def test_imports_follow_the_layers():
    assert _violations() == []


def test_the_checker_sees_violations(tmp_path, monkeypatch):
    """The checker itself: a stage package importing another, or a private name, is reported."""
    for package in PACKAGES:
        (tmp_path / package).mkdir()
    (tmp_path / "renderers" / "bad.py").write_text(
        "from captioning.labels import LabelCaptioner\n"
        "def f():\n    from pipeline.config import _Frozen\n    import generators.composite\n"
    )
    monkeypatch.setitem(globals(), "ROOT", tmp_path)
    found = _violations()
    assert found == [
        "renderers/bad.py:1: renderers may not import captioning.labels",
        "renderers/bad.py:3: imports private pipeline.config ['_Frozen']",
        "renderers/bad.py:4: renderers may not import generators.composite",
    ]
