"""Training data rows, streamed in units for the contamination matcher.

Which files are training data and their formats is core.datafiles' decision (shared with training and the
app: a file accepted here is accepted there); this module streams their rows fast.

The JSONL reader is our own (binary lines + orjson, the standard library json for lines orjson rejects): it
streams with bounded memory, gives exact line numbers in errors and parses at ~900 MB/s here, where `datasets`
streaming (`load_dataset("json", streaming=True)`) measured 26 MB/s on the same file. Parquet streams by record batch (pyarrow, as `datasets`
does underneath), CSV by line (csv module, exact line numbers), Arrow IPC files by record batch, saved datasets
through `datasets.load_from_disk` (memory-mapped Arrow; a DatasetDict's train split, as training reads it). A `.json` file holding one array is parsed whole (JSON arrays cannot be streamed);
a `.json` file holding JSON lines is read as JSONL.

Big JSONL files are cut into units of UNIT_BYTES at line boundaries so that a process pool can share them;
the units do not depend on the number of processes, so results are identical for any --jobs.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from core import datafiles
from core.decontam import longline  # its thresholds read at call time (tests lower them)
from core.decontam.errors import READ_BYTES, DecontamError

try:  # twice the standard library's speed on JSONL; its result is the same, else we ask the standard library
    from orjson import loads as fast_loads
except ImportError:  # pragma: no cover - orjson is a dependency, this keeps a bare install working
    fast_loads = json.loads

UNIT_BYTES = 32 << 20
ID_FIELDS = ("id", "task_id")
CHAT_KEYS = ("content", "value", "text")


@dataclass(frozen=True)
class Unit:
    file_index: int
    path: str
    fmt: str  # jsonl | json | parquet | csv | arrow | saved (core.datafiles.detect_format)
    start: int = 0  # byte offset (jsonl)
    end: int | None = None  # byte offset (jsonl), None: to the end


def detect_format(path: Path) -> str:
    try:
        return datafiles.detect_format(path)
    except datafiles.DataFileError as exc:
        raise DecontamError(str(exc)) from None


def check_path(path: str) -> tuple[Path, str]:
    try:
        return datafiles.check_path(path)
    except datafiles.DataFileError as exc:
        raise DecontamError(str(exc)) from None


def plan_units(file_index: int, path: str, unit_bytes: int | None = None) -> list[Unit]:
    unit_bytes = unit_bytes or UNIT_BYTES
    p, fmt = check_path(path)
    if fmt != "jsonl":
        return [Unit(file_index, path, fmt)]
    size = p.stat().st_size
    units, start = [], 0
    with open(p, "rb") as f:
        while start < size:
            end = start + unit_bytes
            # finish the line that straddles the cut
            end = size if end >= size else min(_next_line_start(f, end), size)
            units.append(Unit(file_index, path, fmt, start, end))
            start = end
    return units


def _next_line_start(f: Any, pos: int) -> int:
    """The offset just past the first newline at or after `pos` (or the file's end), found in blocks:
    f.readline() would hold a whole line, and a line may be hundreds of MB."""
    f.seek(pos)
    while block := f.read(READ_BYTES):
        nl = block.find(b"\n")
        if nl >= 0:
            return pos + nl + 1
        pos += len(block)
    return pos


def unit_bytes_total(unit: Unit) -> int:
    if unit.fmt == "jsonl":
        return (unit.end or 0) - unit.start
    return path_bytes(Path(unit.path))


def path_bytes(p: Path) -> int:
    if p.is_dir():
        return sum(f.stat().st_size for f in p.rglob("*") if f.is_file())
    return p.stat().st_size


def _line_of(path: str, offset: int) -> int:
    """1-based line number of byte `offset` (counted only when an error is reported)."""
    count, done = 0, 0
    with open(path, "rb") as f:
        while done < offset:
            block = f.read(min(1 << 24, offset - done))
            if not block:
                break
            count += block.count(b"\n")
            done += len(block)
    return count + 1


def iter_rows(unit: Unit) -> Iterator[tuple[Any, dict[str, Any], int]]:
    """(where, row, bytes consumed so far in this unit) for every row of the unit, in order."""
    for rows, done in iter_batches(unit):
        for where, row in rows:
            yield where, row, done


def iter_batches(unit: Unit, hasher: Any = None) -> Iterator[tuple[Iterable[tuple[Any, dict[str, Any]]], int]]:
    """Batches of (where, row) for the unit's rows in order, with the bytes consumed so far in the unit.

    `where` is a str, or for JSONL the line's number within the unit (see `where_of`: formatting it needs a
    count of the lines before the unit, done only for an error message). For JSONL, `hasher` (a hashlib
    object) is fed the unit's bytes as they are read, which spares reading the file again for its sha256."""
    if unit.fmt == "jsonl":
        yield from _jsonl_batches(unit, hasher)
        return
    rows = {"json": _iter_json_array, "csv": _iter_csv, "parquet": _iter_parquet, "arrow": _iter_arrow}.get(
        unit.fmt, _iter_saved)
    batch: list[tuple[Any, dict[str, Any]]] = []
    done = last = 0
    for where, row, done in rows(unit.path):
        batch.append((where, row))
        if len(batch) == 1024 or done - last >= READ_BYTES:
            yield batch, done
            batch, last = [], done
    if batch:
        yield batch, done


def _jsonl_batches(unit: Unit, hasher: Any = None) -> Iterator[tuple[Iterable[tuple[Any, dict[str, Any]]], int]]:
    end = unit.end if unit.end is not None else Path(unit.path).stat().st_size
    limit = end - unit.start
    done = 0
    local = 0  # lines of this unit before the block
    with open(unit.path, "rb") as f:
        f.seek(unit.start)
        rest = b""
        remaining = limit
        while remaining > 0:
            block = f.read(min(READ_BYTES, remaining))
            if hasher is not None:
                hasher.update(block)
            remaining = remaining - len(block) if block else 0  # (a file that shrank ends here)
            # split the block itself and glue only the partial lines at its edges (no block-sized copies)
            lines = block.split(b"\n")
            lines[0] = rest + lines[0]
            rest = lines.pop()  # after the last newline: the start of the next block's first line
            if remaining <= 0 and rest:
                lines.append(rest)  # a last line without a newline
            done += len(block)  # progress moves a block at a time
            if lines:
                try:  # the common case: every line a JSON object, parsed in one comprehension
                    rows = [fast_loads(line) for line in lines]
                    ok = all(type(row) is dict for row in rows)
                except ValueError:
                    ok = False
                if ok:
                    yield zip(range(local + 1, local + 1 + len(rows)), rows, strict=True), done
                else:
                    yield list(_jsonl_careful(unit, lines, local)), done
                local += len(lines)
            if len(rest) > longline.LONG_LINE_BYTES and remaining > 0:
                # A very long line: parse it from the file in a stream instead of gathering it (its long
                # strings stay in the file as LongText), then go on after its newline.
                read_to = unit.start + done
                local += 1
                row, line_end = longline.LineParser(f, unit.path, read_to - len(rest), end, _Where(unit, local)).line()
                rest = b""
                if hasher is not None:  # the line's bytes past what was read, in order, for the file's sha256
                    f.seek(read_to)
                    for pos in range(read_to, line_end, READ_BYTES):
                        hasher.update(f.read(min(READ_BYTES, line_end - pos)))
                f.seek(line_end)
                remaining -= line_end - read_to
                done += line_end - read_to
                if row is not None:
                    yield [(local, row)], done


def _jsonl_careful(unit: Unit, lines: list[bytes], local: int) -> Iterator[tuple[int, dict[str, Any]]]:
    """Line by line: skips blank lines, lets the standard library decide what orjson rejects, names bad lines."""
    decode = json.JSONDecoder().decode
    for line in lines:
        local += 1
        if not line or line.isspace():
            continue
        try:
            row = fast_loads(line)
        except ValueError:
            row = None  # the standard library decides (lone surrogates, NaN, huge ints) and words the error
        bad = None
        if row is None:
            try:  # per-line decode: a block decoded at once turns wide (slow) on one non-ASCII character
                row = decode(line.decode("utf-8"))
            except UnicodeDecodeError as exc:
                bad = f"undecodable bytes: not UTF-8 ({exc.reason} at byte {exc.start} of the line)"
            except json.JSONDecodeError as exc:
                bad = f"malformed JSON line ({exc.msg} at column {exc.colno})"
            except RecursionError:
                bad = "malformed JSON line (nested too deeply)"
            except ValueError as exc:  # an integer beyond Python's 4300-digit limit
                bad = f"malformed JSON line ({str(exc)[:120]})"
        if bad is None and type(row) is not dict:
            bad = f"expected a JSON object, got {type(row).__name__}"
        if bad:
            raise DecontamError(f"{_Where(unit, local)}: {bad}")
        yield local, row


class _Where:
    """Where a JSONL row is, formatted only when an error needs it (line numbers of later units need a count)."""

    __slots__ = ("local", "unit")

    def __init__(self, unit: Unit, local: int):
        self.unit, self.local = unit, local

    def __str__(self) -> str:
        line = _line_of(self.unit.path, self.unit.start) + self.local - 1
        return f"{self.unit.path}:{line}"


def _decode_error_line(path: str) -> str:
    with open(path, "rb") as f:
        for n, line in enumerate(f, 1):
            try:
                line.decode("utf-8")
            except UnicodeDecodeError as exc:
                return f"{path}:{n}: undecodable bytes: not UTF-8 ({exc.reason} at byte {exc.start} of the line)"
    return f"{path}: undecodable bytes: not UTF-8"


def _iter_json_array(path: str) -> Iterator[tuple[str, dict[str, Any], int]]:
    raw = Path(path).read_bytes()
    try:
        data = json.loads(raw.decode("utf-8"))
    except UnicodeDecodeError:
        raise DecontamError(_decode_error_line(path)) from None
    except json.JSONDecodeError as exc:
        raise DecontamError(f"{path}:{exc.lineno}: malformed JSON ({exc.msg} at column {exc.colno})") from None
    if not isinstance(data, list):
        raise DecontamError(f"{path}: expected a JSON array of objects (or JSON lines)")
    if not data:
        raise DecontamError(f"{path}: no rows")
    total = len(raw)
    for i, row in enumerate(data):
        if not isinstance(row, dict):
            raise DecontamError(f"{path}: element {i}: expected a JSON object, got {type(row).__name__}")
        yield f"{path}: element {i}", row, total * (i + 1) // len(data)


def _iter_csv(path: str) -> Iterator[tuple[str, dict[str, Any], int]]:
    size = Path(path).stat().st_size
    delimiter = "\t" if path.lower().endswith(".tsv") else ","
    try:
        with open(path, newline="", encoding="utf-8") as f:
            reader = csv.DictReader(f, delimiter=delimiter)
            done = 0
            for row in reader:
                extra = row.pop(None, None)
                if extra:
                    raise DecontamError(f"{path}:{reader.line_num}: malformed CSV row: more values than header fields")
                done += sum(len(v) for v in row.values() if v)
                yield f"{path}:{reader.line_num}", row, min(done, size)
            if reader.fieldnames is None:
                raise DecontamError(f"{path}: no header line")
    except UnicodeDecodeError:
        raise DecontamError(_decode_error_line(path)) from None
    except csv.Error as exc:
        raise DecontamError(f"{path}: malformed CSV ({exc})") from None


def _iter_parquet(path: str) -> Iterator[tuple[str, dict[str, Any], int]]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    size = Path(path).stat().st_size
    try:
        pf = pq.ParquetFile(path)
    except (pa.ArrowInvalid, OSError) as exc:
        raise DecontamError(f"{path}: not a readable Parquet file ({exc})") from None
    total = max(1, pf.metadata.num_rows)
    index = 0
    for batch in pf.iter_batches(batch_size=1024):
        for row in batch.to_pylist():
            index += 1
            yield f"{path}: row {index}", row, size * index // total


def open_arrow(path: str) -> Any:
    """A reader of an Arrow IPC file, stream format (what `datasets` writes) or file format."""
    import pyarrow as pa

    try:
        return pa.ipc.open_stream(pa.memory_map(path))
    except pa.ArrowInvalid:
        try:
            return pa.ipc.open_file(pa.memory_map(path))
        except pa.ArrowInvalid as exc:
            raise DecontamError(f"{path}: not a readable Arrow IPC file ({exc})") from None


def _iter_arrow(path: str) -> Iterator[tuple[str, dict[str, Any], int]]:
    size = Path(path).stat().st_size
    table = open_arrow(path).read_all()  # memory-mapped: the columns are not copied
    total = max(1, table.num_rows)
    index = 0
    for batch in table.to_batches(max_chunksize=1024):
        for row in batch.to_pylist():
            index += 1
            yield f"{path}: row {index}", row, size * index // total


def _iter_saved(path: str) -> Iterator[tuple[str, dict[str, Any], int]]:
    import datasets

    try:
        ds = datafiles.train_split(datasets.load_from_disk(path), path)
    except (FileNotFoundError, ValueError) as exc:  # DataFileError is a ValueError
        raise DecontamError(f"{path}: not a loadable saved dataset ({exc})" if not isinstance(
            exc, datafiles.DataFileError) else str(exc)) from None
    size = path_bytes(Path(path))
    total = max(1, len(ds))
    index = 0
    for batch in ds.iter(batch_size=1024):
        names = list(batch)
        for values in zip(*(batch[n] for n in names), strict=True):
            index += 1
            yield f"{path}: row {index}", dict(zip(names, values, strict=True)), size * index // total


def where_of(unit: Unit, where: Any) -> str:
    return str(_Where(unit, where)) if isinstance(where, int) else str(where)


def row_segments(row: dict[str, Any], fields: list[str] | None, unit: Unit, where: Any) -> list[tuple[str, Any]]:
    """The text fields of a row as (field name, raw text); chat lists give `messages[3].content`.

    Default: every string field and list of strings / chat messages, except the row id (`id`, `task_id`).
    The text is a str, or a LongText (core.decontam.longline) for a string too long to hold."""
    if fields is None:
        out = [(name, value) for name, value in row.items() if type(value) is str and name not in ID_FIELDS]
        if len(out) == len(row) - ("id" in row) - ("task_id" in row):  # every other field was a string
            return out
    from core.decontam.longline import LongText  # (here: the fast path above is the hot one)

    out = []
    for name in fields or [n for n in row if n not in ID_FIELDS]:
        if name not in row:
            if fields:
                raise DecontamError(f"{where_of(unit, where)}: unknown field {name!r} "
                                    f"(this row has {', '.join(map(repr, row))})")
            continue
        value = row[name]
        if isinstance(value, str | LongText):
            out.append((name, value))
        elif isinstance(value, list):
            for i, el in enumerate(value):
                if isinstance(el, str | LongText):
                    out.append((f"{name}[{i}]", el))
                elif isinstance(el, dict):
                    key = next((k for k in CHAT_KEYS if isinstance(el.get(k), str | LongText)), None)
                    if key:
                        out.append((f"{name}[{i}].{key}", el[key]))
        elif value is not None and fields:
            raise DecontamError(f"{where_of(unit, where)}: field {name!r} is {type(value).__name__}, not text")
    return out


def row_id(row: dict[str, Any]) -> str | None:
    for key in ID_FIELDS:
        value = row.get(key)
        if value is not None:
            return str(value)
    return None
