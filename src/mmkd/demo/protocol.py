"""The frozen choices of the demo's comparison: the selection file and its hash.

The validation run (`mmkd demo --eval-split val` with several student seeds) writes
`selection.json`: every choice the test run must not make itself, under `protocol`, and the
evidence it was made from (the ranking of the candidates), with `hash`: the SHA-256 of the
whole file without its `hash` key (canonical JSON: sorted keys, no spaces). The test run
(`mmkd demo --eval-split test --selection FILE`) refuses to run without the file, with a
changed one (its hash no longer matches), or with an option that would override a frozen
choice; it takes the variant, the controls, the seeds, the synthetic test data seed and the
task set of `overall` from it, and writes the hash into every file it writes.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from mmkd.errors import UsageError

PROTOCOL_KEYS = ("variant", "controls", "overall_tasks", "overall_rule", "gate", "stage2", "separation_rule",
                 "selection_student_seeds", "selection_corpus_seeds", "test_student_seeds", "test_corpus_seeds",
                 "test_data_seed", "used_data_seeds", "quick", "claim")
FILE_KEYS = ("protocol", "ranking", "candidates", "command", "code_version", "hash")


def protocol_hash(selection: dict[str, Any]) -> str:
    """SHA-256 of the selection file's content without its `hash` key (canonical JSON)."""
    body = {k: v for k, v in selection.items() if k != "hash"}
    return hashlib.sha256(json.dumps(body, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def make_protocol(chosen: str, rows: list[dict[str, Any]], recipe, corpus_seeds: list[int],
                  test_student_seeds: tuple[int, ...], test_corpus_seeds: tuple[int, ...],
                  test_data_seed: int) -> dict[str, Any]:
    """Every choice of the test run, made on the validation sets (see the module docstring)."""
    from mmkd.demo.recipe import NO_NAMES_VOCAB, SELF_DISTILL, STAGE2_VARIANTS, USED_DATA_SEEDS, base_variant
    from mmkd.demo.table import NEAR_CHANCE

    tasks = list(rows[0].get("overall_tasks", [])) if rows else []
    controls = [SELF_DISTILL] + ([f"{chosen}{NO_NAMES_VOCAB}"] if STAGE2_VARIANTS[base_variant(chosen)].get(
        "distill.lambda_decision", 0.0) > 0 else [])
    return {
        "variant": chosen,
        "controls": controls,
        "overall_tasks": tasks,
        "overall_rule": "per (corpus seed, student seed): the mean over overall_tasks of each task's mean over its "
                        "datasets (headline metric per task); a model's overall is the mean over its runs",
        "gate": "an expert labels a modality's image-only images only where its zero-shot balanced accuracy on the "
                "student's captioned pairs is strictly above the stage-1 student's (mmkd.demo.steps.gate_experts)",
        "stage2": {"steps": recipe.stage2_steps, "lr": recipe.stage2_lr, "batch_size": recipe.batch_size,
                   "decision_temperature": recipe.decision_temperature,
                   "overrides": {v: STAGE2_VARIANTS[base_variant(v)] for v in ("control", chosen, *controls)}},
        "separation_rule": {"near_chance": dict(NEAR_CHANCE), "trained_above": "2 x near_chance"},
        "selection_student_seeds": list(recipe.student_seeds or (recipe.seed,)),
        "selection_corpus_seeds": list(corpus_seeds),
        "test_student_seeds": list(test_student_seeds),
        "test_corpus_seeds": list(test_corpus_seeds),
        "test_data_seed": test_data_seed,
        "used_data_seeds": sorted(set(USED_DATA_SEEDS) | set(corpus_seeds)),
        "quick": recipe.quick,
        "claim": f"`{chosen}` - control in overall (the frozen tasks) on the test sets: mean over corpus seeds of "
                 f"the per-corpus mean paired difference, with a t interval over corpus means (n_corpus - 1 df); "
                 f"the gain is the teachers' only if `{chosen}` - `{SELF_DISTILL}` is positive the same way",
    }


def selection_document(protocol: dict[str, Any], ranking: list[dict[str, Any]], candidates: list[str],
                       command: str, code: str) -> dict[str, Any]:
    doc = {"protocol": protocol, "ranking": ranking, "candidates": candidates, "command": command,
           "code_version": code}
    return {**doc, "hash": protocol_hash(doc)}


def read_selection(path: str | Path, quick: bool) -> dict[str, Any]:
    """The selection file, checked: readable JSON, known keys, an unchanged hash, the same scale (`--quick`)."""
    import difflib

    path = Path(path)
    fix = ("write it with the validation run (mmkd demo --eval-split val --student-seeds 0,1,2 --stage2 ... --out "
           "DIR writes DIR/selection.json) and pass that file unchanged")
    try:
        doc = json.loads(path.read_text())
    except FileNotFoundError:
        raise UsageError(f"--selection: {path} does not exist; {fix}") from None
    except (OSError, UnicodeDecodeError) as e:
        raise UsageError(f"--selection: {path} cannot be read ({e}); {fix}") from None
    except json.JSONDecodeError as e:
        raise UsageError(f"--selection: {path} is not JSON ({e}); {fix}") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("protocol"), dict) or "hash" not in doc:
        raise UsageError(f"--selection: {path} holds no frozen protocol (no `protocol` and `hash`; a selection file "
                         f"of the earlier protocol?); {fix}")
    for where, keys, known in (("", doc, FILE_KEYS), ("protocol.", doc["protocol"], PROTOCOL_KEYS)):
        unknown = [k for k in keys if k not in known]
        if unknown:
            hint = difflib.get_close_matches(unknown[0], known, n=1)
            raise UsageError(f"--selection: {path}: unknown key {where}{unknown[0]!r}"
                             + (f" (did you mean {hint[0]!r}?)" if hint else "") + f"; {fix}")
        missing = [k for k in known if k not in keys]
        if missing:
            raise UsageError(f"--selection: {path}: {where}{missing[0]!r} is missing; {fix}")
    if protocol_hash(doc) != doc["hash"]:
        raise UsageError(f"--selection: {path} was changed after the validation run wrote it (its content hashes to "
                         f"{protocol_hash(doc)[:16]}, the file records {str(doc['hash'])[:16]}); restore the file "
                         f"as written, or make a new selection: {fix}")
    if bool(doc["protocol"]["quick"]) != quick:
        raise UsageError(f"--selection: {path} was made {'with' if doc['protocol']['quick'] else 'without'} --quick; "
                         f"run the test comparison at the same scale")
    return doc
