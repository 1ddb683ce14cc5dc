"""Broken samples: each is skipped and counted by its reason, the counts are exact, memory stays
bounded, and a cap on the skipped share stops a run with a clear message.

Kinds of damage: truncated, empty, HTML-as-JPEG and decompression-bomb images (a PNG header
claiming 10 gigapixels), missing files, truncated tar members, empty and non-UTF-8 captions
(in a tar .txt member and in the bytes of a CSV file).
"""

from __future__ import annotations

import random
import tarfile
from collections import Counter
from pathlib import Path

import pytest

from mmkd.cli import main
from mmkd.data.pairs import PairDataset, Skip, index_source
from rel_helpers import HTML_PAGE, add_member, bomb_png, one_thread, png_bytes, report, rss_mb

# kind of damage -> the reason it must be counted under
DAMAGE = {
    "good": None,
    "truncated": "unreadable_image",
    "empty": "unreadable_image",
    "html": "unreadable_image",
    "bomb": "decompression_bomb",
    "missing": "missing_file",
    "empty_caption": "empty_caption",
    "blank_caption": "empty_caption",
    "latin1_caption": "bad_caption_encoding",
}


def _image_bytes(kind: str, rng: random.Random) -> bytes | None:
    good = png_bytes(color=(rng.randrange(256), rng.randrange(256), rng.randrange(256)))
    # cut inside the pixel data (a cut in the trailing checksums or IEND leaves every pixel readable)
    return {"truncated": good[: rng.randint(8, len(good) // 2)], "empty": b"", "html": HTML_PAGE,
            "bomb": bomb_png(), "missing": None}.get(kind, good)


def write_csv_corpus(root: Path, kinds: list[str], rng: random.Random) -> Path:
    """A CSV corpus (the file's bytes are not all UTF-8) with one sample per entry of `kinds`."""
    (root / "img").mkdir(parents=True, exist_ok=True)
    lines = [b"image,caption,sample_id"]
    for i, kind in enumerate(kinds):
        name = f"img/{i:05d}.jpg"  # every file claims to be a JPEG; PIL sniffs the real format
        data = _image_bytes(kind, rng)
        if data is not None:
            (root / name).write_bytes(data)
        caption = {"empty_caption": b"", "blank_caption": b"   ",
                   "latin1_caption": "radiographie pulmonaire: opacité".encode("latin-1")}.get(kind, b"a red disc")
        lines.append(name.encode() + b"," + caption + f",s{i}".encode())
    path = root / "pairs.csv"
    path.write_bytes(b"\n".join(lines) + b"\n")
    return path


def write_shard_corpus(root: Path, kinds: list[str], rng: random.Random) -> tuple[Path, Counter]:
    """One tar shard with the same kinds (captions as .txt members), cut inside its last image
    member: that sample is a broken tar member."""
    root.mkdir(parents=True, exist_ok=True)
    shard = root / "shard-000000.tar"
    expected: Counter = Counter()
    with tarfile.open(shard, "w") as tf:
        for i, kind in enumerate(kinds):
            data = _image_bytes(kind, rng)
            if data is not None:
                add_member(tf, f"k{i:05d}.jpg", data)
            caption = {"empty_caption": b"", "blank_caption": b"  ",
                       "latin1_caption": "opacité".encode("latin-1")}.get(kind, b"a red disc")
            add_member(tf, f"k{i:05d}.txt", caption)
            reason = "missing_image" if kind == "missing" else DAMAGE[kind]
            if reason:
                expected[reason] += 1
        add_member(tf, "last.txt", b"the last caption")
        add_member(tf, "last.png", png_bytes(size=(64, 64)) + b"\0" * 4096)
    data = shard.read_bytes()
    cut = data.rfind(b"\x89PNG") + 200  # inside the last image member's data
    shard.write_bytes(data[:cut])
    expected["bad_tar_member"] += 1
    return shard, expected


def count_reasons(dataset: PairDataset) -> tuple[Counter, int]:
    skipped: Counter = Counter()
    good = 0
    for i in range(len(dataset)):
        item = dataset[i]
        if isinstance(item, Skip):
            skipped[item.reason] += 1
        else:
            good += 1
    return skipped, good


def test_every_kind_of_damage_is_counted_exactly_csv_and_shards(tmp_path):
    rng = random.Random(0)
    kinds = [k for k in DAMAGE for _ in range(2)]
    table = write_csv_corpus(tmp_path / "csv", kinds, rng)
    records, _ = index_source(str(table))
    skipped, good = count_reasons(PairDataset(records))
    assert skipped == Counter(DAMAGE[k] for k in kinds if DAMAGE[k])
    assert skipped["unreadable_image"] == 6 and skipped["bad_caption_encoding"] == 2 and good == 2

    shard, expected = write_shard_corpus(tmp_path / "wds", kinds, rng)
    records, index_problems = index_source(str(shard))
    skipped, good = count_reasons(PairDataset(records))
    assert skipped == expected and good == 2
    assert sum(index_problems.values()) <= 1  # the cut shard may also be reported once while indexing


def test_training_counts_skips_by_reason_and_the_cap_stops_a_mostly_broken_run(tmp_path, capsys):
    rng = random.Random(1)
    kinds = ["good"] * 40 + [k for k in DAMAGE if k != "good"]  # 40 good, 8 broken
    table = write_csv_corpus(tmp_path / "ok", kinds, rng)
    out = tmp_path / "run"
    args = ["pretrain", "--data", str(table), "--out", str(out), "--batch-size", "8", "--epochs", "1",
            "--train.progress", "false", "--data.max_skipped_fraction", "0.3"]
    with one_thread():
        assert main(args) == 0
    import json

    summary = json.loads((out / "summary.json").read_text())
    assert summary["num_skipped_samples"] == {"unreadable_image": 3, "decompression_bomb": 1, "missing_file": 1,
                                              "empty_caption": 2, "bad_caption_encoding": 1}
    assert summary["num_samples_seen"] == 40

    broken = write_csv_corpus(tmp_path / "broken", ["good"] * 16 + ["html"] * 24 + ["bomb"] * 8, rng)
    capsys.readouterr()
    with one_thread():
        code = main(["pretrain", "--data", str(broken), "--out", str(tmp_path / "run2"), "--batch-size", "8",
                     "--train.progress", "false", "--data.max_skipped_fraction", "0.3"])
    err = capsys.readouterr().err
    assert code == 2 and "data.max_skipped_fraction=0.3" in err and "unreadable_image" in err, err
    assert "Traceback" not in err


@pytest.mark.slow
def test_campaign_random_corruption_counts_exactly_with_bounded_memory(tmp_path, capsys):
    """Rounds of freshly corrupted corpora (random damage kinds, random truncation points), read
    in full; every skip is counted under the reason its damage implies, and RSS stays flat."""
    rng = random.Random(2024)
    totals: Counter = Counter()
    samples = 0
    rss_after_first = None
    for round_no in range(12):
        kinds = [rng.choice(list(DAMAGE)) for _ in range(200)]
        table = write_csv_corpus(tmp_path / f"r{round_no}", kinds, rng)
        records, _ = index_source(str(table))
        skipped, good = count_reasons(PairDataset(records))
        expected = Counter(DAMAGE[k] for k in kinds if DAMAGE[k])
        assert skipped == expected and good == kinds.count("good")
        totals.update(skipped)
        samples += len(kinds)
        if rss_after_first is None:
            rss_after_first = rss_mb()
    growth = rss_mb() - rss_after_first
    report(capsys, "bad-data campaign", samples=samples, corrupted=sum(totals.values()),
           counted_exactly=sum(totals.values()), by_reason=dict(totals), rss_growth_mb=round(growth, 1))
    assert growth < 64, f"memory grew by {growth:.0f} MiB over the campaign"
