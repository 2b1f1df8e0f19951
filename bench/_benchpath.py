"""Imported first by every bench script: keeps bench/ off the import path (bench/pipeline.py would shadow
the ``pipeline`` package) and puts the repository root on it."""

import sys
from pathlib import Path

_HERE = Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != _HERE]
sys.path.insert(0, str(_HERE.parent))
