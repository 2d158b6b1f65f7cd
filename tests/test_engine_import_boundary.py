"""Training may use the engine, never the reverse: only the CLI (engine/cli) may import both.

Read from the source (every import statement, including those inside functions), because a lazy
import of ``bmengine.training`` deep in a backend is exactly what an import-time check would miss.
"""

from __future__ import annotations

import ast
from pathlib import Path

from conftest import REPO


def training_imports(path: Path, root: Path = REPO) -> list[str]:
    """``file:line module`` for every import of ``bmengine.training`` in one source file."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module, *(f"{node.module}.{alias.name}" for alias in node.names)]
        else:
            continue
        if any(name == "bmengine.training" or name.startswith("bmengine.training.") for name in names):
            found.append(f"{path.relative_to(root)}:{node.lineno} {names[0]}")
    return found


def test_no_engine_module_outside_the_cli_imports_training():
    sources = [p for p in (REPO / "engine").rglob("*.py") if "cli" not in p.relative_to(REPO / "engine").parts]
    assert len(sources) > 50  # the whole engine was read, not an empty glob
    offenders = [hit for path in sources for hit in training_imports(path)]
    assert offenders == []


def test_the_check_sees_a_lazy_import_inside_a_function(tmp_path):
    probe = tmp_path / "torch_backend.py"
    source = (REPO / "engine" / "backends" / "torch_backend.py").read_text()
    assert training_imports_of(source, probe, tmp_path) == []
    late = source + "\n\ndef late():\n    from bmengine.training.trainer import train\n"
    assert training_imports_of(late, probe, tmp_path) == [f"torch_backend.py:{late.count(chr(10))} bmengine.training.trainer"]


def training_imports_of(source: str, path: Path, root: Path) -> list[str]:
    path.write_text(source)
    return training_imports(path, root)
