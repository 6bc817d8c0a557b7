"""Launch preflight: the guardrails (core.guardrails) judged against the profile's last cluster check.

The check is re-run when the stored one is older than a day or missing (`cluster_facts`); the refusal is
`LaunchRefused` (remote.runs.launch raises it unless forced), the same findings the config page shows.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from core.config import RunConfig
from core.guardrails import CHECK_MAX_AGE_S, ClusterFacts, MissingPart, Preflight, launch_findings
from core.placement import PlacementError, parse_devices
from remote.check import CheckReport, check_cluster, gpu_facts, load_report, save_report
from remote.transport import Transport

log = logging.getLogger(__name__)


def facts_from_report(report: CheckReport, fresh: bool) -> ClusterFacts:
    gpus, name, mem, source = gpu_facts(report)
    missing = tuple(MissingPart(i.name, i.value, i.fix) for i in report.missing)
    return ClusterFacts(profile=report.profile, backend=report.backend, checked_at=report.checked_at,
                        missing=missing, install_command=report.install_command, gpus_per_node=gpus,
                        gpu_name=name, gpu_memory_gb=mem, gpu_source=source, fresh=fresh)


def last_check(profile: Any, transport: Transport | None = None, *, max_age_s: float = CHECK_MAX_AGE_S,
               refresh: bool = True) -> tuple[CheckReport | None, bool]:
    """(the profile's check, whether it was run just now): the stored one when younger than max_age_s, else
    a new one (saved) when `refresh`; None when there is none and refresh is off."""
    report = load_report(profile.name)
    if report is not None and report.backend in ("", profile.backend) and time.time() - report.checked_at < max_age_s:
        return report, False
    if not refresh:
        return report, False
    report = check_cluster(profile, transport)
    if not report.backend:
        report = CheckReport(report.profile, report.items, report.raw, report.checked_at, profile.backend)
    try:
        save_report(report)
    except OSError as exc:  # judging this launch does not need the file; the next one re-checks
        log.warning("cannot keep the check of %s: %s", profile.name, exc)
    return report, True


def cluster_facts(profile: Any, transport: Transport | None = None, *, refresh: bool = True) -> ClusterFacts | None:
    report, fresh = last_check(profile, transport, refresh=refresh)
    return None if report is None else facts_from_report(report, fresh)


def preflight(config: RunConfig, profile: Any, transport: Transport | None = None, *,
              refresh: bool = True) -> Preflight:
    """Everything that makes launching `config` on `profile` certain to fail (see core.guardrails)."""
    notes: list[str] = []
    try:
        devices = parse_devices(getattr(profile, "eval_devices", None))
    except PlacementError as exc:
        devices = ()
        notes.append(str(exc))
    facts = cluster_facts(profile, transport, refresh=refresh)
    if facts is None:
        notes.append(f"cluster {profile.name!r} has never been checked: it is checked at launch")
    fits, text = None, ""
    if config.model.architecture is not None:
        from core.estimate import estimate

        est = estimate(config)
        fits = est.fits
        if est.fits is False:
            text = (f"peak {est.peak_gb:.1f} GB per GPU (ZeRO-{est.zero_stage} over {est.world_size} GPUs) > "
                    f"{est.gpu_memory_gb:g} GB")
    findings = launch_findings(config, profile.backend, facts, eval_devices=devices, estimate_fits=fits,
                               estimate_text=text)
    return Preflight(tuple(findings), facts, tuple(notes))
