"""Contamination checking of training data against eval sets (OpenAI's 50-character substring method).

Public API: run_check (returns the report), Cancelled, DecontamError, load_report, merge_reports,
subset_ids, write_clean. See report.py for the report's schema.
"""

from core.decontam.clean import write_clean, write_outputs
from core.decontam.reader import DecontamError
from core.decontam.report import SCHEMA, VERSION, ids_document, load_report, merge_reports, subset_ids
from core.decontam.run import Cancelled, run_check, scan

__all__ = ["SCHEMA", "VERSION", "Cancelled", "DecontamError", "ids_document", "load_report", "merge_reports",
           "run_check", "scan", "subset_ids", "write_clean", "write_outputs"]
