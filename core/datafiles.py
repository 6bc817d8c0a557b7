"""Training data files: the one place that decides which files are training data and how each is read.

Formats, by suffix (a directory is a dataset saved with `datasets`' save_to_disk):
    .jsonl .ndjson   JSON lines                      .parquet .pq   Parquet
    .json            one JSON array, or JSON lines   .csv .tsv      CSV with a header (tab-separated for .tsv)
    .arrow           Arrow IPC (stream or file)      directory      a saved Dataset (a DatasetDict: its train split)

Two ways in, over the same detection: `load_dataset` gives a `datasets.Dataset` (training, the estimate's row
count), through the `datasets` builder of each format; core.decontam.reader streams rows of the same files for
the contamination matcher (its JSONL path is ~35x faster than `datasets` streaming). So a file the
contamination check accepts, training accepts, and the other way round; both say which file is wrong.

Standard library only at import: shipped with every run bundle (the job reads its data through it); `datasets`
is imported when a dataset is loaded.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

SUFFIXES = {".jsonl": "jsonl", ".ndjson": "jsonl", ".json": "json", ".parquet": "parquet", ".pq": "parquet",
            ".csv": "csv", ".tsv": "csv", ".arrow": "arrow"}
FORMATS_TEXT = ".jsonl/.ndjson, .json, .parquet, .csv/.tsv, .arrow or a saved dataset directory"
# the `datasets` builder of each format (JSON arrays and JSON lines are both the json builder's)
BUILDERS = {"jsonl": "json", "json": "json", "parquet": "parquet", "csv": "csv", "arrow": "arrow"}


class DataFileError(ValueError):
    """A training data file that cannot be read: says which file and why."""


def detect_format(path: str | Path) -> str:
    """jsonl | json (a JSON array; a .json file of JSON lines is jsonl) | parquet | csv | arrow | saved."""
    p = Path(path)
    if p.is_dir():
        if any((p / name).is_file() for name in ("dataset_info.json", "state.json", "dataset_dict.json")):
            return "saved"
        raise DataFileError(f"{path}: a directory but not a saved dataset (no dataset_info.json / state.json)")
    fmt = SUFFIXES.get(p.suffix.lower())
    if fmt is None:
        raise DataFileError(f"{path}: unknown training data format {p.suffix or '(no suffix)'!r}: use {FORMATS_TEXT}")
    if fmt == "json":
        with open(p, "rb") as f:
            head = f.read(4096).lstrip()
        return "json" if head.startswith(b"[") else "jsonl"
    return fmt


def check_path(path: str | Path) -> tuple[Path, str]:
    """The path and its format; DataFileError when it is missing, empty or of no known format."""
    p = Path(path)
    if not p.exists():
        raise DataFileError(f"{path}: file not found")
    if p.is_file() and p.stat().st_size == 0:
        raise DataFileError(f"{path}: file is empty")
    return p, detect_format(p)


def builder_options(path: str | Path, fmt: str) -> dict[str, Any]:
    """Keyword arguments for the format's `datasets` builder."""
    return {"delimiter": "\t"} if fmt == "csv" and str(path).lower().endswith(".tsv") else {}


def train_split(ds: Any, path: str | Path) -> Any:
    """A saved DatasetDict's train split (a saved Dataset as it is)."""
    import datasets

    if isinstance(ds, datasets.DatasetDict):
        if "train" not in ds:
            raise DataFileError(f"{path}: a DatasetDict without a 'train' split (splits: {', '.join(sorted(ds))}); "
                                f"give one split's directory, e.g. {path}/{next(iter(ds))}")
        return ds["train"]
    return ds


def load_dataset(paths: Sequence[str | Path]) -> Any:
    """The rows of every file, in order, as one `datasets.Dataset`."""
    import datasets

    if not paths:
        raise DataFileError("no training data files given")
    parts = []
    for path in paths:
        p, fmt = check_path(path)
        try:
            if fmt == "saved":
                parts.append(train_split(datasets.load_from_disk(str(p)), path))
            else:
                parts.append(datasets.load_dataset(BUILDERS[fmt], data_files=str(p), split="train",
                                                   **builder_options(p, fmt)))
        except DataFileError:
            raise
        except Exception as exc:  # datasets' and pyarrow's many parse errors: name the file
            raise DataFileError(f"{path}: cannot read it as {fmt} ({type(exc).__name__}: {exc})") from exc
    return parts[0] if len(parts) == 1 else datasets.concatenate_datasets(parts)
