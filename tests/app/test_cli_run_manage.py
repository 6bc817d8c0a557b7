"""`tunedeck rename / tag / note / archive / unarchive / delete` and how `tunedeck runs` shows the result."""

from __future__ import annotations

import io
import json

import pytest

from app.cli import main
from core.store import Store


def run_cli(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture
def runs() -> list[str]:
    ids = ["20260101-100000-1a2b3c", "20260101-110000-4d5e6f", "20260101-120000-777777"]
    with Store() as store:
        for run_id, name, status in zip(ids, ("Tiny demo (CPU)", "Tiny demo (CPU)", "phind"),
                                        ("finished", "failed", "running"), strict=True):
            store.create_run(run_id, name, None, {"training": {"lr": 1e-4}}, "local", "local", f"/runs/{run_id}",
                             status=status)
    return ids


def _listed(capsys, *extra: str) -> list[dict]:
    code, out, _ = run_cli(capsys, "runs", "--json", *extra)
    assert code == 0
    return json.loads(out)


def test_same_named_runs_are_told_apart_by_their_id_suffix_in_the_runs_table(capsys, runs):
    code, out, _ = run_cli(capsys, "runs")
    assert code == 0
    assert "Tiny demo (CPU) · 1a2b3c" in out and "Tiny demo (CPU) · 4d5e6f" in out
    assert "phind ·" not in out and "phind" in out
    assert {r["display_name"] for r in _listed(capsys)} == {"Tiny demo (CPU) · 1a2b3c", "Tiny demo (CPU) · 4d5e6f",
                                                           "phind"}


def test_rename_changes_the_name_and_refuses_control_characters(capsys, runs):
    code, out, _ = run_cli(capsys, "rename", "20260101-1000", "baseline lr 1e-4")
    assert code == 0 and "baseline lr 1e-4" in out
    names = {r["run_id"]: r["display_name"] for r in _listed(capsys)}
    assert names["20260101-100000-1a2b3c"] == "baseline lr 1e-4"
    assert names["20260101-110000-4d5e6f"] == "Tiny demo (CPU)"  # no longer collides: the suffix goes
    code, _, err = run_cli(capsys, "rename", runs[0], "evil\x1b[2Jname")
    assert code == 2 and "control" in err and "U+001B" in err
    code, _, err = run_cli(capsys, "rename", "nosuchrun", "x")
    assert code == 2 and "no run with id 'nosuchrun'" in err


def test_names_with_control_characters_from_a_config_print_escaped(capsys, runs):
    with Store() as store:
        store.update_run(runs[2], name="bad\nname\x1b]0;pwned\x07")
    out = run_cli(capsys, "runs")[1]
    assert "bad\\nname\\x1b]0;pwned\\x07" in out and "\x1b" not in out and len(out.splitlines()) == 3


def test_tags_are_added_listed_filtered_and_removed(capsys, runs):
    code, out, _ = run_cli(capsys, "tag", runs[0], "sweep", "lr-1e-4", "sweep")
    assert code == 0 and out.strip() == "sweep lr-1e-4"
    run_cli(capsys, "tag", runs[1], "sweep")
    assert {r["run_id"] for r in _listed(capsys, "--tag", "sweep")} == {runs[0], runs[1]}
    assert {r["run_id"] for r in _listed(capsys, "--tag", "sweep", "--tag", "lr-1e-4")} == {runs[0]}
    code, out, _ = run_cli(capsys, "runs")
    assert "[sweep, lr-1e-4]" in out
    code, out, _ = run_cli(capsys, "tag", runs[0], "--remove", "sweep")
    assert code == 0 and out.strip() == "lr-1e-4"
    code, out, _ = run_cli(capsys, "tag", runs[0])
    assert out.strip() == "lr-1e-4"
    code, _, err = run_cli(capsys, "tag", runs[0], "two words")
    assert code == 2 and "no spaces" in err


def test_notes_are_set_appended_read_from_stdin_printed_and_cleared(capsys, runs, monkeypatch):
    assert run_cli(capsys, "note", runs[0], "warmup too short")[0] == 0
    assert run_cli(capsys, "note", runs[0], "--append", "try 200 steps")[0] == 0
    assert run_cli(capsys, "note", runs[0])[1] == "warmup too short\ntry 200 steps\n"
    monkeypatch.setattr("sys.stdin", io.StringIO("from a pipe\nsecond line\n"))
    run_cli(capsys, "note", runs[0], "-")
    assert {r["run_id"]: r["notes"] for r in _listed(capsys)}[runs[0]] == "from a pipe\nsecond line"
    run_cli(capsys, "note", runs[0], "--clear")
    assert "has no notes" in run_cli(capsys, "note", runs[0])[1]


def test_archived_runs_are_hidden_until_asked_for_and_can_come_back(capsys, runs):
    code, out, _ = run_cli(capsys, "archive", runs[0], runs[1])
    assert code == 0 and out.count("archived") == 2
    assert [r["run_id"] for r in _listed(capsys)] == [runs[2]]
    code, out, err = run_cli(capsys, "runs")
    assert runs[0] not in out and "2 archived runs hidden" in err
    listed = {r["run_id"]: r["archived"] for r in _listed(capsys, "--all")}
    assert listed == {runs[0]: True, runs[1]: True, runs[2]: False}
    # names stay unique among ALL runs, so an archived twin still disambiguates
    run_cli(capsys, "unarchive", runs[1])
    assert {r["run_id"]: r["display_name"] for r in _listed(capsys)}[runs[1]] == "Tiny demo (CPU) · 4d5e6f"


def test_delete_asks_first_refuses_running_runs_and_removes_with_yes(capsys, runs, monkeypatch):
    monkeypatch.setattr("sys.stdin", io.StringIO(""))  # not a terminal
    code, _, err = run_cli(capsys, "delete", runs[0])
    assert code == 2 and "--yes" in err
    assert len(_listed(capsys)) == 3  # nothing deleted
    code, _, err = run_cli(capsys, "delete", runs[2], "--yes")
    assert code == 2 and "still going" in err and "tunedeck cancel" in err
    code, out, _ = run_cli(capsys, "delete", runs[0], runs[1], "--yes")
    assert code == 0 and out.count("deleted") == 2 and "files stay in /runs/" in out
    assert [r["run_id"] for r in _listed(capsys, "--all")] == [runs[2]]


def test_delete_on_a_terminal_needs_a_yes_answer(capsys, runs, monkeypatch):
    class Tty(io.StringIO):
        def isatty(self) -> bool:
            return True

    monkeypatch.setattr("sys.stdin", Tty("n\n"))
    code, out, _ = run_cli(capsys, "delete", runs[0])
    assert code == 1 and "nothing deleted" in out and "Tiny demo (CPU) · 1a2b3c" in out
    monkeypatch.setattr("sys.stdin", Tty("y\n"))
    assert run_cli(capsys, "delete", runs[0])[0] == 0
    assert runs[0] not in {r["run_id"] for r in _listed(capsys, "--all")}
