"""Workflow outputs: the training set without flagged rows (in its own format), the removed rows, and the
clean / contaminated task-id lists. Everything is written to temporary paths first and renamed into place
only when all of it is written, so a failure leaves no partial output.
"""

from __future__ import annotations

import csv
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from core.decontam.reader import DecontamError, check_path, iter_rows, plan_units, row_id
from core.decontam.report import ids_document


class _Staged:
    """Temporary files/dirs renamed over their targets together in commit(), removed in abort()."""

    def __init__(self) -> None:
        self.pairs: list[tuple[Path, Path]] = []

    def file(self, target: Path) -> Path:
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
        os.close(fd)
        self.pairs.append((Path(tmp), target))
        return Path(tmp)

    def directory(self, target: Path) -> Path:
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent))
        self.pairs.append((tmp, target))
        return tmp

    def commit(self) -> None:
        for tmp, _ in self.pairs:
            if tmp.is_file():
                with open(tmp, "rb+") as f:
                    os.fsync(f.fileno())
            # mkstemp/mkdtemp create owner-only entries; these are ordinary data files for the user's tools
            tmp.chmod(0o755 if tmp.is_dir() else 0o644)
        for tmp, target in self.pairs:
            if tmp.is_dir() and target.exists():
                old = target.with_name(f".{target.name}.old")
                if old.exists():
                    shutil.rmtree(old) if old.is_dir() else old.unlink()
                target.replace(old)
                tmp.replace(target)
                shutil.rmtree(old) if old.is_dir() else old.unlink()
            else:
                tmp.replace(target)
        self.pairs.clear()

    def abort(self) -> None:
        for tmp, _ in self.pairs:
            if tmp.is_dir():
                shutil.rmtree(tmp, ignore_errors=True)
            else:
                tmp.unlink(missing_ok=True)
        self.pairs.clear()


def clean_targets(train_paths: list[str], out: str) -> list[Path]:
    """Where each training file's cleaned copy goes: OUT itself for one file, OUT/<name> for several."""
    if len(train_paths) == 1:
        return [Path(out)]
    names = [Path(p).name for p in train_paths]
    dupes = {n for n in names if names.count(n) > 1}
    if dupes:
        raise DecontamError(f"--write-clean with several training files writes OUT/<file name>; these names "
                            f"repeat: {', '.join(sorted(dupes))}")
    return [Path(out) / n for n in names]


def _jsonable(value: Any) -> Any:
    return value if isinstance(value, (str, int, float, bool, type(None), list, dict)) else str(value)


def _write_one(path: str, fmt: str, target_tmp: Path, drop: set[int]) -> None:
    if fmt == "jsonl":
        row = 0
        with open(path, "rb") as src, open(target_tmp, "wb") as dst:
            for line in src:
                if not line.strip():
                    continue
                if row not in drop:
                    dst.write(line if line.endswith(b"\n") else line + b"\n")
                row += 1
    elif fmt == "json":
        data = json.loads(Path(path).read_text(encoding="utf-8"))
        kept = [r for i, r in enumerate(data) if i not in drop]
        target_tmp.write_text(json.dumps(kept, ensure_ascii=False, indent=1) + "\n", encoding="utf-8")
    elif fmt == "csv":
        delimiter = "\t" if path.lower().endswith(".tsv") else ","
        with open(path, newline="", encoding="utf-8") as src, open(target_tmp, "w", newline="", encoding="utf-8") as dst:
            reader = csv.DictReader(src, delimiter=delimiter)
            writer = csv.DictWriter(dst, fieldnames=reader.fieldnames or [], delimiter=delimiter)
            writer.writeheader()
            for i, r in enumerate(reader):
                if i not in drop:
                    writer.writerow(r)
    elif fmt == "parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq

        pf = pq.ParquetFile(path)
        with pq.ParquetWriter(target_tmp, pf.schema_arrow) as writer:
            base = 0
            for batch in pf.iter_batches(batch_size=4096):
                mask = pa.array([base + i not in drop for i in range(batch.num_rows)])
                writer.write_table(pa.Table.from_batches([batch]).filter(mask))
                base += batch.num_rows
    else:
        import datasets

        ds = datasets.load_from_disk(path)
        ds.select([i for i in range(len(ds)) if i not in drop]).save_to_disk(str(target_tmp))


def write_outputs(report: dict[str, Any], report_path: str | None, *, train_paths: list[str] | None = None,
                  flagged: dict[tuple[int, int], list[int]] | None = None, clean_out: str | None = None) -> list[Path]:
    """Write the report, `<report>.clean_ids.json` and (with clean_out) the cleaned training set and
    `<clean_out>.removed.jsonl`, all or nothing. Returns the paths written."""
    staged = _Staged()
    try:
        if clean_out:
            if train_paths is None or flagged is None:
                raise DecontamError("writing a cleaned training set needs the scan's flagged rows")
            _stage_clean(staged, report, train_paths, flagged, clean_out)
        if report_path:
            tmp = staged.file(Path(report_path))
            tmp.write_text(json.dumps(report, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
            tmp = staged.file(Path(f"{report_path}.clean_ids.json") if not report_path.endswith(".json")
                              else Path(report_path[: -len(".json")] + ".clean_ids.json"))
            tmp.write_text(json.dumps(ids_document(report), indent=1) + "\n", encoding="utf-8")
        written = [target for _, target in staged.pairs]
        staged.commit()
        return written
    except BaseException:
        staged.abort()
        raise


def _stage_clean(staged: _Staged, report, train_paths, flagged, clean_out) -> None:
    targets = clean_targets(train_paths, clean_out)
    items = report["items"]
    base = 0
    removed_tmp = staged.file(Path(f"{clean_out}.removed.jsonl"))
    with open(removed_tmp, "w", encoding="utf-8") as removed:
        for fi, (path, target) in enumerate(zip(train_paths, targets, strict=True)):
            _, fmt = check_path(path)
            drop = {row for (f, row), _ in flagged.items() if f == fi}
            tmp = staged.directory(target) if fmt == "saved" else staged.file(target)
            if fmt == "saved":
                tmp.rmdir()  # save_to_disk creates it
            _write_one(path, fmt, tmp, drop)
            if drop:
                row_no = 0
                for unit in plan_units(fi, path):
                    for _, row, _ in iter_rows(unit):
                        if row_no in drop:
                            matched = [{"benchmark": items[i]["benchmark"], "task_id": items[i]["task_id"]}
                                       for i in flagged[(fi, row_no)]]
                            removed.write(json.dumps({"train_index": base + row_no, "file": path, "file_row": row_no,
                                                      "train_id": row_id(row), "matched": matched,
                                                      "row": {k: _jsonable(v) for k, v in row.items()}},
                                                     ensure_ascii=False, default=str) + "\n")
                        row_no += 1
            base += report["train"]["files"][fi]["rows"]


def write_clean(train_paths: list[str], flagged: dict[tuple[int, int], list[int]], out: str,
                report: dict[str, Any]) -> list[Path]:
    """Only the cleaned training set and its removed rows (no report)."""
    return write_outputs(report, None, train_paths=train_paths, flagged=flagged, clean_out=out)
