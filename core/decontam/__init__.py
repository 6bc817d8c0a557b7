"""Contamination checking of training data against eval sets (OpenAI's 50-character substring method).

Public API: run_check (returns the report, writes nothing), scan (the report plus the flagged rows, for
write_outputs), Cancelled, DecontamError, load_report, merge_reports, subset_ids, ids_document, write_outputs,
write_clean.

Decisions worth knowing:
- Processing keeps `str.isalnum()` characters; casefold is per character and 1:1 (see normalize.py).
- Each text field of a row is matched on its own (no match spans two rows or two fields of a row); chat lists
  give one field per message (`messages[3].content`). Default fields: every string field and list of
  strings/messages except the row id (`id`, `task_id`), which fills `train_id`.
- sampled: 3 distinct windows per question from random.Random(f"{seed}:{benchmark}:{task_id}"), the whole
  processed question if shorter than `window`; a match is a window found whole (first occurrence per field).
  exhaustive: maximal common substrings of >= min(window, len(question)) characters on one alignment (the
  union of all matching windows there); `windows` is empty, `matched_spans` counts rows per eval span.
  ngram13: lowercase 13-word n-grams (whole question under 13 words), merged into maximal spans.
- An item is contaminated when any row matches. Windows/spans matching more than `boilerplate_rows` rows are
  listed in `boilerplate_windows` (reported, not excluded); `matches` keeps the first `max_matches_per_item`
  in training order, `n_matching_rows` counts them all.

- A training file whose rows hold no text at all (numbers only, no string field) is an error: nothing was
  compared, so "0 contaminated" would be false comfort. With allow_no_text the report is written with a
  "NO TEXT CHECKED: ..." entry in `warnings`.
- A JSONL line over 8 MB is streamed from the file and its long strings matched a window at a time
  (longline.py, matcher.scan_long), with the same result as matching it whole: memory does not grow with it.

Report (schema "tunedeck.contamination", version 1): method, params, seed, train {files [{path, sha256, rows,
bytes, text_rows, text_chars}], fingerprint, rows, text_chars}, evals [{benchmark, path, sha256, n_items}], items
[{benchmark, task_id, question, contaminated, windows [{text, eval_span, n_rows}], n_matching_rows, matches
[{train_index, train_id, field, eval_span, train_span, text, window, file_index, file_row}], matched_spans,
boilerplate_windows}], summary {benchmark: {items, contaminated, percent}}, shard (null, or {index, count} in a
partial report), warnings [text].
"""

from core.decontam.clean import write_clean, write_outputs
from core.decontam.errors import DecontamError
from core.decontam.report import SCHEMA, VERSION, ids_document, load_report, merge_reports, subset_ids
from core.decontam.run import Cancelled, run_check, scan

__all__ = ["SCHEMA", "VERSION", "Cancelled", "DecontamError", "ids_document", "load_report", "merge_reports",
           "run_check", "scan", "subset_ids", "write_clean", "write_outputs"]
