"""The contamination report: a stable, versioned JSON document; finalising, merging shards, reading back.

A report is built in two steps: the scan gives per-file row numbers (`file_index`, `file_row`) and per-window
row counts; `finalize` adds what needs all files (global `train_index`, fingerprint, caps, boilerplate,
`contaminated`, summary). A shard's partial report stops before the cross-file parts; `merge_reports` sums
the partials and runs the same `finalize`, so merged partials equal a single run.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from core.decontam.errors import DecontamError

SCHEMA = "tunedeck.contamination"
VERSION = 1
METHODS = {
    "sampled": "openai-substring-sampled",  # GPT-4 report: 3 random 50-char windows per question
    "exhaustive": "openai-substring-exhaustive",  # every 50-char window (upper bound of what sampling finds)
    "ngram13": "gpt3-ngram13",  # GPT-3 / lm-eval-harness: lowercase 13-word n-grams
}


def match_sort_key(m: dict[str, Any]) -> tuple:
    return (m["file_index"], m["file_row"], m["field"], m["eval_span"], m["train_span"],
            -1 if m.get("window") is None else m["window"])


def fingerprint(hashes: list[str]) -> str:
    return hashlib.sha256("\n".join(hashes).encode()).hexdigest()


def finalize(report: dict[str, Any]) -> dict[str, Any]:
    """Fill the cross-file fields of a complete (non-partial) report; idempotent."""
    params = report["params"]
    files = report["train"]["files"]
    base, offsets = 0, []
    for f in files:
        offsets.append(base)
        base += f["rows"]
    report["train"]["rows"] = base
    report["train"]["fingerprint"] = fingerprint([f["sha256"] for f in files])
    if all(f.get("text_chars") is not None for f in files):  # (reports of older versions lack the counts)
        report["train"]["text_chars"] = sum(f["text_chars"] for f in files)
    report.setdefault("warnings", [])
    cap, limit = params["max_matches_per_item"], params["boilerplate_rows"]
    summary: dict[str, dict[str, Any]] = {}
    for item in report["items"]:
        item["matches"].sort(key=match_sort_key)
        del item["matches"][cap:]
        for m in item["matches"]:
            m["train_index"] = offsets[m["file_index"]] + m["file_row"]
        item["contaminated"] = item["n_matching_rows"] > 0
        spans = item["windows"] if params["mode"] == "sampled" else item["matched_spans"]
        item["boilerplate_windows"] = [dict(w) for w in spans if w["n_rows"] > limit]
        s = summary.setdefault(item["benchmark"], {"items": 0, "contaminated": 0, "percent": 0.0})
        s["items"] += 1
        s["contaminated"] += item["contaminated"]
    for s in summary.values():
        s["percent"] = round(100.0 * s["contaminated"] / s["items"], 2) if s["items"] else 0.0
    report["summary"] = summary
    report["shard"] = None
    return report


def _signature(r: dict[str, Any]) -> tuple:
    # eval files are compared by content (shards may run where the eval set sits at another path)
    return (r["method"], json.dumps(r["params"], sort_keys=True), r["seed"],
            [(e["benchmark"], e["sha256"], e["n_items"]) for e in r["evals"]],
            [f["path"] for f in r["train"]["files"]],
            [(i["benchmark"], i["task_id"]) for i in r["items"]])


def merge_reports(reports: list[dict[str, Any]]) -> dict[str, Any]:
    """Combine the partial reports of all shards into the report one run over all files gives."""
    if not reports:
        raise DecontamError("merge: no reports given")
    for r in reports:
        if not r.get("shard"):
            raise DecontamError("merge: a report is not a shard's partial report (its 'shard' is null)")
    count = reports[0]["shard"]["count"]
    seen = sorted(r["shard"]["index"] for r in reports)
    if any(r["shard"]["count"] != count for r in reports) or seen != list(range(count)):
        raise DecontamError(f"merge: need shards 0..{count - 1} of {count} exactly once, got indices {seen}")
    sig = _signature(reports[0])
    for r in reports[1:]:
        if _signature(r) != sig:
            raise DecontamError(f"merge: shard {r['shard']['index']} was run with different parameters, "
                                "eval sets or training files than shard 0")
    reports = sorted(reports, key=lambda r: r["shard"]["index"])
    out = json.loads(json.dumps(reports[0]))
    out["warnings"] = [w for r in reports for w in r.get("warnings", [])]
    for i, f in enumerate(out["train"]["files"]):
        owner = reports[i % count]["train"]["files"][i]
        if owner["rows"] is None:
            raise DecontamError(f"merge: shard {i % count} has no result for {f['path']}")
        out["train"]["files"][i] = dict(owner)
    for idx, item in enumerate(out["items"]):
        item["matches"], item["n_matching_rows"] = [], 0
        for w in item["windows"]:
            w["n_rows"] = 0
        spans: dict[tuple[int, int], dict[str, Any]] = {}
        for r in reports:
            other = r["items"][idx]
            item["matches"].extend(other["matches"])
            item["n_matching_rows"] += other["n_matching_rows"]
            for w, ow in zip(item["windows"], other["windows"], strict=True):
                w["n_rows"] += ow["n_rows"]
            for s in other["matched_spans"]:
                key = tuple(s["eval_span"])
                if key in spans:
                    spans[key]["n_rows"] += s["n_rows"]
                else:
                    spans[key] = dict(s)
        item["matched_spans"] = [spans[k] for k in sorted(spans)]
    return finalize(out)


def validate_report(report: Any, where: str = "report") -> dict[str, Any]:
    if not isinstance(report, dict) or report.get("schema") != SCHEMA:
        raise DecontamError(f"{where}: not a TuneDeck contamination report (schema is not {SCHEMA!r})")
    if report.get("version") != VERSION:
        raise DecontamError(f"{where}: report version {report.get('version')!r} is not supported "
                            f"(this TuneDeck reads version {VERSION})")
    for key in ("method", "params", "seed", "train", "evals", "items", "summary"):
        if key not in report:
            raise DecontamError(f"{where}: missing field {key!r}")
    for i, item in enumerate(report["items"]):
        for key in ("benchmark", "task_id", "question", "contaminated", "windows", "matches", "n_matching_rows"):
            if key not in item:
                raise DecontamError(f"{where}: items[{i}] lacks field {key!r}")
    return report


def load_report(path: str | Path) -> dict[str, Any]:
    """Read a report file, checking its schema and version."""
    p = Path(path)
    try:
        data = json.loads(p.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise DecontamError(f"{p}: file not found") from None
    except UnicodeDecodeError as exc:
        raise DecontamError(f"{p}: not UTF-8 ({exc.reason})") from None
    except json.JSONDecodeError as exc:
        raise DecontamError(f"{p}:{exc.lineno}: not JSON ({exc.msg})") from None
    return validate_report(data, str(p))


def subset_ids(report: dict[str, Any], benchmark: str | None = None) -> tuple[set[str], set[str]]:
    """(clean task ids, contaminated task ids), for one benchmark or all."""
    clean, dirty = set(), set()
    for item in report["items"]:
        if benchmark is None or item["benchmark"] == benchmark:
            (dirty if item["contaminated"] else clean).add(item["task_id"])
    return clean, dirty


def ids_document(report: dict[str, Any]) -> dict[str, Any]:
    """What `<report>.clean_ids.json` holds: per benchmark, sorted clean and contaminated task ids."""
    out: dict[str, Any] = {"schema": "tunedeck.contamination.ids", "version": 1, "method": report["method"],
                           "benchmarks": {}}
    for bench in report["summary"]:
        clean, dirty = subset_ids(report, bench)
        out["benchmarks"][bench] = {"clean": sorted(clean), "contaminated": sorted(dirty)}
    return out
