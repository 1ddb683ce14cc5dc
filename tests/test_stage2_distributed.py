"""Stage 2 under torchrun equals one process: the same loss terms and gradients for every target space.

Two gloo processes take unequal consecutive parts (9 + 7 rows) of one global batch of 16; one
process takes all 16. Each builds the real DistillTask on a real feature store (one teacher
available for half the rows only), runs the forward (under DDP when distributed) and the
backward, and writes its loss terms and DDP-averaged gradients (tests/stage2_worker.py).
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from safetensors.torch import load_file

from helpers import COLORS, SHAPES, free_port, make_pairs, write_store
from mmkd.data.feature_store import FeatureStore
from mmkd.models.alignment import WEIGHTS_FILE, AlignmentAE, save_alignment
from mmkd.teachers.testing import make_open_clip_teacher

WORKER = Path(__file__).with_name("stage2_worker.py")
PAPER = ["--distill.icl_form", "paper", "--distill.projection", "linear", "--distill.normalize_targets", "false",
         "--distill.learnable_icl_temperature", "false", "--distill.icl_temperature", "0.3760444582747206"]
CASES = {
    "projection": ["--distill.target_space", "projection"],
    "projection-paper": ["--distill.target_space", "projection", *PAPER],
    "adaptor": ["--distill.target_space", "adaptor"],
    "relational": ["--distill.target_space", "relational", "--distill.lambda_kl", "1"],
    "decision": ["--distill.target_space", "decision", "--distill.lambda_decision", "1"],
}
FAST = ("projection-paper",)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("stage2dist")
    table = make_pairs(root / "data", n=32)
    store = write_store(table, root / "store", dims=(24, 40))
    save_alignment(AlignmentAE({"t0": 24, "t1": 40}, 64), store / WEIGHTS_FILE, FeatureStore(store), {})
    teacher = make_open_clip_teacher(root / "teacher", embed_dim=32)
    rows = ["image,modality,sample_id"] + [f"img/{i:05d}.png,toy,u{i}" for i in range(32)]
    (root / "data" / "images.csv").write_text("\n".join(rows) + "\n")
    classes = [f"a {c} {s}" for c in COLORS for s in SHAPES]
    (root / "vocab.yaml").write_text("toy:\n  classnames: [" + ", ".join(f"'{c}'" for c in classes)
                                     + "]\n  templates: ['{}', 'a photo of {}']\n")
    common = ["--data", str(table), "--store", str(store), "--out", str(root / "run"), "--batch-size", "16",
              "--seed", "3", "--distill.lambda_fd", "50", "--distill.lambda_icl", "1",
              "--data.image_only_path", str(root / "data" / "images.csv"),
              "--distill.decision_vocab", str(root / "vocab.yaml"), "--distill.decision_batch_size", "8",
              "--distill.decision_teachers", json.dumps({"t0": f"local-dir:{teacher}", "t1": f"local-dir:{teacher}"})]
    # Rows 0-15 hold every colour; t0 teaches only the red and green ones.
    return root, {"common": common, "indices": list(range(16)), "split": [9, 7]}


def _run(root: Path, spec: dict, cases: tuple[str, ...], world_size: int, tag: str = "",
         case_args: dict[str, list[str]] | None = None) -> Path:
    """Run the worker; `case_args` gives the cases' tokens directly instead of naming `CASES`."""
    out = root / f"out-{world_size}-{'-'.join(cases)}{tag}"
    out.mkdir()
    spec_file = out / "spec.json"
    spec_file.write_text(json.dumps({**spec, "cases": case_args or {c: CASES[c] for c in cases}}))
    launcher = [sys.executable] if world_size == 1 else [
        sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(world_size), "--master_port",
        str(free_port())]
    r = subprocess.run([*launcher, str(WORKER), str(spec_file), str(out)], capture_output=True, text=True,
                       env=dict(os.environ, OMP_NUM_THREADS="1"), timeout=600)
    assert r.returncode == 0, r.stderr[:6000]
    return out


def _compare(one: Path, two: Path, cases: tuple[str, ...]) -> None:
    for case in cases:
        a, b = load_file(str(one / f"{case}.safetensors")), load_file(str(two / f"{case}.safetensors"))
        assert a.keys() == b.keys(), case
        grads = [k for k in a if k.startswith("grad/")]
        assert len(grads) > 10, case
        for k in a:
            diff = (a[k] - b[k]).abs().max().item()
            assert diff <= 1e-5, f"{case}: {k} differs by {diff}"
        # the distillation terms are really there (not a CLIP-only comparison)
        term = {"relational": "term/kl", "decision": "term/decision"}.get(case, "term/fd")
        assert a[term].item() > 1e-3, (case, a[term])
        if case.startswith("projection") or case == "adaptor":
            assert a["term/icl"].item() > 1e-3 and "term/fd:t0" in a and "term/fd:t1" in a, case
        assert max(a[k].abs().max().item() for k in grads) > 1e-4, case


@pytest.mark.distributed
def test_one_space_under_torchrun_equals_one_process(setup):
    """The authors' form (one ICL matrix across teachers) on unequal per-rank batches: fast."""
    root, spec = setup
    _compare(_run(root, spec, FAST, 1), _run(root, spec, FAST, 2), FAST)


@pytest.mark.distributed
@pytest.mark.slow
def test_every_target_space_under_torchrun_equals_one_process(setup):
    cases = tuple(CASES)
    _compare(_run(*setup, cases, 1), _run(*setup, cases, 2), cases)
    one = load_file(str(setup[0] / f"out-1-{'-'.join(cases)}" / "projection.safetensors"))
    paper = load_file(str(setup[0] / f"out-1-{'-'.join(cases)}" / "projection-paper.safetensors"))
    assert abs(one["term/icl"].item() - paper["term/icl"].item()) > 1e-4, "the two ICL forms differ"


@pytest.mark.distributed
@pytest.mark.slow
def test_a_rank_without_rows_still_equals_one_process(setup):
    """All 16 rows on rank 0, none on rank 1 (e.g. every sample it read was unreadable)."""
    root, spec = setup
    cases = ("projection-paper", "relational")
    one = _run(root, spec, cases, 1, "-all")
    _compare(one, _run(root, {**spec, "split": [16, 0]}, cases, 2, "-empty"), cases)
