"""Workflow outputs: the training set without flagged rows (in its own format), the removed rows, and the
clean / contaminated task-id lists. Everything is written to temporary paths first and renamed into place
only when all of it is written; the renames are undone when one of them fails, so either every output
appears or none does (and files that were there before are left as they were).
"""

from __future__ import annotations

import contextlib
import csv
import json
import os
import shutil
import tempfile
import uuid
from pathlib import Path
from typing import Any

from core.datafiles import train_split
from core.decontam.longline import LongText
from core.decontam.reader import (
    READ_BYTES,
    DecontamError,
    check_path,
    iter_rows,
    open_arrow,
    plan_units,
    row_id,
)
from core.decontam.report import ids_document


class _Staged:
    """Temporary files/dirs renamed over their targets together in commit(), removed in abort()."""

    def __init__(self) -> None:
        self.pairs: list[tuple[Path, Path]] = []
        self.made_dirs: list[Path] = []  # parent directories created for the outputs (removed by abort)

    def _parent(self, target: Path) -> None:
        missing = []
        parent = target.parent
        while not parent.exists() and parent != parent.parent:
            missing.append(parent)
            parent = parent.parent
        target.parent.mkdir(parents=True, exist_ok=True)
        self.made_dirs.extend(missing)  # deepest first

    def file(self, target: Path) -> Path:
        self._parent(target)
        fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
        os.close(fd)
        self.pairs.append((Path(tmp), target))
        return Path(tmp)

    def directory(self, target: Path) -> Path:
        self._parent(target)
        tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent))
        self.pairs.append((tmp, target))
        return tmp

    def commit(self) -> None:
        """Rename every staged output over its target, or (on any failure) leave every target as it was."""
        for tmp, target in self.pairs:
            check_target(target, directory=tmp.is_dir())
        for tmp, _ in self.pairs:
            if tmp.is_file():
                with open(tmp, "rb+") as f:
                    os.fsync(f.fileno())
            # mkstemp/mkdtemp create owner-only entries; these are ordinary data files for the user's tools
            tmp.chmod(0o755 if tmp.is_dir() else 0o644)
        # Each existing target is moved aside first, so a failure half way can put every one of them back.
        done: list[tuple[Path, Path | None, bool]] = []  # (target, its old version moved aside, new one in place)
        try:
            for tmp, target in self.pairs:
                aside = None
                if target.exists() or target.is_symlink():
                    aside = target.with_name(f".{target.name}.{uuid.uuid4().hex[:8]}.old")
                    target.replace(aside)
                done.append((target, aside, False))
                tmp.replace(target)
                done[-1] = (target, aside, True)
        except BaseException:
            for target, aside, placed in reversed(done):
                with contextlib.suppress(OSError):
                    if placed:
                        shutil.rmtree(target) if target.is_dir() and not target.is_symlink() else target.unlink()
                    if aside is not None:
                        aside.replace(target)
            raise
        for _, aside, _ in done:
            if aside is not None:
                with contextlib.suppress(OSError):
                    shutil.rmtree(aside) if aside.is_dir() and not aside.is_symlink() else aside.unlink()
        self.pairs.clear()

    def abort(self) -> None:
        for tmp, _ in self.pairs:
            if tmp.is_dir():
                shutil.rmtree(tmp, ignore_errors=True)
            else:
                tmp.unlink(missing_ok=True)
        self.pairs.clear()
        for d in self.made_dirs:
            with contextlib.suppress(OSError):  # only if empty: never what someone else put there
                d.rmdir()
        self.made_dirs.clear()


def check_target(target: Path, *, directory: bool = False) -> None:
    """Refuse an output path that cannot receive the output (before any work, and again before renaming):
    a file where a directory exists, a directory where a file exists, a parent that is not a directory."""
    if target.is_dir() and not directory:
        raise DecontamError(f"{target}: is a directory; give a file name for this output (nothing was written)")
    if directory and target.exists() and not target.is_dir():
        raise DecontamError(f"{target}: exists and is not a directory (nothing was written)")
    parent = target.parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir():
        raise DecontamError(f"{target}: {parent} is not a directory (nothing was written)")


def output_targets(report_path: str | None, train_paths: list[str] | None = None,
                   clean_out: str | None = None) -> list[tuple[Path, bool]]:
    """Every path write_outputs would write, with whether it is a directory; checked with check_target."""
    out: list[tuple[Path, bool]] = []
    if clean_out:
        for path, target in zip(train_paths or [], clean_targets(train_paths or [], clean_out), strict=True):
            out.append((target, check_path(path)[1] == "saved"))
        out.append((Path(f"{clean_out}.removed.jsonl"), False))
    if report_path:
        out.append((Path(report_path), False))
        out.append((_ids_path(report_path), False))
    for target, directory in out:
        check_target(target, directory=directory)
    return out


def _ids_path(report_path: str) -> Path:
    return (Path(f"{report_path}.clean_ids.json") if not report_path.endswith(".json")
            else Path(report_path[: -len(".json")] + ".clean_ids.json"))


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


def _dump(value: Any, out: Any) -> None:
    """json.dump, except that a LongText is written a piece at a time (never held whole)."""
    if isinstance(value, LongText):
        out.write('"')
        for piece in value.pieces():
            out.write(json.dumps(piece, ensure_ascii=False)[1:-1])
        out.write('"')
    elif isinstance(value, dict) and any(isinstance(v, dict | list | LongText) for v in value.values()):
        out.write("{")
        for i, (k, v) in enumerate(value.items()):
            out.write(("," if i else "") + json.dumps(str(k), ensure_ascii=False) + ":")
            _dump(v, out)
        out.write("}")
    elif isinstance(value, list) and any(isinstance(v, dict | list | LongText) for v in value):
        out.write("[")
        for i, v in enumerate(value):
            out.write("," if i else "")
            _dump(v, out)
        out.write("]")
    else:
        out.write(json.dumps(value if isinstance(value, dict | list) else _jsonable(value), ensure_ascii=False,
                             default=str))


def _copy_jsonl(path: str, target_tmp: Path, drop: set[int]) -> None:
    """The JSONL file without the rows in `drop` (row numbers skip blank lines, as the reader's do), copied
    in blocks: a line is never held whole, however long it is."""
    row, state, held = 0, "blank", []  # state of the current line: blank so far, kept, or dropped
    with open(path, "rb") as src, open(target_tmp, "wb") as dst:
        while block := src.read(READ_BYTES):
            start = 0
            while start < len(block):
                nl = block.find(b"\n", start)
                end = len(block) if nl < 0 else nl + 1
                piece = block[start:end]
                if state == "blank":
                    if piece.isspace():
                        held.append(piece)  # a blank line is left out; whitespace before content is kept
                    else:
                        state = "drop" if row in drop else "keep"
                        if state == "keep":
                            dst.write(b"".join(held))
                if state == "keep":
                    dst.write(piece)
                if nl >= 0:
                    if state != "blank":
                        row += 1
                    state, held = "blank", []
                start = end
        if state == "keep":
            dst.write(b"\n")  # a last line without a newline
        elif state == "drop":
            row += 1


def _write_one(path: str, fmt: str, target_tmp: Path, drop: set[int]) -> None:
    if fmt == "jsonl":
        _copy_jsonl(path, target_tmp, drop)
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
    elif fmt == "arrow":
        import pyarrow as pa

        reader = open_arrow(path)
        table = reader.read_all()
        kept = table.filter(pa.array([i not in drop for i in range(table.num_rows)]))
        new = pa.ipc.new_file if isinstance(reader, pa.ipc.RecordBatchFileReader) else pa.ipc.new_stream
        with new(str(target_tmp), kept.schema) as writer:  # the input's own Arrow flavour
            writer.write_table(kept)
    else:
        import datasets

        ds = train_split(datasets.load_from_disk(path), path)
        ds.select([i for i in range(len(ds)) if i not in drop]).save_to_disk(str(target_tmp))


def write_outputs(report: dict[str, Any], report_path: str | None, *, train_paths: list[str] | None = None,
                  flagged: dict[tuple[int, int], list[int]] | None = None, clean_out: str | None = None) -> list[Path]:
    """Write the report, `<report>.clean_ids.json` and (with clean_out) the cleaned training set and
    `<clean_out>.removed.jsonl`, all or nothing. Returns the paths written."""
    output_targets(report_path, train_paths, clean_out)  # before writing anything
    staged = _Staged()
    try:
        if clean_out:
            if train_paths is None or flagged is None:
                raise DecontamError("writing a cleaned training set needs the scan's flagged rows")
            _stage_clean(staged, report, train_paths, flagged, clean_out)
        if report_path:
            tmp = staged.file(Path(report_path))
            tmp.write_text(json.dumps(report, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
            tmp = staged.file(_ids_path(report_path))
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
    # backslashreplace writes a lone surrogate (valid in JSON text only as an escape) as exactly that escape
    with open(removed_tmp, "w", encoding="utf-8", errors="backslashreplace") as removed:
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
                            _dump({"train_index": base + row_no, "file": path, "file_row": row_no,
                                   "train_id": row_id(row), "matched": matched, "row": row}, removed)
                            removed.write("\n")
                        row_no += 1
            base += report["train"]["files"][fi]["rows"]


def write_clean(train_paths: list[str], flagged: dict[tuple[int, int], list[int]], out: str,
                report: dict[str, Any]) -> list[Path]:
    """Only the cleaned training set and its removed rows (no report)."""
    return write_outputs(report, None, train_paths=train_paths, flagged=flagged, clean_out=out)
