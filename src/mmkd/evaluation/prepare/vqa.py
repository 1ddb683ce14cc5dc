"""Converter for VQA sets (`prepare.layout: vqa_records`): question records + image folder -> `vqa.jsonl`.

Records come from JSON lists (SLAKE's train/validate/test.json, VQA-RAD's single public JSON) or
from pickled lists of plain dicts (PathVQA's `*_vqa.pkl`), which are read by an unpickler that
resolves no class at all: only built-in containers, strings and numbers can be in them, so no
code can run (anything else is refused).

Spec keys: `files` (split -> pattern) or `file` + `split_field` + `split_map`; `fields` (record key
of image, question, answer, answer_type); `keep` (e.g. `{q_lang: en}`: SLAKE's English questions);
`images` (pattern with `{image}`, and `{split}` for per-split folders mapped by `split_folders`);
`image_suffix` (added to the record's image id, PathVQA); `answer_from: best_label` when the answer
is PathVQA's `{answer: score}` label dict.

Output: `vqa.jsonl` rows {image, question, answer, answer_type, split} (format `vqa`) and
`images/` (one copy of each image used).
"""

from __future__ import annotations

import io
import json
import pickle
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

from mmkd.errors import DataError, UsageError
from mmkd.evaluation.prepare.common import Context, Plan, need, safe_name
from mmkd.evaluation.prepare.download import Download, Member, UnrecognisedDownload, refuse_placeholder


class _PlainUnpickler(pickle.Unpickler):
    """Unpickles built-in containers, strings and numbers only: every class lookup is refused."""

    def find_class(self, module: str, name: str):
        raise pickle.UnpicklingError(f"refusing to load {module}.{name}: only plain lists/dicts are read")


def read_records(member: Member) -> list[dict[str, Any]]:
    data = member.read_bytes()
    refuse_placeholder(member.path, data[:512])
    if member.path.lower().endswith((".pkl", ".pickle")):
        try:
            records = _PlainUnpickler(io.BytesIO(data)).load()
        except (pickle.UnpicklingError, EOFError, ValueError) as e:
            raise DataError(f"{member.path}: not a pickle of plain records ({e})") from None
    else:
        try:
            records = json.loads(data.decode("utf-8-sig"))
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise DataError(f"{member.path}: not UTF-8 JSON ({e})") from None
    if isinstance(records, dict):  # {qid: record}
        records = list(records.values())
    if not isinstance(records, list) or not all(isinstance(r, dict) for r in records):
        raise DataError(f"{member.path}: expected a list of question records")
    return records


def _answer(value: Any, how: str | None) -> str:
    if how == "best_label" and isinstance(value, dict):
        return str(max(value.items(), key=lambda kv: kv[1])[0]) if value else ""
    return str(value)


def vqa_records(download: Download, spec: dict, ctx: Context) -> Plan:
    where = f"datasets.{ctx.name}"
    fields = {"image": "image", "question": "question", "answer": "answer", "answer_type": "answer_type",
              **(spec.get("fields") or {})}
    keep = {str(k): v for k, v in (spec.get("keep") or {}).items()}
    per_split: list[tuple[str, Member]] = []
    if "files" in spec:
        for split, pattern in spec["files"].items():
            found = download.match(pattern)
            if len(found) > 1:
                raise UsageError(f"--from: several files match the {split} questions ({', '.join(m.path for m, _ in found)})")
            if found:
                per_split.append((str(split), found[0][0]))
        if not per_split:
            raise UnrecognisedDownload(download, "no question file", ctx.expected)
        absent = [s for s in spec["files"] if s not in dict(per_split)]
        if absent:
            raise UnrecognisedDownload(download, f"no question file for split(s) {', '.join(absent)}", ctx.expected)
    else:
        per_split.append(("", download.one(need(spec, "file", where), "question file", ctx.expected)))
    split_map = {str(k): str(v) for k, v in (spec.get("split_map") or {}).items()}
    split_field = str(spec.get("split_field", ""))
    rows: list[dict[str, Any]] = []
    skipped: dict[str, list[str]] = defaultdict(list)  # reason -> record ids
    for split, member in per_split:
        for record in read_records(member):
            if any(str(record.get(k)) != str(v) for k, v in keep.items()):
                continue
            row_split = split or split_map.get(str(record.get(split_field)))
            if row_split is None:
                raise DataError(f"{member.path}: {split_field}={record.get(split_field)!r} "
                                f"is not in the split map ({', '.join(split_map)})")
            missing = [fields[k] for k in ("image", "question", "answer")
                       if record.get(fields[k]) is None or str(record.get(fields[k])).strip() == ""]
            if missing:
                skipped[f"{member.path.rsplit('/', 1)[-1]}: empty or missing {', '.join(missing)}"].append(
                    str(record.get("qid", record.get("question_id", len(rows)))))
                continue
            rows.append({"image": str(record[fields["image"]]) + str(spec.get("image_suffix", "")),
                         "question": str(record[fields["question"]]).strip(),
                         "answer": _answer(record[fields["answer"]], spec.get("answer_from")).strip(),
                         "answer_type": str(record.get(fields["answer_type"], "") or ""),
                         "split": row_split})
    if not rows:
        raise UnrecognisedDownload(download, "question files with no record to keep", ctx.expected)
    split_folders = {str(k): str(v) for k, v in (spec.get("split_folders") or {}).items()}
    index: dict[tuple[str, str], Member] = {}
    for member, captured in download.match(need(spec, "images", where)):
        index[(captured.get("split", ""), captured["image"].lower())] = member
    per_split_folders = any(k for k, _ in index)
    for row in rows:
        folder = split_folders.get(row["split"], row["split"]) if per_split_folders else ""
        row["_member"] = index.get((folder, row["image"].lower()))
    missing = sorted({r["image"] for r in rows if r["_member"] is None})
    if missing:
        raise UnrecognisedDownload(download, f"{len(missing)} image(s) the questions use are missing (e.g. "
                                             f"{missing[0]})", ctx.expected)
    counts: dict[str, dict[str, int]] = defaultdict(dict)
    for split, kinds in _by_split_and_type(rows).items():
        counts[split] = kinds

    def write(folder: Path) -> dict:
        folder.mkdir(parents=True, exist_ok=True)
        jobs, names = [], {}
        for row in rows:
            member = row["_member"]
            if member.path not in names:
                names[member.path] = "images/" + "/".join(safe_name(p) for p in row["image"].split("/") if p)
                jobs.append((member, folder / names[member.path]))
        download.copy_many(jobs, progress=f"{ctx.name}: copy images", link=ctx.link)
        with open(folder / ctx.file_name, "w", encoding="utf-8") as f:
            for row in rows:
                out = {k: v for k, v in row.items() if k != "_member"}
                out["image"] = names[row["_member"].path]
                f.write(json.dumps(out, ensure_ascii=False) + "\n")
        return {"format": "vqa", "file": ctx.file_name, "images": len(jobs)}

    notes = [f"skipped {len(ids)} record(s), {reason} (id {', '.join(ids[:5])}{' ...' if len(ids) > 5 else ''})"
             for reason, ids in sorted(skipped.items())]
    return Plan(dict(counts), write, notes=notes, skipped={k: len(v) for k, v in sorted(skipped.items())})


def _by_split_and_type(rows: list[dict[str, Any]]) -> dict[str, dict[str, int]]:
    """{split: {closed: n, open: n}} with the answer type as the vqa task reads it."""
    from mmkd.evaluation.vqa import _answer_type, normalize_answer

    out: dict[str, Counter] = defaultdict(Counter)
    for row in rows:
        out[row["split"]][_answer_type(row["answer_type"], normalize_answer(row["answer"]))] += 1
    return {s: dict(sorted(c.items())) for s, c in out.items()}
