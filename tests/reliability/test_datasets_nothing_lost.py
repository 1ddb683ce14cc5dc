"""Nothing lost by `mmkd datasets prepare|check`: --overwrite removes only what prepare wrote, an
output overlapping the download is refused, damaged or non-image data is named, never passed.

Commands run in-process through `mmkd.cli.main` (any exception but a UsageError surfaces as a
test error); the downloads are miniatures of LC25000 and BUSI written by the test."""

from __future__ import annotations

import io
import os
import zipfile
from pathlib import Path

import numpy as np
import pytest

from mmkd.cli import main


def _png(seed: int) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(seed).integers(0, 255, (8, 8, 3), dtype=np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


def _lc25000(path: Path, per_class: int = 2, compression: int = zipfile.ZIP_DEFLATED) -> Path:
    with zipfile.ZipFile(path, "w", compression) as z:
        for cls in ("lung_aca", "lung_n", "lung_scc"):
            for i in range(1, per_class + 1):
                z.writestr(f"lung_colon_image_set/lung_image_sets/{cls}/{cls.replace('_', '')}{i}.jpeg", _png(i))
    return path


def _busi(root: Path, image=_png) -> Path:
    for cls, n in (("benign", 2), ("malignant", 1), ("normal", 1)):
        (root / "Dataset_BUSI_with_GT" / cls).mkdir(parents=True)
        for i in range(1, n + 1):
            (root / "Dataset_BUSI_with_GT" / cls / f"{cls} ({i}).png").write_bytes(image(i))
            (root / "Dataset_BUSI_with_GT" / cls / f"{cls} ({i})_mask.png").write_bytes(_png(0))
    return root


def snapshot(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def cli(capsys, *args) -> tuple[int, str]:
    capsys.readouterr()
    code = main([str(a) for a in args])
    captured = capsys.readouterr()
    return code, captured.err + captured.out


@pytest.fixture()
def data(tmp_path, monkeypatch) -> Path:
    monkeypatch.setenv("MMKD_DATA", str(tmp_path / "data"))
    return tmp_path / "data"


def test_prepare_overwrite_removes_only_what_prepare_wrote(tmp_path, data, capsys):
    download = _lc25000(tmp_path / "LC25000.zip")
    mine = tmp_path / "paper"
    mine.mkdir()
    (mine / "paper.tex").write_text("\\section{Results}")
    (mine / "notes.md").write_text("todo")
    before = snapshot(mine)
    for extra in ([], ["--overwrite"]):
        code, out = cli(capsys, "datasets", "prepare", "lc25000_lung", "--from", download, "--out", mine,
                        "--accept-counts", *extra)
        assert code == 2 and snapshot(mine) == before, out
    assert "not made by `mmkd datasets prepare`" in out and "nothing in it is removed" in out
    # $MMKD_DATA/NAME: prepared, then the user keeps notes there (also inside a class folder)
    target = data / "lc25000_lung"
    assert cli(capsys, "datasets", "prepare", "lc25000_lung", "--from", download, "--accept-counts")[0] == 0
    (target / "NOTES.txt").write_text("the 2024 copy")
    (target / "all" / "lung_n" / "my_crop.txt").write_text("mine")
    smaller = _lc25000(tmp_path / "LC25000-1.zip", per_class=1)
    code, out = cli(capsys, "datasets", "prepare", "lc25000_lung", "--from", smaller, "--accept-counts", "--overwrite")
    assert code == 0, out
    assert "kept 2 file(s)" in out and "NOTES.txt" in out
    assert (target / "NOTES.txt").read_text() == "the 2024 copy"
    assert (target / "all" / "lung_n" / "my_crop.txt").read_text() == "mine"
    assert sorted(p.name for p in (target / "all").rglob("*.jpeg")) == ["lungaca1.jpeg", "lungn1.jpeg", "lungscc1.jpeg"]
    assert len((target / "all.txt").read_text().splitlines()) == 3
    assert cli(capsys, "datasets", "check", "lc25000_lung")[0] == 0


@pytest.mark.parametrize("where", ["same", "inside"])
def test_prepare_output_overlapping_the_download_is_refused(tmp_path, data, capsys, where):
    download = _busi(tmp_path / "dl")
    before = snapshot(download)
    out_dir = download if where == "same" else download / "prepared"
    code, out = cli(capsys, "datasets", "prepare", "busi", "--from", download, "--out", out_dir, "--overwrite",
                    "--accept-counts")
    assert code == 2 and "overlaps the download" in out and str(download) in out, out
    assert snapshot(download) == before  # every *_mask.png still there


def test_check_names_deleted_images_and_prepare_refuses_files_that_are_not_images(tmp_path, data, capsys):
    download = _busi(tmp_path / "dl")
    assert cli(capsys, "datasets", "prepare", "busi", "--from", download, "--accept-counts")[0] == 0
    code, out = cli(capsys, "datasets", "check", "busi")
    assert code == 0 and "found    busi" in out, out
    images = sorted((data / "busi" / "all").rglob("*.png"))
    for image in images[:2]:
        image.unlink()
    code, out = cli(capsys, "datasets", "check", "busi")
    assert code == 1 and "damaged  busi" in out, out
    assert f"2 of the 4 images listed in all.txt are missing: {images[0]}, {images[1]}" in out
    (data / "busi" / "all.txt").write_text("".join(ln + "\n" for ln in (data / "busi" / "all.txt").read_text()
                                                   .splitlines()[2:]))
    code, out = cli(capsys, "datasets", "check", "busi")
    assert code == 1 and "the counts differ from PREPARED.json" in out and "benign: 0 now, 2 prepared" in out, out
    # files named right whose content is not an image: refused after counting, nothing written
    fake = _busi(tmp_path / "fake", image=lambda i: b"<html>not found</html>" if i == 1 else _png(i))
    code, out = cli(capsys, "datasets", "prepare", "busi", "--from", fake, "--out", tmp_path / "out",
                    "--accept-counts")
    assert code == 2 and "3 of the 4 images listed in all.txt are not readable images" in out, out
    assert not (tmp_path / "out").exists() and not (tmp_path / "out.partial").exists()


def test_zip_member_with_a_bad_crc_is_named_with_the_fix(tmp_path, data, capsys):
    download = _lc25000(tmp_path / "LC25000.zip", compression=zipfile.ZIP_STORED)
    raw = bytearray(download.read_bytes())
    with zipfile.ZipFile(download) as z:
        info = z.getinfo("lung_colon_image_set/lung_image_sets/lung_n/lungn2.jpeg")
        start = info.header_offset + 30 + len(info.filename.encode()) + len(info.extra)
    raw[start + 40] ^= 0xFF  # one flipped byte in the stored member
    download.write_bytes(bytes(raw))
    code, out = cli(capsys, "datasets", "prepare", "lc25000_lung", "--from", download, "--accept-counts")
    assert code == 2, out
    assert ("lung_colon_image_set/lung_image_sets/lung_n/lungn2.jpeg in " + str(download)) in out
    assert "Bad CRC-32" in out and "download it again" in out and "internal error" not in out
    assert not (data / "lc25000_lung").exists() and not (data / "lc25000_lung.partial").exists()


def test_a_second_prepare_into_the_same_target_is_refused_naming_the_holder(tmp_path, data, capsys):
    from mmkd.utils.locks import writer_lock

    download = _lc25000(tmp_path / "LC25000.zip")
    data.mkdir()
    with writer_lock(data / ".lc25000_lung.prepare", "--out", "dataset folder", "mmkd datasets prepare lc25000_lung"):
        code, out = cli(capsys, "datasets", "prepare", "lc25000_lung", "--from", download, "--accept-counts")
        assert code == 2 and "being written by another mmkd process" in out and f"pid {os.getpid()}" in out, out
        assert not (data / "lc25000_lung").exists()
    assert cli(capsys, "datasets", "prepare", "lc25000_lung", "--from", download, "--accept-counts")[0] == 0
    assert sorted(p.name for p in data.iterdir()) == ["lc25000_lung"]  # no lock or scratch left behind
