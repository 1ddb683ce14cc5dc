"""The fuzz campaign over every reader a user can feed (tests/reliability/fuzz.py): every generated
input works or ends with a clear error (exit 2, no traceback), and nothing outside the output
folder changes. A small slice runs in `make test`; the full campaign is slow (`make reliability`)
and its figures go into docs/RELIABILITY.md with `python tests/reliability/fuzz.py --write-docs`."""

from __future__ import annotations

import pytest

from fuzz import READERS, figures_line, run_campaign
from rel_helpers import report


def _run(tmp_path, examples: int, readers=READERS):
    work = tmp_path / "work"
    work.mkdir()
    campaign = run_campaign(examples, work, readers)
    return campaign


@pytest.mark.parametrize("readers", [("csv", "jsonl", "tar"), ("catalog", "config"), ("safetensors",),
                                     ("manifest",), ("meta_jsonl",)])
def test_fuzz_slice_every_input_works_or_is_refused_cleanly(tmp_path, readers):
    campaign = _run(tmp_path, 12, readers)
    figures = campaign.figures()
    assert all(figures[r]["tried"] > 0 for r in readers), figures
    assert not campaign.crashes, campaign.crashes[0]


@pytest.mark.slow
def test_campaign_fuzz_every_reader(tmp_path, capsys):
    campaign = _run(tmp_path, 300)
    with capsys.disabled():
        print("\n" + figures_line(campaign), flush=True)
    figures = campaign.figures()
    report(capsys, "fuzz totals", inputs_tried=sum(f["tried"] for f in figures.values()),
           clean_refusals=sum(f["refused"] for f in figures.values()), crashes=len(campaign.crashes))
    assert not campaign.crashes, "\n----\n".join(campaign.crashes[:5])
