"""Converters for slide-level sets, written as `slides.csv` (format `slides`) that points at the slides.

Slides and precomputed patch features are large and stay where they were unpacked: `slides.csv`
refers to them by absolute path (so they must be files on disk, not archive members). For each
slide the whole-slide image is used when present, else its features file (CLAM/MCAT's
`pt_files/<slide>.pt` or `h5_files/<slide>.h5`, read by evaluation.slides).

Layout families:
- `survival_mcat`: MCAT's `tcga_<cohort>_all_clean.csv` (or the .csv.zip it ships): case_id,
  slide_id, survival_months, censorship (0 = event observed). Rows -> time, event = 1 - censorship,
  patient_id = case_id. Counted: cases with at least one slide or features file.
- `slide_labels`: slides with a class — from their folder (`files` patterns with `{label}`, e.g.
  CAMELYON16's training/{normal,tumor}/) or from a table (`table`: CLAM's dataset CSV with
  case_id, slide_id, label; or CAMELYON16's headerless testing/reference.csv).
"""

from __future__ import annotations

import csv
from collections import Counter
from pathlib import Path
from typing import Any

from mmkd.errors import DataError, UsageError
from mmkd.evaluation.prepare.common import (FEATURE_EXTS, SLIDE_EXTS, Context, Plan, lacking, need, read_table,
                                            stem_of_slide)
from mmkd.evaluation.prepare.download import Download, Member, UnrecognisedDownload


def case_of(raw: str) -> str:
    """A case id; CLAM's tables repeat some as `"TCGA-KM-A7QI, TCGA-KM-A7QI"` — one id, given twice."""
    parts = list(dict.fromkeys(p.strip() for p in str(raw).split(",") if p.strip()))
    if len(parts) > 1:
        raise DataError(f"case id {raw!r} names {len(parts)} different cases; a slide belongs to one")
    return parts[0] if parts else ""


def slide_files(download: Download, ctx: Context) -> dict[str, Member]:
    """slide id (no extension) -> the slide, or else its features file, among the download's files."""
    slides, features = {}, {}
    for rel, member in download.members.items():
        lower = rel.lower()
        name = rel.rsplit("/", 1)[-1]
        if lower.endswith(SLIDE_EXTS):
            slides[stem_of_slide(name)] = member
        elif lower.endswith(FEATURE_EXTS) and ("/pt_files/" in "/" + lower or "/h5_files/" in "/" + lower
                                               or "/features/" in "/" + lower):
            features.setdefault(stem_of_slide(name), member)
    return {**features, **slides}


def _local(member: Member, ctx: Context) -> str:
    if member.local is None:
        raise UsageError(f"--from: {member.path} is inside an archive ({member.container}); slides and features "
                         f"are used where they lie — unpack the archive and give the folder")
    return str(member.local.resolve())


def _write_slides_csv(folder: Path, rows: list[dict]) -> dict:
    folder.mkdir(parents=True, exist_ok=True)
    columns = [c for c in ("slide_id", "path", "label", "time", "event", "patient_id") if any(c in r for r in rows)]
    with open(folder / "slides.csv", "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=columns)
        writer.writeheader()
        writer.writerows({c: r.get(c, "") for c in columns} for r in rows)
    kinds = Counter("features" if r["path"].lower().endswith(FEATURE_EXTS) else "slide" for r in rows)
    return {"format": "slides", "file": "slides.csv", "inputs": dict(kinds)}


def survival_mcat(download: Download, spec: dict, ctx: Context) -> Plan:
    where = f"datasets.{ctx.name}"
    table = download.one(need(spec, "table", where), "MCAT clinical table", ctx.expected)
    rows = read_table(table)
    if not rows:
        raise UnrecognisedDownload(download, f"{table.path} has no rows", ctx.expected)
    problem = lacking(["case_id", "slide_id", "survival_months", "censorship"], rows[0], table.path)
    if problem:
        raise UnrecognisedDownload(download, problem, ctx.expected)
    files = slide_files(download, ctx)
    out: list[dict[str, Any]] = []
    absent: list[str] = []
    cases: dict[str, int] = {}
    skipped: Counter = Counter()
    for row in rows:
        blank = [c for c in ("case_id", "slide_id", "survival_months", "censorship") if not str(row[c] or "").strip()]
        if blank:
            skipped[f"empty {', '.join(blank)}"] += 1
            continue
        sid = stem_of_slide(row["slide_id"].strip())
        member = files.get(sid)
        if member is None:
            absent.append(sid)
            continue
        try:
            time, censored = float(row["survival_months"]), int(float(row["censorship"]))
        except ValueError:
            raise DataError(f"{table.path}: case {row['case_id']}: survival_months={row['survival_months']!r}, "
                            f"censorship={row['censorship']!r} are not numbers") from None
        case = case_of(row["case_id"])
        out.append({"slide_id": sid, "member": member, "time": time, "event": 1 - censored, "patient_id": case})
        cases[case] = 1 - censored
    if not out:
        raise UnrecognisedDownload(download, f"none of the {len(rows)} slides of {table.path} (e.g. "
                                             f"{stem_of_slide(rows[0]['slide_id'])}) is there as a slide or a "
                                             f"pt_files/h5_files features file", ctx.expected)
    counts = {"all": {"event": sum(cases.values()), "censored": len(cases) - sum(cases.values())}}
    notes = [f"{len(cases)} case(s), {len(out)} slide(s) found"]
    notes += [f"skipped {n} row(s) of {table.path.rsplit('/', 1)[-1]}: {reason}" for reason, n in sorted(skipped.items())]
    if absent:
        notes.append(f"{len(absent)} slide(s) of the table are missing (e.g. {absent[0]})")

    def write(folder: Path) -> dict:
        return _write_slides_csv(folder, [{**{k: v for k, v in r.items() if k != "member"},
                                           "path": _local(r["member"], ctx)} for r in out])

    return Plan(counts, write, notes=notes, skipped=dict(sorted(skipped.items())))


def slide_labels(download: Download, spec: dict, ctx: Context) -> Plan:
    label_map = {str(k).lower(): str(v) for k, v in (spec.get("label_map") or {}).items()}
    excluded = {str(v).lower() for v in spec.get("exclude_labels") or []}

    def label_of(raw: str) -> str:
        return label_map.get(raw.strip().lower(), raw.strip())

    files = slide_files(download, ctx)
    labelled: dict[str, dict] = {}
    dropped: Counter = Counter()
    skipped: Counter = Counter()
    for pattern in spec.get("files") or []:
        for member, fields in download.match(pattern):
            if "label" in fields:
                if fields["label"].strip().lower() in excluded:
                    dropped[fields["label"].strip()] += 1
                    continue
                sid = stem_of_slide(member.path.rsplit("/", 1)[-1])
                labelled[sid] = {"slide_id": sid, "label": label_of(fields["label"])}
    table_spec = spec.get("table")
    if table_spec:
        table = download.one(table_spec["file"], "slide label table", ctx.expected)
        header = bool(table_spec.get("header", True))
        id_col, label_col, patient_col = table_spec.get("id", "slide_id"), table_spec.get("label", "label"), \
            table_spec.get("patient")
        rows = read_table(table, header)
        if header and rows:
            problem = lacking([c for c in (id_col, label_col, patient_col) if c is not None], rows[0], table.path)
            if problem:
                raise UnrecognisedDownload(download, problem, ctx.expected)
        for row in rows:
            try:
                sid, raw = stem_of_slide(str(row[id_col]).strip()), str(row[label_col])
            except IndexError:
                raise UnrecognisedDownload(download, f"{table.path}: a row has no column {id_col}/{label_col} "
                                                     f"({row})", ctx.expected) from None
            if raw.strip().lower() in excluded:
                dropped[raw.strip()] += 1
                continue
            if not sid or not raw.strip():
                skipped[f"empty {id_col if not sid else label_col}"] += 1
                continue
            labelled[sid] = {"slide_id": sid, "label": label_of(raw)}
            if patient_col is not None:
                labelled[sid]["patient_id"] = case_of(row[patient_col])
    allowed = [str(v) for v in spec.get("labels") or []]
    bad = sorted({r["label"] for r in labelled.values()} - set(allowed)) if allowed else []
    if bad:
        raise DataError(f"dataset {ctx.name}: the table's label(s) {', '.join(bad)} are none of the expected "
                        f"{', '.join(allowed)}; map them with prepare.label_map or leave them out with "
                        f"prepare.exclude_labels")
    out, absent = [], []
    for sid, row in sorted(labelled.items()):
        if sid in files:
            out.append({**row, "member": files[sid]})
        else:
            absent.append(sid)
    if not out:
        raise UnrecognisedDownload(download, "no labelled slide (or features file) found", ctx.expected)
    counts = {"all": dict(sorted(Counter(r["label"] for r in out).items()))}
    notes = [f"left out {n} slide(s) labelled {label!r} (prepare.exclude_labels)" for label, n in sorted(dropped.items())]
    notes += [f"skipped {n} row(s) of the label table: {reason}" for reason, n in sorted(skipped.items())]
    if absent:
        notes.append(f"{len(absent)} labelled slide(s) are missing (e.g. {absent[0]})")

    def write(folder: Path) -> dict:
        return _write_slides_csv(folder, [{**{k: v for k, v in r.items() if k != "member"},
                                           "path": _local(r["member"], ctx)} for r in out])

    left_out = {f"label {label!r} excluded": n for label, n in sorted(dropped.items())}
    return Plan(counts, write, notes=notes, skipped={**left_out, **dict(sorted(skipped.items()))})
