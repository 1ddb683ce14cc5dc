"""`mmkd datasets prepare`: every converter on a miniature of the official download the test writes
(same file names, archive structure, CSV/JSON/pickle schemas, label encodings), read back through
the evaluation readers; wrong and partial downloads are refused with a message."""

import csv
import gzip
import io
import json
import pickle
import tarfile
import zipfile

import numpy as np
import pytest

from mmkd.errors import DataError, UsageError
from mmkd.evaluation.datasets import load_classification
from mmkd.evaluation.prepare import prepare_dataset
from mmkd.evaluation.prepare.counts import CountMismatch
from mmkd.evaluation.prepare.download import UnrecognisedDownload
from mmkd.evaluation.runner import load_catalog, parse_catalog


def _jpeg(seed: int, fmt: str = "JPEG") -> bytes:
    from PIL import Image

    arr = np.random.default_rng(seed).integers(0, 255, (8, 8, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format=fmt)
    return buf.getvalue()


def paper_entry(name, tmp_path, published=None, **prepare_overrides):
    """The paper catalog's entry `name`, its data path moved under tmp_path and, for a miniature, its
    published counts replaced by the miniature's own."""
    import yaml

    from mmkd.evaluation.runner import builtin_catalogs  # noqa: F401 (the catalog must be built in)

    path = load_catalog("paper")[0].catalog_dir / "paper.yaml"
    raw = yaml.safe_load(path.read_text())["datasets"][name]
    raw = dict(raw, path=str(tmp_path / "data" / raw["path"].replace("${MMKD_DATA}/", "")))
    raw["prepare"] = dict(raw["prepare"], **prepare_overrides)
    if published is not None:
        raw["prepare"]["published"] = published
    return parse_catalog({"datasets": {name: raw}}, path.parent, catalog_name="paper")[0]


def _write_zip(path, files: dict[str, bytes]):
    with zipfile.ZipFile(path, "w") as z:
        for name, data in files.items():
            z.writestr(name, data)
    return path


# ---------------------------------------------------------------------------------------------
# class folders


def lc25000_zip(tmp_path, per_class=2, skip=()):
    files = {}
    for group, classes in (("lung", ("lung_aca", "lung_n", "lung_scc")), ("colon", ("colon_aca", "colon_n"))):
        for cls in classes:
            if cls in skip:
                continue
            stem = cls.replace("_", "").replace("colonaca", "colonca")
            for i in range(1, per_class + 1):
                files[f"lung_colon_image_set/{group}_image_sets/{cls}/{stem}{i}.jpeg"] = _jpeg(i)
    return _write_zip(tmp_path / "LC25000.zip", files)


def test_lc25000_zip_gives_the_authors_list_layout(tmp_path):
    download = lc25000_zip(tmp_path)
    entry = paper_entry("lc25000_lung", tmp_path, [{"source": "mini", "counts": {"all": {
        "lung_aca": 2, "lung_n": 2, "lung_scc": 2}}}])
    manifest = prepare_dataset(entry, [str(download)], log=lambda s: None)
    assert manifest["counts"] == {"all": {"lung_aca": 2, "lung_n": 2, "lung_scc": 2}}
    assert manifest["published_match"] == ["mini"]
    folder = entry.path
    lines = (folder / "all.txt").read_text().splitlines()
    assert len(lines) == 6 and lines[0] == "lung_aca/lungaca1.jpeg lung_aca"
    assert (folder / "all" / "lung_aca" / "lungaca1.jpeg").read_bytes() == _jpeg(1)
    data = load_classification(entry)
    assert data.classnames == ["lung adenocarcinoma", "benign lung tissue", "lung squamous cell carcinoma"]
    assert data.splits["all"].labels.tolist() == [0, 0, 1, 1, 2, 2]
    assert data.keys == ["lung_aca", "lung_n", "lung_scc"]
    assert json.loads((folder / "PREPARED.json").read_text())["dataset"] == "lc25000_lung"


def test_lc25000_against_the_published_counts_and_partial_downloads(tmp_path):
    download = lc25000_zip(tmp_path)
    entry = paper_entry("lc25000_colon", tmp_path)  # the real published figures: 5,000 per class
    logged = []
    with pytest.raises(CountMismatch, match="match no published figure"):
        prepare_dataset(entry, [str(download)], log=logged.append)
    assert "colon_aca: counted 2, published 5000" in "\n".join(logged)
    assert not entry.path.exists()  # nothing written
    prepare_dataset(entry, [str(download)], accept_counts=True, log=lambda s: None)
    assert len((entry.path / "all.txt").read_text().splitlines()) == 4
    with pytest.raises(UsageError, match="--overwrite"):
        prepare_dataset(entry, [str(download)], accept_counts=True, log=lambda s: None)
    # a class missing from the download
    (tmp_path / "p").mkdir()
    partial = lc25000_zip(tmp_path / "p", skip=("colon_n",))
    with pytest.raises(UnrecognisedDownload, match="colon_n"):
        prepare_dataset(paper_entry("lc25000_colon", tmp_path / "p"), [str(partial)], log=lambda s: None)


def test_wrong_download_names_what_was_expected(tmp_path):
    wrong = _write_zip(tmp_path / "NCT-CRC-HE-100K.zip", {"NCT-CRC-HE-100K/ADI/ADI-AAAFLCLY.tif": _jpeg(0, "TIFF")})
    with pytest.raises(UnrecognisedDownload) as err:
        prepare_dataset(paper_entry("lc25000_lung", tmp_path), [str(wrong)], log=lambda s: None)
    msg = str(err.value)
    assert "LC25000.zip" in msg and "lung_image_sets" in msg and "NCT-CRC-HE-100K/ADI/ (1 file)" in msg
    broken = tmp_path / "broken.zip"
    broken.write_bytes(b"PK\x03\x04 not really a zip")
    with pytest.raises(UsageError, match="not a readable archive"):
        prepare_dataset(paper_entry("lc25000_lung", tmp_path), [str(broken)], log=lambda s: None)


def test_nct_crc_two_archives_make_train_and_test(tmp_path):
    classes = ["ADI", "BACK", "DEB", "LYM", "MUC", "MUS", "NORM", "STR", "TUM"]
    train = _write_zip(tmp_path / "NCT-CRC-HE-100K.zip", {f"NCT-CRC-HE-100K/{c}/{c}-AAAA{i}.tif": _jpeg(i, "TIFF")
                                                          for c in classes for i in range(2)})
    test = _write_zip(tmp_path / "CRC-VAL-HE-7K.zip", {f"CRC-VAL-HE-7K/{c}/{c}-TCGA-{i}.tif": _jpeg(i, "TIFF")
                                                        for c in classes for i in range(1)})
    entry = paper_entry("nct_crc_he", tmp_path, [{"source": "mini", "counts": {"train": 18, "test": 9}}])
    manifest = prepare_dataset(entry, [str(train), str(test)], log=lambda s: None)
    assert manifest["counts"]["train"] == {c: 2 for c in classes}
    data = load_classification(entry)
    assert {k: len(v) for k, v in data.splits.items()} == {"test": 9, "train": 18}
    assert data.splits["test"].labels.tolist() == list(range(9)) and data.classnames[1] == "background"
    assert data.splits["train"].images.load(0).size == (8, 8)


def test_busi_folder_skips_masks_and_renames_spaces(tmp_path):
    root = tmp_path / "dl" / "Dataset_BUSI_with_GT"
    for cls, n in (("benign", 3), ("malignant", 2), ("normal", 1)):
        (root / cls).mkdir(parents=True)
        for i in range(1, n + 1):
            (root / cls / f"{cls} ({i}).png").write_bytes(_jpeg(i, "PNG"))
            (root / cls / f"{cls} ({i})_mask.png").write_bytes(_jpeg(0, "PNG"))
        (root / cls / f"{cls} (1)_mask_1.png").write_bytes(_jpeg(0, "PNG"))
    entry = paper_entry("busi", tmp_path, [{"source": "mini", "counts": {"all": {"benign": 3, "malignant": 2, "normal": 1}}}])
    prepare_dataset(entry, [str(tmp_path / "dl")], log=lambda s: None)
    lines = (entry.path / "all.txt").read_text().splitlines()
    assert "benign/benign_(1).png benign" in lines and len(lines) == 6
    assert not any("mask" in ln for ln in lines)
    data = load_classification(entry)
    assert np.bincount(data.splits["all"].labels).tolist() == [3, 2, 1]


def test_fives_label_from_file_name_and_oct2017_tar(tmp_path):
    dl = tmp_path / "FIVES"
    for split, names in (("train", ["1_A", "2_D", "3_G", "4_N", "5_N"]), ("test", ["1_A", "2_G"])):
        (dl / split / "Original").mkdir(parents=True)
        (dl / split / "Ground truth").mkdir(parents=True)
        for n in names:
            (dl / split / "Original" / f"{n}.png").write_bytes(_jpeg(len(n), "PNG"))
            (dl / split / "Ground truth" / f"{n}.png").write_bytes(_jpeg(0, "PNG"))
    entry = paper_entry("fives", tmp_path, [{"source": "mini", "counts": {"total": {"A": 2, "D": 1, "G": 2, "N": 2}}}])
    manifest = prepare_dataset(entry, [str(dl)], log=lambda s: None)
    assert manifest["counts"] == {"train": {"A": 1, "D": 1, "G": 1, "N": 2}, "test": {"A": 1, "G": 1}}
    data = load_classification(entry)
    assert data.classnames[0] == "age-related macular degeneration" and len(data.splits["test"]) == 2

    tar_path = tmp_path / "OCT2017.tar.gz"
    with tarfile.open(tar_path, "w:gz") as tar:
        for split in ("train", "test"):
            for cls in ("CNV", "DME", "DRUSEN", "NORMAL"):
                data_bytes = _jpeg(3)
                info = tarfile.TarInfo(f"OCT2017/{split}/{cls}/{cls}-1001-1.jpeg")
                info.size = len(data_bytes)
                tar.addfile(info, io.BytesIO(data_bytes))
    entry = paper_entry("oct2017", tmp_path, [{"source": "mini", "counts": {"train": 4, "test": 4}}])
    prepare_dataset(entry, [str(tar_path)], log=lambda s: None)
    assert (entry.path / "test" / "DME" / "DME-1001-1.jpeg").read_bytes() == _jpeg(3)


def test_bach_zip_and_ham10000_metadata_table(tmp_path):
    files = {f"ICIAR2018_BACH_Challenge/Photos/{c}/{p}00{i}.tif": _jpeg(i, "TIFF")
             for c, p in (("Benign", "b"), ("InSitu", "is"), ("Invasive", "iv"), ("Normal", "n")) for i in (1, 2)}
    files["ICIAR2018_BACH_Challenge/Photos/microscopy_ground_truth.csv"] = b"b001.tif,Benign\n"
    bach = _write_zip(tmp_path / "ICIAR2018_BACH_Challenge.zip", files)
    entry = paper_entry("bach", tmp_path)
    logged = []
    with pytest.raises(CountMismatch):  # 2 per class match neither the 400 nor the 408 figure
        prepare_dataset(entry, [str(bach)], log=logged.append)
    assert "grand-challenge" in "\n".join(logged) and "eva" in "\n".join(logged)

    dl = tmp_path / "ham"
    dl.mkdir()
    ids = {f"ISIC_00243{i:02d}": dx for i, dx in enumerate(["nv", "nv", "mel", "bkl", "df", "vasc", "akiec", "bcc"])}
    _write_zip(dl / "HAM10000_images_part_1.zip", {f"{k}.jpg": _jpeg(1) for k in list(ids)[:5]})
    _write_zip(dl / "HAM10000_images_part_2.zip", {f"{k}.jpg": _jpeg(2) for k in list(ids)[5:]})
    with open(dl / "HAM10000_metadata.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["lesion_id", "image_id", "dx", "dx_type", "age", "sex", "localization"])
        for i, (k, dx) in enumerate(ids.items()):
            w.writerow([f"HAM_{i:07d}", k, dx, "histo", 50, "male", "back"])
    entry = paper_entry("ham10000", tmp_path, [{"source": "mini", "counts": {"all": 8}}])
    manifest = prepare_dataset(entry, [str(dl)], log=lambda s: None)
    assert manifest["counts"]["all"]["nv"] == 2
    data = load_classification(entry)
    assert data.classnames[data.splits["all"].labels[-1]] == "vasc" or "vascular lesions" in data.classnames
    (dl / "HAM10000_images_part_2.zip").unlink()  # a part missing: refused, naming the missing images
    with pytest.raises(UnrecognisedDownload, match="3 of the 8 images"):
        prepare_dataset(paper_entry("ham10000", tmp_path / "x"), [str(dl)], log=lambda s: None)


# ---------------------------------------------------------------------------------------------
# arrays


def test_pcam_h5_gz_files(tmp_path):
    h5py = pytest.importorskip("h5py")
    dl = tmp_path / "pcam"
    dl.mkdir()
    rng = np.random.default_rng(0)
    arrays = {}
    for split, n in (("train", 6), ("valid", 2), ("test", 4)):
        x = rng.integers(0, 255, (n, 96, 96, 3), dtype=np.uint8)
        y = np.array([i % 2 for i in range(n)], dtype=np.uint8).reshape(n, 1, 1, 1)
        arrays[split] = (x, y)
        for key, arr in (("x", x), ("y", y)):
            raw = tmp_path / "tmp.h5"
            with h5py.File(raw, "w") as f:
                f.create_dataset(key, data=arr)
            (dl / f"camelyonpatch_level_2_split_{split}_{key}.h5.gz").write_bytes(gzip.compress(raw.read_bytes()))
    (dl / "camelyonpatch_level_2_split_test_meta.csv").write_text("coord_y,coord_x,tumor_patch,center_tumor_patch,wsi\n")
    entry = paper_entry("pcam", tmp_path, [{"source": "mini", "counts": {
        "train": {"0": 3, "1": 3}, "val": {"0": 1, "1": 1}, "test": {"0": 2, "1": 2}}}])
    manifest = prepare_dataset(entry, [str(dl)], splits=["test"], log=lambda s: None)
    assert manifest["counts"]["train"] == {"0": 3, "1": 3}
    assert sorted(p.name for p in entry.path.glob("*.txt")) == ["test.txt"]  # --splits test: only test written
    data = load_classification(entry)
    from PIL import Image

    assert data.classnames == ["lymph node", "lymph node containing metastatic tumor tissue"]
    assert data.splits["test"].labels.tolist() == [0, 1, 0, 1]
    assert np.array_equal(np.asarray(Image.open(entry.path / "test" / "000002.png")), arrays["test"][0][2])
    (dl / "camelyonpatch_level_2_split_valid_y.h5.gz").unlink()
    with pytest.raises(UnrecognisedDownload, match="val lack"):
        prepare_dataset(paper_entry("pcam", tmp_path / "b"), [str(dl)], log=lambda s: None)


def test_medmnist_npz_single_and_multi_label(tmp_path):
    dl = tmp_path / "medmnist"
    dl.mkdir()
    rng = np.random.default_rng(0)
    np.savez(dl / "chestmnist.npz", **{f"{s}_images": rng.integers(0, 255, (n, 28, 28), dtype=np.uint8)
                                        for s, n in (("train", 5), ("val", 2), ("test", 3))},
             **{f"{s}_labels": rng.integers(0, 2, (n, 14), dtype=np.uint8) for s, n in (("train", 5), ("val", 2), ("test", 3))})
    entry = paper_entry("chestmnist", tmp_path, [{"source": "mini", "counts": {"train": 5, "val": 2, "test": 3}}])
    manifest = prepare_dataset(entry, [str(dl)], log=lambda s: None)
    assert manifest["counts"]["test"] == {"images": 3}
    data = load_classification(entry)
    assert data.multilabel and data.splits["test"].labels.shape == (3, 14) and data.classnames[2] == "pleural effusion"
    assert (entry.path.parent / "chestmnist.npz.prepared.json").is_file()
    entry = paper_entry("pathmnist", tmp_path)  # the real MedMNIST counts: a miniature is refused
    np.savez(dl / "pathmnist.npz", train_images=np.zeros((3, 28, 28, 3), np.uint8), train_labels=np.zeros((3, 1)),
             val_images=np.zeros((1, 28, 28, 3), np.uint8), val_labels=np.zeros((1, 1)),
             test_images=np.zeros((2, 28, 28, 3), np.uint8), test_labels=np.array([[0], [8]]))
    with pytest.raises(CountMismatch):
        prepare_dataset(entry, [str(dl / "pathmnist.npz")], log=lambda s: None)


# ---------------------------------------------------------------------------------------------
# VQA


def test_slake_english_questions_only(tmp_path):
    dl = tmp_path / "Slake1.0"
    for i in (1, 2):
        (dl / "imgs" / f"xmlab{i}").mkdir(parents=True)
        (dl / "imgs" / f"xmlab{i}" / "source.jpg").write_bytes(_jpeg(i))
        (dl / "imgs" / f"xmlab{i}" / "mask.png").write_bytes(_jpeg(0, "PNG"))
    (dl / "KG").mkdir()

    def record(qid, img, lang, q, a, kind):
        return {"img_id": img, "img_name": f"xmlab{img}/source.jpg", "question": q, "answer": a, "q_lang": lang,
                "location": "Lung", "modality": "X-Ray", "answer_type": kind, "base_type": "vqa",
                "content_type": "Organ", "triple": ["vhead", "_", "_"], "qid": qid}

    (dl / "train.json").write_text(json.dumps([record(1, 1, "en", "Is the lung healthy?", "No", "CLOSED"),
                                               record(2, 1, "zh", "肺健康吗?", "不", "CLOSED"),
                                               record(3, 2, "en", "Which organ is shown?", "Lung", "OPEN")],
                                              ensure_ascii=False))
    (dl / "validate.json").write_text(json.dumps([record(4, 2, "en", "What modality?", "X-Ray", "OPEN")]))
    (dl / "test.json").write_text(json.dumps([record(5, 1, "en", "Is there a nodule?", "Yes", "CLOSED"),
                                              record(6, 2, "zh", "这是什么?", "肺", "OPEN")], ensure_ascii=False))
    entry = paper_entry("slake", tmp_path, [{"source": "mini", "counts": {"test": 1}}])
    manifest = prepare_dataset(entry, [str(dl)], log=lambda s: None)
    assert manifest["counts"] == {"train": {"closed": 1, "open": 1}, "val": {"open": 1}, "test": {"closed": 1}}
    from mmkd.evaluation.vqa import read_vqa_rows

    rows = read_vqa_rows(entry.path, "slake")
    assert [(r.split, r.answer, r.answer_type) for r in rows] == [
        ("train", "no", "closed"), ("train", "lung", "open"), ("val", "x-ray", "open"), ("test", "yes", "closed")]
    assert rows[0].image.endswith("images/xmlab1/source.jpg")


def test_vqa_rad_single_json_split_by_phrase_type(tmp_path):
    dl = tmp_path / "osf"
    (dl / "VQA_RAD Image Folder").mkdir(parents=True)
    for name in ("synpic1.jpg", "synpic2.jpg"):
        (dl / "VQA_RAD Image Folder" / name).write_bytes(_jpeg(len(name)))
    recs = [{"qid": i, "image_name": img, "image_case_url": "u", "image_organ": "CHEST", "question": q,
             "phrase_type": pt, "question_type": "PRES", "answer": a, "answer_type": at}
            for i, (img, q, pt, a, at) in enumerate([
                ("synpic1.jpg", "is there effusion?", "freeform", "yes", "CLOSED"),
                ("synpic1.jpg", "effusion present?", "para", "yes", "CLOSED"),
                ("synpic2.jpg", "what organ?", "test_freeform", "lungs", "OPEN"),
                ("synpic2.jpg", "size of the heart?", "test_para", 2, "OPEN")])]
    (dl / "VQA_RAD Dataset Public.json").write_text(json.dumps(recs))
    entry = paper_entry("vqa_rad", tmp_path, [{"source": "OSF-like total", "counts": {"total": 4}},
                                              {"source": "other", "counts": {"test": 451}}])
    manifest = prepare_dataset(entry, [str(dl)], log=lambda s: None)
    assert manifest["published_match"] == ["OSF-like total"]
    rows = [json.loads(ln) for ln in entry.path.read_text().splitlines()]
    assert [r["split"] for r in rows] == ["train", "train", "test", "test"] and rows[3]["answer"] == "2"


def test_pathvqa_pickles_of_plain_records_and_a_pickle_with_code_refused(tmp_path):
    dl = tmp_path / "split"
    for split in ("train", "val", "test"):
        (dl / "images" / split).mkdir(parents=True)
        (dl / "images" / split / f"{split}_0001.jpg").write_bytes(_jpeg(1))
        recs = [{"answer_type": "yes/no", "img_id": f"{split}_0001", "label": {"yes": 1}, "question_id": 1,
                 "question_type": "is", "sent": "Is this necrosis?"},
                {"answer_type": "other", "img_id": f"{split}_0001", "label": {"liver": 1}, "question_id": 2,
                 "question_type": "what", "sent": "What organ is this?"}]
        (dl / "qas").mkdir(exist_ok=True)
        (dl / "qas" / f"{split}_vqa.pkl").write_bytes(pickle.dumps(recs))
    entry = paper_entry("pathvqa", tmp_path, [{"source": "mini", "counts": {"train": 2, "val": 2, "test": 2}}])
    manifest = prepare_dataset(entry, [str(dl)], log=lambda s: None)
    assert manifest["counts"]["test"] == {"closed": 1, "open": 1}
    rows = [json.loads(ln) for ln in entry.path.read_text().splitlines()]
    assert rows[1]["answer"] == "liver" and rows[1]["image"] == "images/train_0001.jpg"

    class Evil:
        def __reduce__(self):
            return (print, ("ran code",))

    (dl / "qas" / "test_vqa.pkl").write_bytes(pickle.dumps([Evil()]))
    with pytest.raises(DataError, match="refusing to load builtins.print"):
        prepare_dataset(paper_entry("pathvqa", tmp_path / "e"), [str(dl)], log=lambda s: None)


# ---------------------------------------------------------------------------------------------
# slides: survival (MCAT) and diagnosis (CAMELYON16, CLAM tables)


def test_mcat_survival_table_with_features_files(tmp_path):
    import torch

    dl = tmp_path / "tcga_blca"
    (dl / "pt_files").mkdir(parents=True)
    rows = []
    rng = np.random.default_rng(0)
    for i in range(6):
        slide = f"TCGA-2F-A{i:03d}-01Z-00-DX1.{i:04X}ABCD.svs"
        rows.append({"case_id": f"TCGA-2F-A{i:03d}", "slide_id": slide, "site": "2F", "is_female": 0,
                     "oncotree_code": "BLCA", "age": 60, "survival_months": 5.0 + i, "censorship": i % 2,
                     "train": 1, "TP53_mut": 0})
        if i < 5:
            torch.save(torch.as_tensor(rng.normal(size=(3 + i, 16)), dtype=torch.float32),
                       dl / "pt_files" / slide.replace(".svs", ".pt"))
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=list(rows[0]))
    w.writeheader()
    w.writerows(rows)
    _write_zip(dl / "tcga_blca_all_clean.csv.zip", {"tcga_blca_all_clean.csv": buf.getvalue().encode()})
    entry = paper_entry("tcga_blca_survival", tmp_path)  # published: 373 cases; 5 found here
    with pytest.raises(CountMismatch):
        prepare_dataset(entry, [str(dl)], log=lambda s: None)
    logged = []
    manifest = prepare_dataset(entry, [str(dl)], accept_counts=True, log=logged.append)
    assert manifest["counts"] == {"all": {"event": 3, "censored": 2}}
    assert "1 slide(s) of the table are missing" in "\n".join(logged)
    from mmkd.evaluation.slides import read_features, read_slides_table

    records = read_slides_table(entry.path)
    assert [(r.time, r.event, r.patient_id) for r in records][:2] == [(5.0, 1, "TCGA-2F-A000"), (6.0, 0, "TCGA-2F-A001")]
    assert read_features(records[4].source).shape == (7, 16)


def test_camelyon16_folders_and_reference_table(tmp_path):
    dl = tmp_path / "CAMELYON16"
    for folder, names in (("training/normal", ["normal_001", "normal_002"]), ("training/tumor", ["tumor_001"]),
                          ("testing/images", ["test_001", "test_002"])):
        (dl / folder).mkdir(parents=True)
        for n in names:
            (dl / folder / f"{n}.tif").write_bytes(_jpeg(1, "TIFF"))
    (dl / "testing" / "reference.csv").write_text("test_001,Tumor,Macro,1\ntest_002,Normal\n")
    entry = paper_entry("camelyon16", tmp_path, [{"source": "mini", "counts": {"total": 5}}])
    manifest = prepare_dataset(entry, [str(dl)], log=lambda s: None)
    assert manifest["counts"] == {"all": {"normal": 3, "tumor": 2}}
    from mmkd.evaluation.slides import read_slides_table

    labels = {r.slide_id: r.label for r in read_slides_table(entry.path)}
    assert labels == {"normal_001": "normal", "normal_002": "normal", "test_001": "tumor", "test_002": "normal",
                      "tumor_001": "tumor"}
    zipped = _write_zip(tmp_path / "c16.zip", {"training/tumor/tumor_001.tif": _jpeg(1, "TIFF")})
    with pytest.raises(UsageError, match="inside an archive"):
        prepare_dataset(paper_entry("camelyon16", tmp_path / "z", [{"source": "m", "counts": {"total": 1}}],
                                    table=None), [str(zipped)], log=lambda s: None)


def test_datasets_command_list_prepare_check(tmp_path, monkeypatch, capsys):
    from mmkd.cli import main

    monkeypatch.setenv("MMKD_DATA", str(tmp_path / "data"))
    download = lc25000_zip(tmp_path)
    assert main(["datasets", "check", "lc25000_lung", "vqa_rad"]) == 0
    out = capsys.readouterr().out
    assert "missing  lc25000_lung" in out and "mmkd datasets prepare lc25000_lung --from DOWNLOAD" in out
    assert "osf.io/89kps" in out and "0 of 2 dataset(s) found" in out
    # the real published counts (5,000 per class) refuse the miniature: exit 2, no traceback, nothing written
    assert main(["datasets", "prepare", "lc25000_lung", "--from", str(download)]) == 2
    assert "match no published figure" in capsys.readouterr().err
    assert main(["datasets", "prepare", "lc25000_lung", "--from", str(download), "--accept-counts"]) == 0
    assert (tmp_path / "data" / "lc25000_lung" / "all.txt").is_file()
    assert main(["datasets", "prepare", "lc25000_colon", "--from", str(tmp_path / "nope.zip")]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert main(["datasets", "list"]) == 0
    listed = capsys.readouterr().out
    assert any(ln.startswith("lc25000_lung") and ln.rstrip().endswith("found") for ln in listed.splitlines())
    assert "1 of " in listed
    assert main(["datasets", "list", "--markdown"]) == 0
    table = capsys.readouterr().out
    entries = load_catalog("paper")
    assert table.startswith("| name |") and table.count("\n| ") == len(entries)  # one row per dataset
    for task in ("vqa", "survival", "mil-classification", "retrieval", "zero-shot", "linear-probe"):
        assert any(task in e.tasks for e in entries)
    assert {e.option("evidence") for e in entries} <= {"authors", "authors-code-hint", "substitute-unimed",
                                                       "substitute-standard"}
    assert all(e.option("source") and e.option("licence") for e in entries)


def test_check_with_mmkd_data_unset_shows_the_target_as_written_and_what_to_set(monkeypatch, capsys):
    from mmkd.cli import main

    monkeypatch.delenv("MMKD_DATA", raising=False)
    main(["datasets", "check", "lc25000_lung"])
    out = capsys.readouterr().out
    goes = next(line for line in out.splitlines() if "goes to:" in line)
    assert "${MMKD_DATA}" not in out and "catalogs" not in goes  # not a path inside the package
    assert "$MMKD_DATA/lc25000_lung" in goes and "export MMKD_DATA=" in goes
