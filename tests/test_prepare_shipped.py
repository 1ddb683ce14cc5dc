"""`mmkd datasets prepare` on the files as their public copies ship them. Each miniature reproduces a
quirk of a real file exactly (member names, nesting, headers, the very records): MCAT's and
PORPOISE's survival zips, SLAKE's train.json, CLAM's tcga_kidney_clean.csv, a Git LFS pointer saved
as pathmnist.npz, an HTML page saved under an archive's name. `mmkd datasets check` checks content."""

import csv
import io
import json
import zipfile

import numpy as np
import pytest

from mmkd.errors import UsageError
from mmkd.evaluation.prepare import prepare_dataset
from mmkd.evaluation.prepare.download import Download, UnrecognisedDownload
from test_prepare import _jpeg, _write_zip, lc25000_zip, paper_entry

# The first columns and rows of MCAT's datasets_csv_sig/tcga_blca_all_clean.csv (pandas' unnamed index first)
MCAT_BLCA = """,case_id,slide_id,site,is_female,oncotree_code,age,survival_months,censorship,train,AAK1_rnaseq
0,TCGA-2F-A9KO,TCGA-2F-A9KO-01Z-00-DX1.195576CF-B739-4BD9-B15B-4A70AE287D3E.svs,2F,0,BLCA,63,24.11,0,1.0,-0.3155
1,TCGA-2F-A9KP,TCGA-2F-A9KP-01Z-00-DX1.3CDF534E-958F-4467-AA7E-FD3C5A86AAAA.svs,2F,0,BLCA,66,11.96,0,1.0,0.5141
2,TCGA-2F-A9KP,TCGA-2F-A9KP-01Z-00-DX2.718C82A3-252B-498E-BFBE-F4E4EB431BF5.svs,2F,0,BLCA,66,11.96,0,1.0,0.5141
"""
# The rows of CLAM's dataset_csv/tcga_kidney_clean.csv that carry its quirks (index 0 is its first row)
CLAM_KIDNEY = """,case_id,slide_id,label
0,TCGA-2K-A9WE,TCGA-2K-A9WE-01Z-00-DX1.ED8ADE3B-D49B-403B-B4EB-BD11D91DD676,TCGA-KIRP
666,TCGA-HB-A3YV,TCGA-HB-A3YV-01Z-00-DX1.47379DF7-1A3B-46B5-AB2E-F7E6516345E9,TCGA-SARC
667,TCGA-HB-A3YV,TCGA-HB-A3YV-01Z-00-DX2.3DE72C59-AC76-4590-96AA-768D326C8AFD,TCGA-SARC
726,"TCGA-KM-A7QI, TCGA-KM-A7QI",TCGA-KM-A7QI-01Z-00-DX1.D5284A3E-891C-4750-BE93-C09C7F23C95C,TCGA-KICH
808,"TCGA-SX-A71S, TCGA-SX-A71S",TCGA-SX-A71S-01Z-00-DX1.7E7ED612-4BB0-4599-9BBA-8E0F8F5C66D1,TCGA-KIRP
"""
# anasraza57/CW2's pathmnist.npz, byte for byte: a clone without `git lfs pull`
LFS_POINTER = (b"version https://git-lfs.github.com/spec/v1\n"
               b"oid sha256:d2486154b3ea504ae8448bc3819fe5ee156903c3b091f1fae5a65e58f3ee3b9d\nsize 295640596\n")
HTML_PAGE = (b"<!DOCTYPE html><html><head><meta http-equiv=\"content-type\" content=\"text/html; charset=utf-8\"/>"
             b"<title>Google Drive - Virus scan warning</title></head><body><p>Google Drive can't scan this file for "
             b"viruses.</p></body></html>")


def _pt_files(folder, table_text, dim=8):
    import torch

    (folder / "pt_files").mkdir(parents=True, exist_ok=True)
    for i, row in enumerate(csv.DictReader(io.StringIO(table_text))):
        stem = row["slide_id"].removesuffix(".svs")
        torch.save(torch.full((2 + i, dim), float(i)), folder / "pt_files" / f"{stem}.pt")


@pytest.mark.parametrize("member", ["../dataset_csv/tcga_blca_all_clean.csv.zip", "./tcga_blca_all_clean.csv.zip"])
def test_mcat_zip_whose_one_member_is_a_plain_csv_named_zip(tmp_path, member):
    """MCAT datasets_csv_sig/ (member `../dataset_csv/…`) and PORPOISE datasets_csv_mutsig/ (`./…`)."""
    dl = tmp_path / "dl"
    _pt_files(dl, MCAT_BLCA)
    with zipfile.ZipFile(dl / "tcga_blca_all_clean.csv.zip", "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr(member, MCAT_BLCA)
    entry = paper_entry("tcga_blca_survival", tmp_path, [{"source": "mini", "counts": {"total": 2}}])
    manifest = prepare_dataset(entry, [str(dl)], log=lambda s: None)
    assert manifest["counts"] == {"all": {"event": 2, "censored": 0}}
    from mmkd.evaluation.slides import read_slides_table

    records = read_slides_table(entry.path)
    assert [(r.patient_id, r.time, r.event) for r in records] == [
        ("TCGA-2F-A9KO", 24.11, 1), ("TCGA-2F-A9KP", 11.96, 1), ("TCGA-2F-A9KP", 11.96, 1)]
    # unzipped by hand: a plain CSV still named .csv.zip, given as the --from file itself and in the folder
    with zipfile.ZipFile(dl / "tcga_blca_all_clean.csv.zip") as z:
        plain = z.read(z.namelist()[0])
    (dl / "tcga_blca_all_clean.csv.zip").write_bytes(plain)
    again = paper_entry("tcga_blca_survival", tmp_path / "b", [{"source": "mini", "counts": {"total": 2}}])
    assert prepare_dataset(again, [str(dl)], log=lambda s: None)["counts"] == manifest["counts"]
    with Download.open([str(dl / "tcga_blca_all_clean.csv.zip")]) as download:
        assert list(download.members) == ["tcga_blca_all_clean.csv.zip"]


def test_archive_members_never_land_outside_the_tree(tmp_path):
    files = {"../../escape/lung_colon_image_set/lung_image_sets/lung_n/lungn1.jpeg": _jpeg(1),
             "./lung_colon_image_set/lung_image_sets/lung_aca/lungaca1.jpeg": _jpeg(2),
             "lung_colon_image_set/./lung_image_sets/../lung_image_sets/lung_scc/lungscc1.jpeg": _jpeg(3)}
    download = _write_zip(tmp_path / "LC25000.zip", files)
    with Download.open([str(download)]) as d:
        assert sorted(d.members) == ["escape/lung_colon_image_set/lung_image_sets/lung_n/lungn1.jpeg",
                                     "lung_colon_image_set/lung_image_sets/lung_aca/lungaca1.jpeg",
                                     "lung_colon_image_set/lung_image_sets/lung_image_sets/lung_scc/lungscc1.jpeg"]
    entry = paper_entry("lc25000_lung", tmp_path, [{"source": "mini", "counts": {"all": {
        "lung_aca": 1, "lung_n": 1, "lung_scc": 1}}}])
    prepare_dataset(entry, [str(download)], log=lambda s: None)
    written = sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*") if p.is_file())
    assert written == ["LC25000.zip", "data/lc25000_lung/PREPARED.json", "data/lc25000_lung/all.txt",
                       "data/lc25000_lung/all/lung_aca/lungaca1.jpeg", "data/lc25000_lung/all/lung_n/lungn1.jpeg",
                       "data/lc25000_lung/all/lung_scc/lungscc1.jpeg"]


def test_slake_record_with_an_empty_answer_is_skipped_and_counted(tmp_path):
    dl = tmp_path / "Slake1.0"
    for img in (1, 281):
        (dl / "imgs" / f"xmlab{img}").mkdir(parents=True)
        (dl / "imgs" / f"xmlab{img}" / "source.jpg").write_bytes(_jpeg(img))
    first = {"img_id": 1, "img_name": "xmlab1/source.jpg", "question": "What modality is used to take this image?",
             "answer": "MRI", "q_lang": "en", "location": "Abdomen", "modality": "MRI", "answer_type": "OPEN",
             "base_type": "vqa", "content_type": "Modality", "triple": ["vhead", "_", "_"], "qid": 0}
    # train.json's qid 1622 as public copies have it (e.g. xiaoman-zhang/PMC-VQA Slake1.0/train.json)
    empty = {"img_id": 281, "img_name": "xmlab281/source.jpg", "question": "Does the picture contain liver?",
             "answer": "", "q_lang": "en", "location": "Chest_lung", "modality": "CT", "answer_type": "OPEN",
             "base_type": "vqa", "content_type": "Organ", "triple": ["vhead", "_", "_"], "qid": 1622}
    (dl / "train.json").write_text(json.dumps([first, empty]))
    (dl / "validate.json").write_text(json.dumps([dict(first, qid=5)]))
    (dl / "test.json").write_text(json.dumps([dict(first, qid=7)]))
    entry = paper_entry("slake", tmp_path, [{"source": "mini", "counts": {"test": 1}}])
    logged = []
    manifest = prepare_dataset(entry, [str(dl)], log=logged.append)
    assert manifest["counts"] == {"train": {"open": 1}, "val": {"open": 1}, "test": {"open": 1}}
    assert manifest["skipped"] == {"train.json: empty or missing answer": 1}
    assert "skipped 1 record(s), train.json: empty or missing answer (id 1622)" in "\n".join(logged)
    assert len(entry.path.read_text().splitlines()) == 3


def test_clam_kidney_table_labels_sarc_rows_index_column_and_doubled_case_ids(tmp_path):
    dl = tmp_path / "dl"
    (dl / "dataset_csv").mkdir(parents=True)
    (dl / "dataset_csv" / "tcga_kidney_clean.csv").write_text(CLAM_KIDNEY)
    _pt_files(dl, CLAM_KIDNEY)
    entry = paper_entry("tcga_rcc_subtyping", tmp_path, [{"source": "mini", "counts": {"all": {
        "KICH": 1, "KIRP": 2}}}])
    logged = []
    manifest = prepare_dataset(entry, [str(dl)], log=logged.append)
    assert manifest["counts"] == {"all": {"KICH": 1, "KIRP": 2}}
    assert "left out 2 slide(s) labelled 'TCGA-SARC' (prepare.exclude_labels)" in "\n".join(logged)
    from mmkd.evaluation.slides import read_slides_table

    assert sorted((r.patient_id, r.label) for r in read_slides_table(entry.path)) == [
        ("TCGA-2K-A9WE", "KIRP"), ("TCGA-KM-A7QI", "KICH"), ("TCGA-SX-A71S", "KIRP")]
    # without the exclusion, the refusal names the unexpected label and both ways out
    assert manifest["skipped"] == {"label 'TCGA-SARC' excluded": 2}
    with pytest.raises(UsageError, match=r"label\(s\) TCGA-SARC are none of the expected KICH, KIRC, KIRP; map them "
                                         r"with prepare.label_map or leave them out with prepare.exclude_labels"):
        prepare_dataset(paper_entry("tcga_rcc_subtyping", tmp_path / "b", exclude_labels=[]), [str(dl)],
                        log=lambda s: None)
    # a table without `label`: the message names that column, not slide_id
    (dl / "dataset_csv" / "tcga_kidney_clean.csv").write_text(",case_id,slide_id\n0,TCGA-2K-A9WE,TCGA-2K-A9WE-01Z\n")
    with pytest.raises(UnrecognisedDownload, match=r"lacks the column 'label' \(it has 'case_id', 'slide_id'\)"):
        prepare_dataset(paper_entry("tcga_rcc_subtyping", tmp_path / "c"), [str(dl)], log=lambda s: None)


def test_lfs_pointer_and_html_page_are_named_for_what_they_are(tmp_path):
    (tmp_path / "medmnist").mkdir()
    (tmp_path / "medmnist" / "pathmnist.npz").write_bytes(LFS_POINTER)
    with pytest.raises(UsageError, match=r"pathmnist.npz is a Git LFS pointer .* of 295,640,596 bytes\), not the "
                                         r"data; run `git lfs pull`"):
        prepare_dataset(paper_entry("pathmnist", tmp_path), [str(tmp_path / "medmnist")], log=lambda s: None)
    (tmp_path / "LC25000.zip").write_bytes(HTML_PAGE)
    with pytest.raises(UsageError, match=r"LC25000.zip is an HTML page titled 'Google Drive - Virus scan warning', "
                                         r"not the data"):
        prepare_dataset(paper_entry("lc25000_lung", tmp_path), [str(tmp_path / "LC25000.zip")], log=lambda s: None)
    # the same page saved inside a download folder, under a table's name
    (tmp_path / "dl").mkdir()
    (tmp_path / "dl" / "tcga_blca_all_clean.csv.zip").write_bytes(HTML_PAGE)
    with pytest.raises(UsageError, match="tcga_blca_all_clean.csv.zip is an HTML page"):
        prepare_dataset(paper_entry("tcga_blca_survival", tmp_path), [str(tmp_path / "dl")], log=lambda s: None)


def test_check_loads_features_and_decodes_images(tmp_path, monkeypatch, capsys):
    """Five cohorts were 'found' with empty pt_files placeholders; check now loads what is listed."""
    from mmkd.cli import main

    monkeypatch.setenv("MMKD_DATA", str(tmp_path / "data"))
    dl = tmp_path / "dl"
    _pt_files(dl, MCAT_BLCA)
    (dl / "tcga_blca_all_clean.csv").write_text(MCAT_BLCA)
    assert main(["datasets", "prepare", "tcga_blca_survival", "--from", str(dl), "--accept-counts"]) == 0
    assert main(["datasets", "prepare", "lc25000_lung", "--from", str(lc25000_zip(tmp_path)), "--accept-counts"]) == 0
    capsys.readouterr()
    assert main(["datasets", "check", "tcga_blca_survival", "lc25000_lung"]) == 0
    assert "2 of 2 dataset(s) found, 0 missing" in capsys.readouterr().out
    pts = sorted((dl / "pt_files").glob("*.pt"))
    for pt in pts[:2]:
        pt.write_bytes(b"")  # placeholders
    pts[2].write_bytes(b"<html>404</html>")
    first = sorted((tmp_path / "data" / "lc25000_lung" / "all" / "lung_n").iterdir())[0]
    first.write_bytes(b"not an image")
    assert main(["datasets", "check", "tcga_blca_survival", "lc25000_lung"]) == 1
    out = capsys.readouterr().out
    assert "damaged  tcga_blca_survival" in out and "2 of the 3 slides or features files are empty (0 bytes)" in out
    assert f"1 of the 1 features files loaded are unreadable: {pts[2]}" in out
    assert "damaged  lc25000_lung" in out and f"1 of the 6 images listed in all.txt are not readable images: {first}" in out
    assert "2 damaged" in out
    np.testing.assert_equal(first.read_bytes(), b"not an image")  # check changes nothing


# UniMed-CLIP's local_data/chexpert-5x200.csv: its header, and rows of its layout (a multi-line quoted report)
CHEXPERT_5X200_HEADER = (",imgpath,Sex,Age,Frontal/Lateral,AP/PA,No Finding,Enlarged Cardiomediastinum,Cardiomegaly,"
                         "Lung Opacity,Lung Lesion,Edema,Consolidation,Pneumonia,Atelectasis,Pneumothorax,Pleural Effusion,"
                         "Pleural Other,Fracture,Support Devices,Report Impression\n")


def test_chexpert_5x200_list_with_one_hot_columns_and_the_chexpert_zip(tmp_path):
    classes = ["Atelectasis", "Cardiomegaly", "Consolidation", "Edema", "Pleural Effusion"]
    columns = CHEXPERT_5X200_HEADER.strip().split(",")
    lines, images = [CHEXPERT_5X200_HEADER], {}
    for i, cls in enumerate(classes * 2):
        path = f"CheXpert-v1.0-small/train/patient{38614 + i:05d}/study1/view1_frontal.jpg"
        values = ["0.0"] * 14
        values[columns.index(cls) - 6] = "1.0"
        lines.append(f'{i},{path},Male,26,Frontal,AP,{",".join(values)},"\n1. minimal atelectasis.\n2. no pneumothorax.\n"\n')
        images[path] = _jpeg(i)
    (tmp_path / "local_data").mkdir()
    (tmp_path / "local_data" / "chexpert-5x200.csv").write_text("".join(lines))
    _write_zip(tmp_path / "CheXpert-v1.0-small.zip", images)
    entry = paper_entry("chexpert_5x200", tmp_path, [{"source": "mini", "counts": {"all": {c: 2 for c in classes}}}])
    manifest = prepare_dataset(entry, [str(tmp_path / "local_data"), str(tmp_path / "CheXpert-v1.0-small.zip")],
                               log=lambda s: None)
    assert manifest["counts"] == {"all": {c: 2 for c in classes}}
    from mmkd.evaluation.datasets import load_classification

    data = load_classification(entry)
    assert data.classnames == classes
    labels = [data.classnames[k] for k in data.splits["all"].labels]
    assert labels == classes * 2
    assert data.splits["all"].images.load(3).size == (8, 8)
    # unpacked instead: --from the folder above CheXpert-v1.0-small/ finds the same images
    with zipfile.ZipFile(tmp_path / "CheXpert-v1.0-small.zip") as z:
        z.extractall(tmp_path / "unpacked")
    again = paper_entry("chexpert_5x200", tmp_path / "b", [{"source": "mini", "counts": {"all": {c: 2 for c in classes}}}])
    assert prepare_dataset(again, [str(tmp_path / "local_data"), str(tmp_path / "unpacked" / "CheXpert-v1.0-small")],
                           log=lambda s: None)["counts"] == manifest["counts"]


def test_survival_rows_with_an_empty_field_are_skipped_and_counted(tmp_path):
    dl = tmp_path / "dl"
    table = MCAT_BLCA + "3,TCGA-2F-A9KQ,TCGA-2F-A9KQ-01Z-00-DX1.1A2B3C4D-0000-0000-0000-000000000000.svs,2F,0,BLCA,69,,1,1.0,0.1\n"
    _pt_files(dl, table)
    (dl / "tcga_blca_all_clean.csv").write_text(table)
    logged = []
    manifest = prepare_dataset(paper_entry("tcga_blca_survival", tmp_path, [{"source": "mini", "counts": {"total": 2}}]),
                               [str(dl)], log=logged.append)
    assert manifest["counts"] == {"all": {"event": 2, "censored": 0}}
    assert manifest["skipped"] == {"empty survival_months": 1}
    assert "skipped 1 row(s) of tcga_blca_all_clean.csv: empty survival_months" in "\n".join(logged)


def test_check_names_an_lfs_pointer_where_a_medmnist_file_was_and_damaged_class_folders(tmp_path, monkeypatch, capsys):
    from mmkd.cli import main

    monkeypatch.setenv("MMKD_DATA", str(tmp_path / "data"))
    (tmp_path / "data" / "medmnist").mkdir(parents=True)
    (tmp_path / "data" / "medmnist" / "pathmnist.npz").write_bytes(LFS_POINTER)
    assert main(["datasets", "check", "pathmnist"]) == 1
    out = capsys.readouterr().out
    assert "damaged  pathmnist" in out and "pathmnist.npz is a Git LFS pointer" in out
    folder = tmp_path / "data" / "brain"
    for cls in ("glioma", "normal"):
        (folder / cls).mkdir(parents=True)
        (folder / cls / "a.png").write_bytes(_jpeg(1, "PNG"))
    (folder / "normal" / "b.png").write_bytes(HTML_PAGE)
    catalog = tmp_path / "mine.yaml"
    catalog.write_text(f"datasets:\n  brain: {{tasks: [zero-shot], format: imagefolder, path: {folder}}}\n")
    assert main(["datasets", "check", "--datasets", str(catalog)]) == 1
    out = capsys.readouterr().out
    assert f"1 of the 2 images under normal/ are not readable images: {folder / 'normal' / 'b.png'}" in out
