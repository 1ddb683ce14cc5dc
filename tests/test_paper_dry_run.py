"""`make paper-dry-run`: the paper's pipeline at full size, in the published file formats, on 32 pairs.

Slow (tens of minutes on 2 CPU cores, about 10 GB of scratch files): `make test-slow`.
"""

import subprocess
import sys

import pytest

from conftest import ROOT


@pytest.mark.slow
def test_paper_dry_run_passes_every_stage(tmp_path):
    proc = subprocess.run([sys.executable, str(ROOT / "bench" / "paper_dry_run.py"), "--out", str(tmp_path / "dry")],
                          capture_output=True, text=True, timeout=3 * 3600)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    out = proc.stdout
    for stage in ("teachers --check (nine)", "student init equals the files", "pretrain", "extract BMCA-CLIP",
                  "extract MedCLIP", "align", "distill (mmkd defaults)", "eval (zero-shot, retrieval)", "export",
                  "open_clip loads the export"):
        line = next((x for x in out.splitlines() if x.startswith(stage)), "")
        assert " ok " in line, (stage, out)
    assert "KiB per sample" in out and "PASSED" in out
