"""run_check: read the training data in units, match every unit, assemble the report.

Units run in this process (jobs=1) or in a spawn-context process pool; the units and the order results are
assembled in do not depend on `jobs`, so the report is identical for any number of processes.
"""

from __future__ import annotations

import concurrent.futures as cf
import hashlib
import multiprocessing
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from core.cancel import Cancelled
from core.decontam.longline import LongRow
from core.decontam.matcher import MODES, Item, make_matcher, prepare_items, scan_long
from core.decontam.normalize import raw_span
from core.decontam.reader import (
    DecontamError,
    Unit,
    check_path,
    iter_batches,
    path_bytes,
    plan_units,
    row_id,
    row_segments,
    unit_bytes_total,
)
from core.decontam.report import METHODS, SCHEMA, VERSION, finalize, match_sort_key
from core.evalsets import EvalSet, EvalSetError, load_eval_set
from core.fsutil import sha256_file

BATCH_BYTES = 4 << 20  # input bytes matched per batch (bounds memory per process)
PROGRESS_BYTES = 1 << 20


@dataclass(frozen=True)
class Spec:
    """What a worker needs to rebuild the matcher (small and picklable)."""

    tasks: tuple[tuple[str, str, str], ...]
    mode: str
    seed: int
    window: int
    casefold: bool
    fields: tuple[str, ...] | None
    cap: int


_STATE: dict[str, Any] = {}


def _prepare(spec: Spec) -> list[Item]:
    return prepare_items(list(spec.tasks), mode=spec.mode, seed=spec.seed, window=spec.window, casefold=spec.casefold)


def _build_state(spec: Spec, items: list[Item] | None = None) -> dict[str, Any]:
    items = items if items is not None else _prepare(spec)
    return {"spec": spec, "matcher": make_matcher(items, mode=spec.mode, window=spec.window, casefold=spec.casefold)}


def _init_worker(spec: Spec) -> None:
    _STATE.update(_build_state(spec))


def process_unit(unit: Unit, state: dict[str, Any], on_progress: Callable[[int], None] | None = None,
                 cancel: threading.Event | None = None, hasher: Any = None) -> dict[str, Any]:
    """Match one unit: row count, capped matches and distinct matching rows per item (rows local to the unit)."""
    spec: Spec = state["spec"]
    matcher = state["matcher"]
    sampled = spec.mode == "sampled"
    fields = list(spec.fields) if spec.fields else None
    hits: dict[int, list[dict[str, Any]]] = {}
    rows: dict[int, set[int]] = {}
    key_rows: dict[tuple[int, Any], set[int]] = {}
    key_text: dict[tuple[int, Any], str] = {}
    batch: list[tuple[int, list[tuple[str, str]]]] = []  # (position in batch, segments) for the matcher
    meta: list[tuple[int, dict[str, Any]]] = []  # (row index in the unit, row) at the same position

    text_rows = text_chars = 0
    no_text_example: dict[str, str] | None = None  # the fields of a row without text, for the error message

    def record(row: int, row_obj: dict[str, Any], fname: str, item: int, widx: int, espan, tspan, text: str) -> None:
        rows.setdefault(item, set()).add(row)
        key = widx if sampled else espan
        key_rows.setdefault((item, key), set()).add(row)
        key_text.setdefault((item, key), text)
        lst = hits.setdefault(item, [])
        lst.append({"file_index": unit.file_index, "file_row": row, "train_id": row_id(row_obj), "field": fname,
                    "window": widx if sampled else None, "eval_span": list(espan),
                    "train_span": list(tspan), "text": text})
        if len(lst) > 4 * spec.cap:
            lst.sort(key=match_sort_key)
            del lst[spec.cap:]

    def flush() -> None:
        nonlocal text_chars
        text_chars += sum([len(t) for _, segs in batch for _, t in segs])
        for pos, fname, item, widx, espan, tspan, text in matcher.scan(batch):
            record(*meta[pos], fname, item, widx, espan, tspan, text)
        batch.clear()
        meta.clear()

    n_rows = 0
    flush_at, progress_at = BATCH_BYTES, PROGRESS_BYTES
    for rows_in, done in iter_batches(unit, hasher):
        for where, row in rows_in:  # per row: only what cannot wait for the batch
            segs = row_segments(row, fields, unit, where)
            if segs:
                text_rows += 1
                if type(row) is LongRow:  # (the only rows that may hold a LongText: one check per row)
                    # a string too long to hold (LongText): matched alone, a window at a time
                    for fname, long_text in [(f, t) for f, t in segs if type(t) is not str]:
                        found, n_chars = scan_long(matcher, long_text.pieces(), fname, cancel)
                        text_chars += n_chars
                        for _, name, item, widx, espan, tspan, text in found:
                            record(n_rows, row, name, item, widx, espan, tspan, text)
                    segs = [(f, t) for f, t in segs if type(t) is str]
                if segs:
                    batch.append((len(batch), segs))
                    meta.append((n_rows, row))
            elif no_text_example is None:
                no_text_example = {str(k): type(v).__name__ for k, v in list(row.items())[:12]}
            n_rows += 1
        if done >= flush_at:  # batches are bounded by input bytes (reader batches are ~READ_BYTES)
            flush()
            flush_at = done + BATCH_BYTES
        if done >= progress_at:
            progress_at = done + PROGRESS_BYTES
            if cancel is not None and cancel.is_set():
                raise Cancelled()
            if on_progress:
                on_progress(done)
    flush()
    if n_rows == 0 and unit.fmt != "jsonl":
        raise DecontamError(f"{unit.path}: no rows")
    for lst in hits.values():
        lst.sort(key=match_sort_key)
        del lst[spec.cap:]
    return {"file_index": unit.file_index, "start": unit.start, "n_rows": n_rows, "hits": hits,
            "text_rows": text_rows, "text_chars": text_chars, "no_text_example": no_text_example,
            "rows": {k: sorted(v) for k, v in rows.items()},
            "keys": {k: len(v) for k, v in key_rows.items()}, "key_text": key_text}


def _unit_in_pool(unit: Unit) -> dict[str, Any]:
    return process_unit(unit, _STATE)


def _load_evals(eval_specs: list[str] | list[EvalSet], question_with_tests: bool) -> list[EvalSet]:
    out = []
    for spec in eval_specs:
        if isinstance(spec, EvalSet):
            out.append(spec)
            continue
        try:
            if question_with_tests and spec.split("=")[0].strip().lower() == "mbpp":
                out.append(load_eval_set(spec, question_with_tests=True))
            else:
                out.append(load_eval_set(spec))
        except EvalSetError as exc:
            raise DecontamError(str(exc)) from None
    if not out:
        raise DecontamError("no eval set given (e.g. --eval humaneval)")
    return out


def _file_info(path: str, digest: str | None = None) -> dict[str, Any]:
    """Path, sha256 (a directory: of its files' relative paths and hashes), bytes; `digest` if already known."""
    p = Path(path)
    if digest is None and p.is_dir():
        parts = [f"{f.relative_to(p).as_posix()}:{sha256_file(f)}" for f in sorted(p.rglob("*")) if f.is_file()]
        digest = hashlib.sha256("\n".join(parts).encode()).hexdigest()
    elif digest is None:
        digest = sha256_file(p)
    return {"path": path, "sha256": digest, "rows": None, "bytes": path_bytes(p)}


def scan(train_paths: list[str], eval_specs: list[str] | list[EvalSet], *, fields: list[str] | None = None,
         mode: str = "sampled", seed: int = 0, window: int = 50, casefold: bool = False, jobs: int = 1,
         shard: tuple[int, int] | None = None, max_matches_per_item: int = 20, boilerplate_rows: int = 50,
         question_with_tests: bool = False, progress: Callable[[int, int | None], None] | None = None,
         cancel: threading.Event | None = None,
         allow_no_text: bool = False) -> tuple[dict[str, Any], dict[tuple[int, int], list[int]]]:
    """run_check plus the flagged rows: {(file index, row in file): [item indexes]} (all, not capped)."""
    if mode not in MODES:
        raise DecontamError(f"unknown mode {mode!r}: use one of {', '.join(MODES)}")
    if window < 1 or max_matches_per_item < 0 or boilerplate_rows < 0 or jobs < 1:
        raise DecontamError("window and jobs must be >= 1, caps >= 0")
    if not train_paths:
        raise DecontamError("no training data given (--train PATH)")
    if shard is not None and not (shard[1] >= 1 and 0 <= shard[0] < shard[1]):
        raise DecontamError(f"shard {shard[0]} of {shard[1]}: need 0 <= index < count")
    evalsets = _load_evals(eval_specs, question_with_tests)
    tasks = tuple((t.benchmark, t.task_id, t.question) for es in evalsets for t in es.tasks)
    seen: set[tuple[str, str]] = set()
    for bench, tid, _ in tasks:
        if (bench, tid) in seen:
            raise DecontamError(f"eval set {bench}: task id {tid!r} appears twice (give each eval set once)")
        seen.add((bench, tid))
    for path in train_paths:
        check_path(path)
    own = [i for i in range(len(train_paths)) if shard is None or i % shard[1] == shard[0]]
    units = [u for i in own for u in plan_units(i, train_paths[i])]
    sizes = [unit_bytes_total(u) for u in units]
    total = sum(sizes)
    spec = Spec(tasks, mode, seed, window, casefold, tuple(fields) if fields else None, max_matches_per_item)
    items = _prepare(spec)  # the report's windows come from these too

    results: list[dict[str, Any]] = []
    hashers: dict[int, Any] = {}
    done_before = 0

    def check_cancel() -> None:
        if cancel is not None and cancel.is_set():
            raise Cancelled()

    check_cancel()
    if progress:
        progress(0, total)
    if jobs == 1 or len(units) == 1:
        state = _build_state(spec, items)  # local: several checks may run at once in threads (the GUI)
        # JSONL units of a file run in order here, so the file's sha256 is taken from the bytes as they are read
        for u in units:
            if u.fmt == "jsonl":
                hashers.setdefault(u.file_index, hashlib.sha256())
        for unit, size in zip(units, sizes, strict=True):
            results.append(process_unit(
                unit, state, (lambda d, base=done_before: progress(base + d, total)) if progress else None, cancel,
                hashers.get(unit.file_index)))
            done_before += size
            if progress:
                progress(done_before, total)
    else:
        ctx = multiprocessing.get_context("spawn")
        with cf.ProcessPoolExecutor(max_workers=jobs, mp_context=ctx, initializer=_init_worker,
                                    initargs=(spec,)) as pool:
            pending: dict[int, cf.Future] = {}
            nxt = 0
            try:
                for i in range(len(units)):
                    while nxt < len(units) and nxt < i + 2 * jobs:
                        pending[nxt] = pool.submit(_unit_in_pool, units[nxt])
                        nxt += 1
                    fut = pending.pop(i)
                    while True:
                        try:
                            results.append(fut.result(timeout=0.2))
                            break
                        except cf.TimeoutError:
                            check_cancel()
                    check_cancel()
                    done_before += sizes[i]
                    if progress:
                        progress(done_before, total)
            except BaseException:
                for f in pending.values():
                    f.cancel()
                pool.shutdown(wait=True, cancel_futures=True)
                raise
    check_cancel()
    digests = {fi: h.hexdigest() for fi, h in hashers.items()}
    return _assemble(train_paths, own, evalsets, items, spec, results, shard, boilerplate_rows, cancel, digests,
                     allow_no_text)


def _no_text_message(path: str, rows: int, fields: tuple[str, ...] | None, example: dict[str, str] | None) -> str:
    where = f"the field{'s' if fields and len(fields) > 1 else ''} {', '.join(fields)}" if fields else "any field"
    seen = ", ".join(f"{k} ({v})" for k, v in (example or {}).items())
    return (f"{path}: no text was checked: none of its {rows} rows has text in {where}"
            + (f" (a row's fields: {seen})" if seen else "") + ". Nothing was compared, so this data cannot be "
            "called clean")


def _assemble(train_paths, own, evalsets, prepared: list[Item], spec: Spec, results, shard, boilerplate_rows, cancel,
              digests: dict[int, str], allow_no_text: bool = False):
    files = []
    for i, path in enumerate(train_paths):
        if i in own:
            if cancel is not None and cancel.is_set():
                raise Cancelled()
            files.append(_file_info(path, digests.get(i)))
        else:
            files.append({"path": path, "sha256": None, "rows": None, "bytes": None})
    file_rows = {i: 0 for i in own}
    text = {i: [0, 0, None] for i in own}  # rows with text, characters checked, a row without text
    items = []
    windows = []
    for it in prepared:
        entry = {"benchmark": it.benchmark, "task_id": it.task_id, "question": it.question, "contaminated": False,
                 "windows": [], "n_matching_rows": 0, "matches": [], "matched_spans": [], "boilerplate_windows": []}
        if spec.mode == "sampled":
            entry["windows"] = [{"text": it.processed[s:e], "eval_span": list(raw_span(it.omap, s, e)), "n_rows": 0}
                                for s, e in it.windows]
        items.append(entry)
        windows.append({})
    flagged: dict[tuple[int, int], list[int]] = {}
    for res in results:
        fi = res["file_index"]
        offset = file_rows[fi]
        file_rows[fi] += res["n_rows"]
        text[fi][0] += res["text_rows"]
        text[fi][1] += res["text_chars"]
        text[fi][2] = text[fi][2] or res["no_text_example"]
        for item_idx, lst in res["hits"].items():
            for m in lst:
                m["file_row"] += offset
            items[item_idx]["matches"].extend(lst)
        for item_idx, rows in sorted(res["rows"].items()):  # (item order: the same however rows were read)
            items[item_idx]["n_matching_rows"] += len(rows)
            for r in rows:
                flagged.setdefault((fi, offset + r), []).append(item_idx)
        for (item_idx, key), count in res["keys"].items():
            if spec.mode == "sampled":
                items[item_idx]["windows"][key]["n_rows"] += count
            else:
                span = windows[item_idx].setdefault(tuple(key), {"text": res["key_text"][(item_idx, key)],
                                                                  "eval_span": list(key), "n_rows": 0})
                span["n_rows"] += count
    for item, spans in zip(items, windows, strict=True):
        item["matched_spans"] = [spans[k] for k in sorted(spans)]
        item["matches"].sort(key=match_sort_key)
        del item["matches"][spec.cap:]
    warnings = []
    for i in own:
        if file_rows[i] == 0:
            raise DecontamError(f"{train_paths[i]}: no rows (the file holds only blank lines)")
        files[i]["rows"] = file_rows[i]
        files[i]["text_rows"], files[i]["text_chars"] = text[i][0], text[i][1]
        if text[i][1] == 0:
            # Zero characters compared is no evidence of cleanliness: refused, unless asked for, then loud.
            message = _no_text_message(train_paths[i], file_rows[i], spec.fields, text[i][2])
            if not allow_no_text:
                raise DecontamError(f"{message}. Name the text columns with --field NAME, or pass --allow-no-text "
                                    "to write the report anyway, marked NO TEXT CHECKED.")
            warnings.append(f"NO TEXT CHECKED: {message}; its rows count as clean only because nothing was "
                            "compared.")
    report = {
        "schema": SCHEMA, "version": VERSION, "method": METHODS[spec.mode],
        "params": {"window": spec.window, "casefold": spec.casefold, "mode": spec.mode,
                   "fields": list(spec.fields) if spec.fields else None,
                   "max_matches_per_item": spec.cap, "boilerplate_rows": boilerplate_rows},
        "seed": spec.seed,
        "train": {"files": files, "fingerprint": None, "rows": None},
        "evals": [{"benchmark": es.name, "path": es.path, "sha256": es.sha256, "n_items": len(es.tasks)}
                  for es in evalsets],
        "items": items, "summary": {}, "shard": None, "warnings": warnings,
    }
    if shard is not None:
        for item in report["items"]:
            for m in item["matches"]:
                m["train_index"] = None
        report["shard"] = {"index": shard[0], "count": shard[1]}
        return report, flagged
    return finalize(report), flagged


def run_check(train_paths: list[str], eval_specs: list[str] | list[EvalSet], *, fields: list[str] | None = None,
              mode: str = "sampled", seed: int = 0, window: int = 50, casefold: bool = False, jobs: int = 1,
              shard: tuple[int, int] | None = None, max_matches_per_item: int = 20, boilerplate_rows: int = 50,
              question_with_tests: bool = False, progress: Callable[[int, int | None], None] | None = None,
              cancel: threading.Event | None = None, allow_no_text: bool = False) -> dict[str, Any]:
    """Check training data against eval sets and return the report; writes nothing.

    progress(bytes_done, bytes_total) is called regularly; setting `cancel` stops the work promptly with
    Cancelled. With `shard=(index, count)` only files i with i % count == index are read (a partial report
    for merge_reports)."""
    return scan(train_paths, eval_specs, fields=fields, mode=mode, seed=seed, window=window, casefold=casefold,
                jobs=jobs, shard=shard, max_matches_per_item=max_matches_per_item, boilerplate_rows=boilerplate_rows,
                question_with_tests=question_with_tests, progress=progress, cancel=cancel,
                allow_no_text=allow_no_text)[0]
