"""Assertions shared by the launch tests: the store holds exactly what the run's files hold."""

from __future__ import annotations

from pathlib import Path

from core.records import RunPaths, read_records


def assert_streamed_exactly_once(store, run_id: str, run_dir: str, steps: int) -> None:
    """Every metrics/events line of the run's files is in the store once, in order; stdout is identical."""
    rows = store.get_run(run_id)
    assert rows.status == "finished", (rows.status, rows.status_reason)
    file_metrics, corrupt = read_records(Path(run_dir) / RunPaths.METRICS, "metrics")
    assert not corrupt
    assert [r["step"] for r in file_metrics] == list(range(1, steps + 1))
    key = ("attempt", "step", "loss", "lr", "grad_norm", "tokens", "t")
    assert [tuple(r[k] for k in key) for r in store.metrics(run_id)] == [tuple(r[k] for k in key) for r in file_metrics]
    file_events, _ = read_records(Path(run_dir) / RunPaths.EVENTS, "events")
    eval_events, _ = read_records(Path(run_dir) / RunPaths.EVAL_EVENTS, "events")  # empty with TUNEDECK_NO_EVAL
    both = sorted(file_events + eval_events, key=lambda e: e["t"])
    assert [(e["event"], e["t"]) for e in store.events(run_id)] == [(e["event"], e["t"]) for e in both]
    assert file_events[-1]["event"] == "finished"
    started = [e for e in file_events if e["event"] == "started"]
    assert started and started[0]["detail"]["world_size"] == 2  # two training processes
    stdout = (Path(run_dir) / RunPaths.STDOUT).read_bytes().decode("utf-8", "replace")
    assert store.log_tail(run_id, len(stdout.encode()) + 1) == stdout
    for name in RunPaths.STREAMED:
        state = store.stream_state(run_id, name)
        size = (Path(run_dir) / name).stat().st_size if (Path(run_dir) / name).exists() else 0
        assert state["duplicate_count"] == 0, (name, state)  # nothing was delivered twice
        assert state["corrupt_count"] == 0, (name, state)
        assert state["offset"] == size, (name, state, size)  # and everything arrived
