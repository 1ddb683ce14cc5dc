"""`mmkd datasets prepare` on the real label tables and question files of the paper's benchmark, with
generated stand-ins for the images and slide features they name (those are not redistributable or
too large): shows that each converter reads the whole real file and what it counts, against the
published counts of the catalog (docs/BENCHMARK.md quotes the table this prints).

    python bench/prepare_real_tables.py --table MCAT/datasets_csv_sig/tcga_blca_all_clean.csv.zip \\
        --table CLAM/dataset_csv/tcga_kidney_clean.csv --table Slake1.0 --table local_data/chexpert-5x200.csv

Each --table is one real file (or SLAKE's folder of train/validate/test.json); the dataset is told
from its name. Not a benchmark (run_all.py runs bench_*.py only).
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import re
import sys
import tempfile
import zipfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from mmkd.evaluation.prepare import prepare_dataset  # noqa: E402
from mmkd.evaluation.prepare.common import read_table  # noqa: E402
from mmkd.evaluation.prepare.download import Download  # noqa: E402


def _jpeg() -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(buf, format="JPEG")
    return buf.getvalue()


def _rows(path: Path) -> list[dict]:
    with Download.open([str(path)]) as download:
        return read_table(next(iter(download.members.values())))


def _features(rows: list[dict], column: str, folder: Path) -> None:
    import torch

    (folder / "pt_files").mkdir(parents=True, exist_ok=True)
    for row in rows:
        stem = re.sub(r"\.svs$", "", row[column].strip())
        torch.save(torch.zeros(1, 4), folder / "pt_files" / f"{stem}.pt")


def stand_ins(table: Path, work: Path) -> tuple[str, list[str]]:
    """(catalog name, --from paths): the real file plus generated images/features for what it names."""
    name = table.name.lower()
    files = work / "stand_ins"
    if name.startswith("tcga_") and "_all_clean" in name:
        _features(_rows(table), "slide_id", files)
        return f"{name.split('_')[0]}_{name.split('_')[1]}_survival", [str(table), str(files)]
    if name.startswith("tcga_kidney"):
        _features(_rows(table), "slide_id", files)
        return "tcga_rcc_subtyping", [str(table), str(files)]
    if table.is_dir() and (table / "train.json").is_file():  # SLAKE
        for split in ("train", "validate", "test"):
            for record in json.loads((table / f"{split}.json").read_text(encoding="utf-8")):
                image = files / "imgs" / record["img_name"]
                image.parent.mkdir(parents=True, exist_ok=True)
                image.write_bytes(_jpeg())
        return "slake", [str(table), str(files)]
    if name == "chexpert-5x200.csv":
        with zipfile.ZipFile(work / "CheXpert-v1.0-small.zip", "w") as z:
            for row in csv.DictReader(open(table, newline="", encoding="utf-8")):
                z.writestr(row["imgpath"], _jpeg())
        return "chexpert_5x200", [str(table), str(work / "CheXpert-v1.0-small.zip")]
    raise SystemExit(f"--table {table}: not a file this script knows (MCAT/PORPOISE tcga_*_all_clean.csv(.zip), CLAM "
                     f"tcga_kidney_clean.csv, SLAKE's folder, chexpert-5x200.csv)")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--table", action="append", required=True, type=Path)
    args = parser.parse_args()
    from mmkd.evaluation.runner import load_catalog

    catalog = {e.name: e for e in load_catalog("paper")}
    print("| dataset | real file | counted | published (source) | notes |\n|---|---|---|---|---|")
    for table in args.table:
        with tempfile.TemporaryDirectory() as tmp:
            work = Path(tmp)
            name, sources = stand_ins(table.resolve(), work)
            manifest = prepare_dataset(catalog[name], sources, out=work / "out", accept_counts=True,
                                       log=lambda s: None)
            counted = "; ".join(f"{split} " + ", ".join(f"{c} {n:,}" for c, n in per.items())
                                for split, per in manifest["counts"].items())
            published = (catalog[name].option("prepare") or {}).get("published") or []
            shown = "; ".join(f"{p['source']}: {'match' if p['source'] in manifest['published_match'] else 'differs'}"
                              for p in published) or "none in the catalog"
            print(f"| {name} | {table.name} | {counted} | {shown} | {'; '.join(manifest['notes'])} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
