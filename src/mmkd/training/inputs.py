"""What a run depends on besides its settings, recorded by digest and compared on resume.

Every checkpoint's train_state.json holds `inputs`:

    data       {path, num_samples, sample_ids_sha256}: the samples trained on, in the data's order
               (a selection replaced by `mmkd data select --overwrite`, rows added to a CSV, ...)
    alignment  {path, sha256}: the alignment weights stage 2 projects teacher features with (only when it
               reads one; `mmkd align` run again replaces the file)
    init       {path, sha256[, from_checkpoint]}: where the weights started: --init, or the checkpoint of
               another run given to --resume PATH (the run then continues that one)

A resume recomputes them and refuses, before anything is loaded or written, when the data or the
alignment differ from what the checkpoint recorded: the steps after it would train on other samples
or towards other targets than the steps before, and nothing in the run would show it. The starting
weights are carried from checkpoint to checkpoint (they cannot change under a running run).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from mmkd.config import Config
from mmkd.errors import UsageError


def _sha256(path: Path) -> str:
    from mmkd.utils.io import sha256_file

    return sha256_file(path)


def starting_point(cfg: Config, run_dir: Path, resume_from: Path | None, saved: dict[str, Any] | None
                   ) -> dict[str, Any] | None:
    """The `init` input: carried over on a resume of this run, the checkpoint of another run, or --init."""
    from mmkd.utils.runs import MODEL_FILE, is_own_checkpoint

    own = resume_from is not None and is_own_checkpoint(resume_from, run_dir)
    if own:  # carried from checkpoint to checkpoint: --init is not read again (it may have moved on or gone)
        return ((saved or {}).get("inputs") or {}).get("init")
    if resume_from is not None:
        weights = resume_from / MODEL_FILE
        return {"path": str(resume_from.resolve()), "from_checkpoint": True,
                "sha256": _sha256(weights) if weights.is_file() else None}
    if cfg.model.init:
        from mmkd.models.weights import find_weights

        file = find_weights(cfg.model.init)
        return {"path": str(Path(cfg.model.init).resolve()), "sha256": _sha256(file)}
    return None


def run_inputs(cfg: Config, records, task, run_dir: Path, resume_from: Path | None,
               saved: dict[str, Any] | None) -> dict[str, Any]:
    """The inputs of this run (see the module doc)."""
    from mmkd.data.index import sample_ids_of
    from mmkd.data.records import ids_digest

    inputs: dict[str, Any] = {"data": {"path": cfg.data.path, "num_samples": len(records),
                                       "sample_ids_sha256": ids_digest(sample_ids_of(records))}}
    if getattr(task, "alignment", None) is not None:
        from mmkd.models.alignment import alignment_paths

        weights, _ = alignment_paths(cfg.distill.store, cfg.distill.alignment)
        inputs["alignment"] = {"path": str(weights.resolve()), "sha256": _sha256(weights)}
    init = starting_point(cfg, run_dir, resume_from, saved)
    if init is not None:
        inputs["init"] = init
    return inputs


def check_resume_inputs(saved: dict[str, Any], inputs: dict[str, Any], resume_from: Path) -> None:
    """Refuse a resume whose data or alignment differ from the checkpoint's (checkpoints written before inputs
    were recorded are not compared)."""
    old = saved.get("inputs") or {}
    problems = []
    a, b = old.get("data"), inputs.get("data")
    if a and b and a.get("sample_ids_sha256") != b.get("sample_ids_sha256"):
        problems.append(f"the training data changed: the run trained on {a.get('num_samples')} samples (ids sha256 "
                        f"{str(a.get('sample_ids_sha256'))[:12]}), --data {b['path']} now holds {b['num_samples']} "
                        f"(ids sha256 {b['sample_ids_sha256'][:12]}); was the data or its selection replaced?")
    a, b = old.get("alignment"), inputs.get("alignment")
    if a and b and a.get("sha256") != b.get("sha256"):
        problems.append(f"the alignment changed: {b['path']} was replaced since the checkpoint (sha256 "
                        f"{str(a.get('sha256'))[:12]} then, {b['sha256'][:12]} now; `mmkd align` writes it)")
    elif a and not b:
        problems.append(f"the alignment changed: the run projected teacher features with {a.get('path')}, this "
                        f"resume uses none")
    if problems:
        raise UsageError(f"--resume: cannot continue from {resume_from}: " + "; ".join(problems)
                         + f". Restore what the run was trained with, or start a new run from this checkpoint: "
                           f"--init {resume_from} --out NEW_RUN")


def init_summary(source: dict[str, Any], inputs: dict[str, Any]) -> dict[str, Any]:
    """summary.json's `init`: what the towers were built from, or the other run's checkpoint the run continued."""
    init = inputs.get("init") or {}
    if init.get("from_checkpoint"):
        return {"name": source.get("name"), "init": {"path": init["path"], "sha256": init.get("sha256"),
                                                     "kind": "the checkpoint of another run (--resume PATH)"}}
    return source
