"""`tunedeck decontaminate`, `decontaminate merge` and `data download` through the real CLI entry point."""

from __future__ import annotations

import functools
import gzip
import hashlib
import http.server
import json
import threading
from pathlib import Path

import pytest

from app.cli import main
from core.evalsets import load_humaneval


@pytest.fixture
def train(tmp_path) -> Path:
    he = load_humaneval().by_id()
    rows = [{"id": f"r{i}", "instruction": f"Write code number {i} for me.", "answer": f"def f{i}(): return {i}"}
            for i in range(30)]
    rows[4]["instruction"] = he["HumanEval/3"].prompt.replace("    ", "  ")
    path = tmp_path / "train.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_decontaminate_writes_report_ids_clean_set_and_prints_summary(tmp_path, train, capsys):
    report = tmp_path / "out" / "report.json"
    clean = tmp_path / "out" / "clean.jsonl"
    rc = main(["decontaminate", "--train", str(train), "--eval", "humaneval", "--report", str(report),
               "--write-clean", str(clean), "--mode", "exhaustive"])
    out, err = capsys.readouterr()
    assert rc == 0
    assert "humaneval    164             1  0.6" in out
    assert "B/s" in err  # the tqdm bar shows a rate
    data = json.loads(report.read_text())
    assert data["summary"]["humaneval"]["contaminated"] == 1
    assert len(clean.read_text().splitlines()) == 29
    assert json.loads((tmp_path / "out" / "clean.jsonl.removed.jsonl").read_text())["train_id"] == "r4"
    ids = json.loads((tmp_path / "out" / "report.clean_ids.json").read_text())
    assert ids["benchmarks"]["humaneval"]["contaminated"] == ["HumanEval/3"]


def test_shards_then_merge_equals_a_single_run(tmp_path, train, capsys):
    lines = train.read_text().splitlines(keepends=True)
    parts = []
    for i in range(3):
        p = tmp_path / f"p{i}.jsonl"
        p.write_text("".join(lines[i * 10:(i + 1) * 10]))
        parts += ["--train", str(p)]
    assert main(["decontaminate", *parts, "--eval", "humaneval", "--report", str(tmp_path / "whole.json"),
                 "--no-progress"]) == 0
    for i in range(2):
        assert main(["decontaminate", *parts, "--eval", "humaneval", "--shard", str(i), "--num-shards", "2",
                     "--report", str(tmp_path / f"s{i}.json"), "--no-progress"]) == 0
    assert main(["decontaminate", "merge", str(tmp_path / "s1.json"), str(tmp_path / "s0.json"),
                 "--report", str(tmp_path / "merged.json")]) == 0
    assert (tmp_path / "merged.json").read_text() == (tmp_path / "whole.json").read_text()


def test_bad_input_exits_2_with_file_and_line_and_writes_nothing(tmp_path, train, capsys):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "a"}\n{"text": \n')
    rc = main(["decontaminate", "--train", str(train), "--train", str(bad), "--eval", "humaneval",
               "--report", str(tmp_path / "r.json"), "--write-clean", str(tmp_path / "clean"), "--no-progress"])
    assert rc == 2
    assert f"{bad}:2: malformed JSON line" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.jsonl", "train.jsonl"]
    rc = main(["decontaminate", "--train", str(train), "--eval", "mbpp", "--report", str(tmp_path / "r.json")])
    assert rc == 2 and "needs a path" in capsys.readouterr().err


def test_merge_rejects_a_report_of_another_schema_version(tmp_path, capsys):
    old = tmp_path / "old.json"
    old.write_text(json.dumps({"schema": "tunedeck.contamination", "version": 99}))
    assert main(["decontaminate", "merge", str(old), "--report", str(tmp_path / "m.json")]) == 2
    assert "version 99 is not supported" in capsys.readouterr().err


@pytest.fixture
def file_server(tmp_path):
    """A real HTTP server on 127.0.0.1 serving tmp_path/www (no network beyond the loopback)."""
    root = tmp_path / "www"
    root.mkdir()

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args):
            pass

    handler = functools.partial(Quiet, directory=str(root))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield root, f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_data_download_verifies_sha256_and_keeps_nothing_on_mismatch(tmp_path, file_server, monkeypatch, capsys):
    import core.evalsets as evalsets

    root, base = file_server
    # The default destination follows TUNEDECK_BENCH_DATA, which .ci/run points at the shared benchmark data:
    # this fake MBPP+ must land in a folder of its own.
    monkeypatch.setenv("TUNEDECK_BENCH_DATA", str(tmp_path / "bench-data"))
    payload = gzip.compress(b'{"task_id": "Mbpp/2", "prompt": "x"}\n')
    (root / "MbppPlus.jsonl.gz").write_bytes(payload)
    good = {"url": f"{base}/MbppPlus.jsonl.gz", "file": "mbppplus/MbppPlus.jsonl.gz",
            "sha256": hashlib.sha256(payload).hexdigest(), "licence": "Apache-2.0"}
    monkeypatch.setattr(evalsets, "UPSTREAM", {"mbppplus": good})
    assert main(["data", "download"]) == 0
    from core.paths import bench_data_dir

    target = bench_data_dir() / "mbppplus" / "MbppPlus.jsonl.gz"
    assert target == tmp_path / "bench-data" / "mbppplus" / "MbppPlus.jsonl.gz"
    assert target.read_bytes() == payload
    assert "already verified" not in capsys.readouterr().out
    assert main(["data", "download"]) == 0 and "already verified" in capsys.readouterr().out

    monkeypatch.setattr(evalsets, "UPSTREAM", {"mbppplus": dict(good, sha256="0" * 64)})
    dest = tmp_path / "dest"
    assert main(["data", "download", "--dest", str(dest)]) == 2
    assert "sha256 mismatch" in capsys.readouterr().err
    assert not dest.exists() or not any(p.is_file() for p in dest.rglob("*"))
    monkeypatch.setattr(evalsets, "UPSTREAM", {"mbppplus": dict(good, url=f"{base}/missing.gz")})
    assert main(["data", "download", "--dest", str(dest)]) == 2
    assert "404" in capsys.readouterr().err


def test_a_report_path_that_is_a_directory_fails_at_once_and_writes_no_clean_set(tmp_path, train, capsys):
    (tmp_path / "report-dir").mkdir()
    rc = main(["decontaminate", "--train", str(train), "--eval", "humaneval", "--report", str(tmp_path / "report-dir"),
               "--write-clean", str(tmp_path / "clean.jsonl"), "--no-progress"])
    _, err = capsys.readouterr()
    assert rc == 2 and "report-dir: is a directory" in err and "nothing was written" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["report-dir", "train.jsonl"]


def test_training_data_without_text_is_an_error_unless_allowed_then_a_loud_warning(tmp_path, capsys):
    import pyarrow as pa
    import pyarrow.parquet as pq

    data = tmp_path / "numbers.parquet"
    pq.write_table(pa.table({"x": [1, 2, 3], "y": [0.1, 0.2, 0.3]}), data)
    argv = ["decontaminate", "--train", str(data), "--eval", "humaneval", "--report", str(tmp_path / "r.json"),
            "--no-progress"]
    rc = main(argv)
    out, err = capsys.readouterr()
    assert rc == 2 and "no text was checked" in err and "0 contaminated" not in out
    assert not (tmp_path / "r.json").exists()
    rc = main([*argv, "--allow-no-text"])
    out, err = capsys.readouterr()
    assert rc == 0 and "tunedeck: WARNING: NO TEXT CHECKED" in err
    assert json.loads((tmp_path / "r.json").read_text())["warnings"][0].startswith("NO TEXT CHECKED")
