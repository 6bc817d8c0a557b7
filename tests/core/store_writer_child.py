"""A streamer in a tight loop, for the SIGKILL test of the run store (tests/core/test_store.py).

Usage: store_writer_child.py STORE RUN_ID RUN_DIR

Resumes metrics.jsonl and stdout.log of RUN_DIR at the offsets stored for RUN_ID, ingests them in small
batches, and after each commit prints "batch METRICS_OFFSET LOG_OFFSET" (flushed), so the parent knows
what was committed when it kills this process. Prints "eof" and exits when both files are consumed.
"""

from __future__ import annotations

import sys
from pathlib import Path

from core.records import IncrementalReader, RunPaths
from core.store import Store

CHUNK_BYTES = 4096


def main() -> int:
    store_path, run_id, run_dir = sys.argv[1], sys.argv[2], RunPaths(sys.argv[3])
    store = Store(Path(store_path))
    m_off, m_line = store.offset(run_id, RunPaths.METRICS)
    l_off, _ = store.offset(run_id, RunPaths.STDOUT)
    reader = IncrementalReader("metrics", offset=m_off, line_no=m_line)
    batch = 0
    with open(run_dir.metrics, "rb") as metrics_file, open(run_dir.stdout, "rb") as log_file:
        metrics_file.seek(m_off)
        log_file.seek(l_off)
        while True:
            before = reader.offset
            res = reader.feed(metrics_file.read(CHUNK_BYTES))
            store.ingest(run_id, RunPaths.METRICS, res.records, reader.offset, reader.line_no,
                         corrupt=len(res.corrupt), expect_offset=before)
            text = log_file.read(CHUNK_BYTES)
            cut = text.rfind(b"\n") + 1  # whole lines only; the rest is read again next time
            log_file.seek(l_off + cut)
            if cut:
                store.ingest(run_id, RunPaths.STDOUT, [{"text": text[:cut].decode()}], l_off + cut, 0,
                             expect_offset=l_off)
                l_off += cut
            batch += 1
            print(batch, reader.offset, l_off, flush=True)
            if not res.records and not res.corrupt and not cut:
                print("eof", flush=True)
                return 0


if __name__ == "__main__":
    sys.exit(main())
