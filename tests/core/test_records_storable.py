"""validate_record is the store's gate: whatever it accepts, Store.ingest stores; what the store cannot hold
(64-bit overflow, text SQLite cannot encode, nesting too deep, a non-finite time) it refuses with a reason."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from core.records import IncrementalReader, RunPaths, metric_record, validate_record
from core.store import Store

_json_scalars = st.one_of(
    st.none(), st.booleans(), st.floats(allow_nan=True, allow_infinity=True),
    st.integers(min_value=-(1 << 70), max_value=1 << 70),
    st.text(max_size=8),  # surrogates included
)
_json = st.recursive(_json_scalars, lambda children: st.one_of(
    st.lists(children, max_size=3), st.dictionaries(st.text(max_size=4), children, max_size=3)), max_leaves=12)


def _record(kind: str) -> st.SearchStrategy[dict]:
    """Records of the right shape (so most pass the type checks) whose values roam: integers far beyond 64
    bits, non-finite floats, text with lone surrogates, nested extras."""
    big_int = st.integers(min_value=-(1 << 70), max_value=1 << 70)
    number = big_int | st.floats(allow_nan=True, allow_infinity=True)
    text = st.text(max_size=8)  # surrogates included
    fields = {"t": number, "attempt": big_int, "step": big_int}
    if kind == "metrics":
        fields.update({name: number | st.none() for name in
                       ("epoch", "samples", "tokens", "loss", "lr", "grad_norm", "tokens_per_s")})
        optional = {"gpu_mem_gb": number, "extra": _json}
    elif kind == "evals":
        fields.update({"checkpoint": text, "benchmark": text, "subset": st.sampled_from(["all", "clean"]),
                       "n_tasks": big_int, "samples_per_task": big_int, "temperature": number,
                       "pass@1": number | st.none()})
        optional = {"pass@10": number}
    else:
        fields.update({"event": st.sampled_from(["started", "warning", "eval_started"]),
                       "detail": st.dictionaries(text, _json, max_size=3)})
        optional = {}
    return st.fixed_dictionaries(fields, optional=optional)


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    with Store(tmp_path_factory.mktemp("store") / "s.sqlite3") as s:
        s.create_run("r", "x", None, None, cluster="here", backend="local", run_dir="/nowhere")
        yield s


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                   HealthCheck.function_scoped_fixture])
@given(st.sampled_from(["metrics", "evals", "events"]).flatmap(lambda k: st.tuples(st.just(k), _record(k))))
def test_every_record_validate_record_accepts_is_stored_by_ingest(store, kind_rec):
    kind, rec = kind_rec
    if validate_record(kind, rec):
        return  # refused: it is counted as a corrupt line, never handed to the store
    name = {"metrics": RunPaths.METRICS, "evals": RunPaths.EVALS, "events": RunPaths.EVENTS}[kind]
    offset = store.offset("r", name)[0] + 1
    store.ingest("r", name, [rec], offset, 1)  # must not raise
    assert store.offset("r", name)[0] == offset


def _metric(**changes) -> dict:
    rec = metric_record(step=1, attempt=1, epoch=0.0, samples=1, tokens=1, loss=1.0, lr=1e-3, grad_norm=1.0,
                        tokens_per_s=1.0, t=1.0)
    rec.update(changes)
    return rec


@pytest.mark.parametrize("changes, reason", [
    ({"step": 99999999999999999999999}, "field 'step': integer out of the 64-bit range"),
    ({"tokens": -(1 << 63) - 1}, "field 'tokens': integer out of the 64-bit range"),
    ({"gpu_mem_gb": 1 << 64}, "field 'gpu_mem_gb': integer out of the 64-bit range"),
    ({"note": {"deep": [1, 2, 1 << 80]}}, "field 'note.deep.2': integer out of the 64-bit range"),
    ({"note": "\ud800"}, "field 'note': text with an unpaired surrogate"),
    ({"t": float("inf")}, "field 't' must be a number (a finite one)"),
])
def test_a_record_the_store_cannot_hold_is_refused_naming_the_field(changes, reason):
    problems = validate_record("metrics", _metric(**changes))
    assert any(reason in p for p in problems), problems


def test_an_event_detail_nested_too_deep_is_refused():
    detail: dict = {}
    node = detail
    for _ in range(40):
        node["a"] = {}
        node = node["a"]
    problems = validate_record("events", {"t": 1.0, "attempt": 1, "event": "warning", "detail": detail})
    assert any("nested more than" in p for p in problems)


def test_reader_counts_json_it_cannot_hold_as_corrupt_lines_instead_of_raising(tmp_path: Path):
    reader = IncrementalReader("metrics")
    good = b'{"t":1,"attempt":1,"step":1,"epoch":0,"samples":1,"tokens":1,"loss":1,"lr":1,"grad_norm":1,"tokens_per_s":1}\n'
    res = reader.feed(b"[" * 100_000 + b"]" * 100_000 + b"\n" + b"1" * 5000 + b"\n" + good)
    assert len(res.records) == 1 and res.line_nos == [3] and res.offsets == [reader.offset]
    assert [c.line_no for c in res.corrupt] == [1, 2]
    assert "nested too deeply" in res.corrupt[0].reason and "4300" in res.corrupt[1].reason
