"""A property-based fuzz campaign (hypothesis) over every reader a user can feed mmkd.

Property, for each generated input: the reader either works or ends with a clear error (a
UsageError with exit code 2: what the CLI prints without a traceback), and nothing outside the
output folder changes. Any other exception is a crash, recorded with its input.

Readers: CSV and JSONL pair tables and webdataset tar shards (indexing, reading every sample,
collating and tokenizing, as `pretrain`/`extract` do), eval catalog YAML (parsing and loading
each dataset), config YAML and command-line flags, safetensors files (`--init`, `export`, a
checkpoint on `--resume`), feature-store manifests (reading a store, `extract
--reapply-availability` writing into it) and the MMKD-CLIP authors' `meta.jsonl`
(`import-features`).

    python tests/reliability/fuzz.py --examples 300 --write-docs   # the full campaign, figures into
                                                                    # docs/RELIABILITY.md
The fast slice runs in `make test` (tests/reliability/test_fuzz.py), the full campaign with
`make reliability`.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import os
import re
import shutil
import sys
import tarfile
import tempfile
import traceback
from collections import Counter
from pathlib import Path
from typing import Any, Callable

from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))  # tests/: helpers.py

READERS = ("csv", "jsonl", "tar", "catalog", "config", "safetensors", "manifest", "meta_jsonl")


# ---- the property ------------------------------------------------------------------------------

def tree(root: Path, skip: Path | None = None) -> dict[str, tuple[int, int]]:
    """(size, mtime_ns) of everything under root, except `skip` (the output folder)."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        if skip is not None and Path(dirpath) == skip:
            dirnames[:] = []
            continue
        for name in filenames + dirnames:
            p = Path(dirpath) / name
            if skip is not None and p == skip:
                continue
            st_ = p.lstat()  # folders count by name only: creating the output folder touches its parent
            out[str(p.relative_to(root))] = (0, 0) if p.is_dir() else (st_.st_size, st_.st_mtime_ns)
    return out


class Campaign:
    """Runs inputs through readers and counts outcomes: ok, refused (exit 2), crash."""

    def __init__(self, workdir: Path):
        self.workdir = Path(workdir)
        self.counts: dict[str, Counter] = {r: Counter() for r in READERS}
        self.crashes: list[str] = []
        self._student = None

    def check(self, reader: str, make_input: Callable[[Path], Path], run: Callable[[Path, Path], Any]) -> None:
        from mmkd.errors import UsageError

        sandbox = Path(tempfile.mkdtemp(dir=self.workdir))
        try:
            out = sandbox / "out"
            given_path = make_input(sandbox)
            before = tree(self.workdir, skip=out)
            try:
                run(given_path, out)
                result = "ok"
            except UsageError as e:
                result = "refused" if e.exit_code == 2 else "crash"
                if result == "crash":
                    self.crashes.append(f"{reader}: exit code {e.exit_code}: {e}")
            except Exception:  # noqa: BLE001 - anything else is what the campaign looks for
                result = "crash"
                self.crashes.append(f"{reader}: {traceback.format_exc(limit=8)}\ninput: {describe(given_path)}")
            after = tree(self.workdir, skip=out)
            if after != before:
                changed = sorted(set(after.items()) ^ set(before.items()))[:5]
                self.crashes.append(f"{reader}: files outside the output folder changed: {changed}\n"
                                    f"input: {describe(given_path)}")
                result = "crash"
            self.counts[reader][result] += 1
        finally:
            shutil.rmtree(sandbox, ignore_errors=True)

    @property
    def student(self):
        if self._student is None:
            from mmkd.models.student import create_student

            self._student = create_student("mmkd-tiny-vit", seed=0)
        return self._student

    def figures(self) -> dict[str, dict[str, int]]:
        return {r: {"tried": sum(c.values()), "ok": c["ok"], "refused": c["refused"], "crashes": c["crash"]}
                for r, c in self.counts.items()}


def describe(path: Path) -> str:
    try:
        if path.is_file():
            return repr(path.read_bytes()[:600])
        return repr(sorted(str(p.relative_to(path)) for p in path.rglob("*"))[:20])
    except OSError:
        return str(path)


# ---- shared input pieces ----------------------------------------------------------------------

def png(color=(200, 30, 30), size=(12, 10)) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", size, color).save(buf, format="PNG")
    return buf.getvalue()


GOOD_PNG = png()
IMAGE_FILES = {"img/a.png": GOOD_PNG, "img/b.png": png((0, 90, 200), (9, 14)), "img/trunc.png": GOOD_PNG[:40],
               "img/empty.png": b"", "img/html.jpg": b"<!DOCTYPE html><html></html>", "img/noise.png": bytes(range(256))}


def write_images(root: Path) -> None:
    for name, data in IMAGE_FILES.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(data)


texts = st.text(max_size=40)
weird_text = st.one_of(texts, st.sampled_from(["", " ", "\x00", "\ufeff", "a" * 3000, "\udcff", "é" * 10, "\n\r",
                                               "{}", "null", "../../x", "/etc/passwd", "${HOME}", "%s%n"]))
image_refs = st.sampled_from([*IMAGE_FILES, "img/missing.png", "img", "../outside.png", "/nonexistent/a.png",
                              "", "img/a.png\x00"])
column_names = st.sampled_from(["image", "caption", "sample_id", "modality", "label", "", "IMAGE", "caption "])


def cell(name: str):
    if name == "image":
        return st.one_of(image_refs, weird_text)
    return weird_text


@st.composite
def table_rows(draw):
    header = draw(st.lists(column_names, min_size=1, max_size=5))
    if draw(st.booleans()):
        header = list(dict.fromkeys(["image", "caption", *header]))
    rows = draw(st.lists(st.fixed_dictionaries({h: cell(h) for h in header}), max_size=8))
    return header, rows


@st.composite
def csv_bytes(draw):
    if draw(st.integers(0, 4)) == 0:  # raw bytes: quotes, separators, NULs, invalid UTF-8
        return draw(st.binary(max_size=300))
    header, rows = draw(table_rows())
    buf = io.StringIO()
    writer = csv.writer(buf)
    writer.writerow(header)
    for row in rows:
        cells = [row.get(h, "") for h in header]
        if draw(st.integers(0, 5)) == 0:  # a ragged row
            cells = cells[:draw(st.integers(0, len(cells)))] + draw(st.lists(weird_text, max_size=2))
        writer.writerow(cells)
    data = buf.getvalue().encode("utf-8", "surrogateescape")
    if draw(st.booleans()):
        data = b"\xef\xbb\xbf" + data
    return data


json_values = st.recursive(st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=True),
                                     weird_text), lambda inner: st.one_of(st.lists(inner, max_size=3),
                                                                          st.dictionaries(texts, inner, max_size=3)),
                           max_leaves=8)


@st.composite
def jsonl_bytes(draw):
    lines = []
    for _ in range(draw(st.integers(0, 8))):
        kind = draw(st.integers(0, 6))
        if kind == 0:
            lines.append(draw(st.binary(max_size=60)))
        elif kind == 1:
            lines.append(json.dumps(draw(json_values)).encode())
        else:
            obj = {"image": draw(st.one_of(image_refs, json_values)), "caption": draw(st.one_of(weird_text, json_values))}
            if draw(st.booleans()):
                obj["sample_id"] = draw(st.one_of(weird_text, json_values))
            lines.append(json.dumps(obj).encode())
    return b"\n".join(lines)


member_names = st.one_of(
    st.sampled_from(["k1.png", "k1.txt", "k1.json", "k2.jpg", "k2.txt", "dir/k3.png", "dir/k3.txt", "../up.png",
                     "../up.txt", "/abs.png", "/abs.txt", ".png", "k4..txt", "k5.PNG", "k5.TXT", "k6.tar.png",
                     "k7.pyd", "k7.txt", "a" * 120 + ".png"]),
    st.text(max_size=20).map(lambda t: t + ".txt"), st.text(max_size=20))
member_data = st.one_of(st.sampled_from([GOOD_PNG, GOOD_PNG[:30], b"", b"a caption", b"\xff\xfe bad utf8",
                                         b'{"caption": "in json"}', b'{"caption": 3}', b"[1, 2]", b"not json"]),
                        st.binary(max_size=80), weird_text.map(lambda t: t.encode("utf-8", "surrogateescape")))


@st.composite
def tar_bytes(draw):
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.GNU_FORMAT) as tf:
        for _ in range(draw(st.integers(0, 8))):
            name = draw(member_names) or "x"
            kind = draw(st.integers(0, 9))
            info = tarfile.TarInfo(name)
            if kind == 0:
                info.type = tarfile.DIRTYPE
                tf.addfile(info)
            elif kind == 1:
                info.type = tarfile.SYMTYPE
                info.linkname = draw(st.sampled_from(["../../etc/passwd", "/etc/hostname", "k1.png"]))
                tf.addfile(info)
            else:
                data = draw(member_data)
                info.size = len(data)
                tf.addfile(info, io.BytesIO(data))
    data = buf.getvalue()
    cut = draw(st.integers(0, 3))
    if cut == 0 and data:  # truncated shard
        data = data[:draw(st.integers(0, len(data)))]
    elif cut == 1:
        data = data + draw(st.binary(max_size=40))
    return data


# ---- readers ------------------------------------------------------------------------------------

def read_pairs(campaign: Campaign, path: Path) -> None:
    """What pretrain/extract do with a data source: index it, read every sample, collate, tokenize."""
    from mmkd.data.content import row_digest
    from mmkd.data.pairs import PairDataset, collate_pairs, index_source

    records, _ = index_source(str(path))
    student = campaign.student
    dataset = PairDataset(records, student.train_transform, max_image_pixels=4_000_000)
    items = [dataset[i] for i in range(min(len(dataset), 16))]
    for r in records[:16]:
        row_digest(r)
    collate_pairs(items, tokenize=student.tokenizer)


def fuzz_tables(campaign: Campaign, examples: int) -> None:
    @settings(max_examples=examples, deadline=None, database=None, phases=[Phase.generate],
              suppress_health_check=list(HealthCheck))
    @given(data=csv_bytes(), suffix=st.sampled_from([".csv", ".tsv"]))
    def csv_case(data, suffix):
        def make(sandbox):
            write_images(sandbox)
            (sandbox / f"pairs{suffix}").write_bytes(data)
            return sandbox / f"pairs{suffix}"

        campaign.check("csv", make, lambda p, out: read_pairs(campaign, p))

    @settings(max_examples=examples, deadline=None, database=None, phases=[Phase.generate],
              suppress_health_check=list(HealthCheck))
    @given(data=jsonl_bytes())
    def jsonl_case(data):
        def make(sandbox):
            write_images(sandbox)
            (sandbox / "pairs.jsonl").write_bytes(data)
            return sandbox / "pairs.jsonl"

        campaign.check("jsonl", make, lambda p, out: read_pairs(campaign, p))

    @settings(max_examples=examples, deadline=None, database=None, phases=[Phase.generate],
              suppress_health_check=list(HealthCheck))
    @given(data=tar_bytes(), as_folder=st.booleans())
    def tar_case(data, as_folder):
        def make(sandbox):
            (sandbox / "shards").mkdir()
            (sandbox / "shards" / "shard-000.tar").write_bytes(data)
            return sandbox / "shards" if as_folder else sandbox / "shards" / "shard-000.tar"

        campaign.check("tar", make, lambda p, out: read_pairs(campaign, p))

    csv_case()
    jsonl_case()
    tar_case()


# catalog YAML ------------------------------------------------------------------------------------

CATALOG_KEYS = ["tasks", "format", "path", "classnames", "templates", "split", "image_key", "label_key", "caption_key",
                "modality", "splits", "label_column", "image_column", "columns", "name"]
yaml_scalars = st.one_of(st.none(), st.booleans(), st.integers(-3, 10 ** 12), st.floats(allow_nan=True), weird_text,
                         st.sampled_from(["zero-shot", "linear-probe", "retrieval", "vqa", "survival",
                                          "mil-classification", "csv", "jsonl", "imagefolder", "medmnist", "data.csv",
                                          "images", "a photo of {}", "{c} and {}", "{0}", "{", "test", "train"]))


@st.composite
def catalog_text(draw):
    if draw(st.integers(0, 5)) == 0:
        return draw(st.text(max_size=200))
    datasets = {}
    for _ in range(draw(st.sampled_from([0, 1, 1, 1, 2]))):
        name = draw(st.sampled_from(["toy", "toy2", "../x", ""])) if draw(st.integers(0, 4)) else draw(texts)
        entry = {}
        junk = draw(st.lists(st.sampled_from(CATALOG_KEYS), max_size=3)) if draw(st.integers(0, 2)) == 0 else []
        for key in junk:
            entry[key] = draw(st.one_of(yaml_scalars, st.lists(yaml_scalars, max_size=3),
                                        st.dictionaries(texts, yaml_scalars, max_size=2)))
        if draw(st.integers(0, 3)):  # mostly a usable entry, so the dataset readers behind it run too
            entry.update(format=draw(st.sampled_from(["csv"] * 6 + ["jsonl", "imagefolder"])), path="data.csv",
                         tasks=draw(st.sampled_from([["zero-shot", "linear-probe"], ["retrieval"], ["zero-shot"]])))
            if draw(st.booleans()):
                entry["classnames"] = draw(st.one_of(st.just(["red", "blue"]), st.lists(weird_text, max_size=3),
                                                     st.dictionaries(st.sampled_from(["0", "1", "red"]), weird_text,
                                                                     max_size=2)))
        datasets[name] = entry if draw(st.integers(0, 5)) else draw(yaml_scalars)
    doc: Any = {"datasets": datasets}
    if draw(st.integers(0, 6)) == 0:
        doc = draw(st.one_of(yaml_scalars, st.lists(yaml_scalars, max_size=3)))
    import yaml

    return yaml.safe_dump(doc, allow_unicode=True)


@st.composite
def labelled_table(draw):
    """A classification/caption table for catalog entries: image, label, caption and split columns."""
    if draw(st.integers(0, 5)) == 0:
        return draw(csv_bytes())
    columns = ["image", "label", "caption", "split"]
    columns = [c for c in columns if c == "image" or draw(st.integers(0, 4))]
    buf = io.StringIO()
    writer = csv.writer(buf)
    writer.writerow(columns)
    good = ["img/a.png", "img/b.png"] * 8
    values = {"image": st.sampled_from(good + [*IMAGE_FILES, "img/missing.png", "../outside.png", "", "img"]),
              "label": st.sampled_from(["red", "blue"] * 6 + ["0", "1", "-1", "7", " red", "", "\udcff", "é"]),
              "caption": weird_text, "split": st.sampled_from(["train", "test", "val", "", "TEST", "weird"])}
    for _ in range(draw(st.integers(0, 8))):
        writer.writerow([draw(values[c]) for c in columns])
    return buf.getvalue().encode("utf-8", "surrogateescape")


def read_catalog(path: Path) -> None:
    from mmkd.evaluation.datasets import load_captions, load_classification
    from mmkd.evaluation.runner import load_catalog

    for entry in load_catalog(path):
        if not entry.path.exists():
            continue
        if {"zero-shot", "linear-probe"} & set(entry.tasks):
            load_classification(entry)
        if "retrieval" in entry.tasks:
            load_captions(entry)


def fuzz_catalogs(campaign: Campaign, examples: int) -> None:
    @settings(max_examples=examples, deadline=None, database=None, phases=[Phase.generate],
              suppress_health_check=list(HealthCheck))
    @given(text=catalog_text(), table=labelled_table())
    def case(text, table):
        def make(sandbox):
            write_images(sandbox)
            (sandbox / "data.csv").write_bytes(table)
            (sandbox / "catalog.yaml").write_text(text, encoding="utf-8", errors="surrogateescape")
            return sandbox / "catalog.yaml"

        campaign.check("catalog", make, lambda p, out: read_catalog(p))

    case()


# config YAML and flags ---------------------------------------------------------------------------

def _config_keys() -> list[str]:
    from mmkd.config import Config, _all_keys

    return _all_keys(Config())


@st.composite
def config_input(draw):
    import yaml

    keys = _config_keys()
    key = st.one_of(st.sampled_from(keys), st.sampled_from(["lr", "out", "data", "batch-size", "epochs", "resume",
                                                            "model", "init", "store", "overwrite", "segments",
                                                            "train.nope", "optim", "x.y.z", "-", ""]), texts)
    value = st.one_of(yaml_scalars, st.sampled_from(["1e39", "-1", "nan", "inf", "0", "1_000", "0x10", "true",
                                                     "[1, 2]", "{a: 1}", "1e-4", "cosine", "auto", "2"]))
    doc: Any = {}
    for k in draw(st.lists(key, max_size=6)):
        section, _, name = str(k).partition(".")
        if name and draw(st.booleans()):
            doc.setdefault(section, {}) if isinstance(doc.get(section, {}), dict) else None
            if isinstance(doc.get(section), dict):
                doc[section][name] = draw(st.one_of(value, st.lists(value, max_size=2)))
        else:
            doc[str(k)] = draw(st.one_of(value, st.dictionaries(texts, value, max_size=2)))
    text = yaml.safe_dump(doc, allow_unicode=True) if draw(st.integers(0, 5)) else draw(st.text(max_size=120))
    tokens = []
    for _ in range(draw(st.integers(0, 6))):
        tokens.append("--" + str(draw(key)))
        if draw(st.integers(0, 3)):
            tokens.append(str(draw(value)))
    tokens = [t.replace("\x00", "") for t in tokens]
    return text, tokens, draw(st.sampled_from(["pretrain", "distill"])), draw(st.booleans())


def fuzz_configs(campaign: Campaign, examples: int) -> None:
    from mmkd.config import build_config

    @settings(max_examples=examples, deadline=None, database=None, phases=[Phase.generate],
              suppress_health_check=list(HealthCheck))
    @given(case_input=config_input())
    def case(case_input):
        text, tokens, stage, with_file = case_input

        def make(sandbox):
            (sandbox / "recipe.yaml").write_text(text, encoding="utf-8", errors="surrogateescape")
            return sandbox / "recipe.yaml"

        campaign.check("config", make, lambda p, out: build_config(str(p) if with_file else None,
                                                                  ["--data", "d.csv", *tokens], stage=stage))

    case()


# safetensors ---------------------------------------------------------------------------------------

_STUDENT_STATE: dict[str, Any] = {}
DTYPES = ["F32", "F16", "BF16", "I64", "I32", "U8", "BOOL", "F64", "XX", "", "F8_E4M3"]


@st.composite
def safetensors_bytes(draw):
    import struct

    kind = draw(st.integers(0, 9))
    if kind == 0:
        return draw(st.binary(max_size=64))
    if kind in (2, 3):  # a real file: the student's own weights (one perhaps reshaped or retyped), or others
        import torch
        from safetensors.torch import save

        from mmkd.models.student import build_open_clip_model, resolve_model_config

        if "state" not in _STUDENT_STATE:
            torch.manual_seed(0)
            model = build_open_clip_model(resolve_model_config("mmkd-tiny-vit")[0])
            _STUDENT_STATE["state"] = {k: v.clone() for k, v in model.state_dict().items()}
        tensors = dict(_STUDENT_STATE["state"]) if kind == 2 else {
            draw(texts) or "x": torch.zeros(draw(st.integers(0, 3))) for _ in range(draw(st.integers(0, 3)))}
        if tensors and draw(st.booleans()):
            name = draw(st.sampled_from(sorted(tensors)))
            change = draw(st.integers(0, 3))
            if change == 0:
                tensors[name] = tensors[name].reshape(-1)[:max(0, tensors[name].numel() - 1)].clone()
            elif change == 1:
                tensors[name] = tensors[name].to(torch.float16)
            elif change == 2:
                tensors[name] = torch.full_like(tensors[name], float("nan"))
            else:
                del tensors[name]
        return save(tensors)
    header: dict[str, Any] = {}
    offset = 0
    for _ in range(draw(st.integers(0, 4))):
        name = draw(st.one_of(st.sampled_from(["logit_scale", "visual.conv1.weight", "text_projection", ""]), texts))
        shape = draw(st.lists(st.integers(-2, 6), max_size=3))
        size = draw(st.integers(0, 64))
        start = draw(st.one_of(st.just(offset), st.integers(-8, 10 ** 6)))
        header[name] = {"dtype": draw(st.sampled_from(DTYPES)), "shape": shape,
                        "data_offsets": draw(st.one_of(st.just([start, start + size]), st.lists(st.integers(-5, 10 ** 12),
                                                                                                max_size=3)))}
        if draw(st.integers(0, 6)) == 0:
            header[name] = draw(json_values)
        offset += size
    if draw(st.booleans()):
        header["__metadata__"] = draw(st.one_of(st.dictionaries(texts, texts, max_size=2), json_values))
    blob = json.dumps(header).encode() if kind != 1 else draw(st.binary(max_size=40))
    length = len(blob) if draw(st.integers(0, 4)) else draw(st.integers(0, 2 ** 64 - 1))
    return struct.pack("<Q", length) + blob + draw(st.binary(max_size=offset + 8))


def read_safetensors(campaign: Campaign, path: Path) -> None:
    from mmkd.export.folder import check_safetensors
    from mmkd.models.weights import load_weights_into, read_state_dict

    check_safetensors(path)
    read_state_dict(path)
    load_weights_into(campaign.student.model, path)


def fuzz_safetensors(campaign: Campaign, examples: int) -> None:
    @settings(max_examples=examples, deadline=None, database=None, phases=[Phase.generate],
              suppress_health_check=list(HealthCheck))
    @given(data=safetensors_bytes())
    def case(data):
        def make(sandbox):
            (sandbox / "w.safetensors").write_bytes(data)
            return sandbox / "w.safetensors"

        campaign.check("safetensors", make, lambda p, out: read_safetensors(campaign, p))

    case()


# store manifests -------------------------------------------------------------------------------------

_STORE_TEMPLATE: dict[str, Path] = {}


def store_template(workdir: Path) -> Path:
    if "store" not in _STORE_TEMPLATE:
        from helpers import make_pairs, write_store

        root = Path(tempfile.mkdtemp(dir=workdir.parent, prefix="fuzz-template-"))
        data = make_pairs(root / "data", n=20)
        _STORE_TEMPLATE["store"] = write_store(data, root / "store")
    return _STORE_TEMPLATE["store"]


def _paths(obj: Any, prefix=()) -> list[tuple]:
    out = [prefix]
    if isinstance(obj, dict):
        for k, v in obj.items():
            out += _paths(v, prefix + (k,))
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            out += _paths(v, prefix + (i,))
    return out


def _set(obj: Any, path: tuple, value: Any) -> Any:
    if not path:
        return value
    obj[path[0]] = _set(obj[path[0]], path[1:], value)
    return obj


file_like = st.sampled_from(["../../victim.npy", "/tmp/victim.npy", "../store2/x.npy", "teachers/../../x.npy",
                             "sample_ids.json", "manifest.json", "teachers", "", ".", "teachers/t0/available.npy"])


@st.composite
def manifest_mutation(draw, manifest: dict):
    manifest = json.loads(json.dumps(manifest))
    for _ in range(draw(st.integers(1, 3))):
        paths = _paths(manifest)
        target = draw(st.sampled_from(paths))
        if target and target[-1] == "file" or draw(st.integers(0, 4)) == 0:
            value = draw(st.one_of(file_like, json_values))
        else:
            value = draw(st.one_of(json_values, st.integers(-5, 10 ** 9), file_like))
        if not target:
            manifest = value
            break
        manifest = _set(manifest, target, value)
    return manifest


def read_store(path: Path) -> None:
    from mmkd.data.feature_store import FeatureStore
    from mmkd.teachers.extract import reapply_availability, teacher_table

    store = FeatureStore(path, allow_partial=True)
    if store.num_samples > 0:
        store.rows([0, store.num_samples - 1])
    assert store.available.shape[0] == store.num_samples
    store.verify()
    teacher_table(store)
    reapply_availability(str(path), "always")


def fuzz_manifests(campaign: Campaign, examples: int) -> None:
    template = store_template(campaign.workdir)
    manifest = json.loads((template / "manifest.json").read_text())

    @settings(max_examples=examples, deadline=None, database=None, phases=[Phase.generate],
              suppress_health_check=list(HealthCheck))
    @given(mutated=manifest_mutation(manifest), raw=st.one_of(st.none(), st.binary(max_size=50)))
    def case(mutated, raw):
        def make(sandbox):
            import numpy as np

            np.save(sandbox / "victim.npy", np.ones(20, bool))
            shutil.copytree(template, sandbox / "out")
            data = raw if raw is not None and len(raw) % 3 == 0 else json.dumps(mutated).encode()
            (sandbox / "out" / "manifest.json").write_bytes(data)
            return sandbox / "out"

        campaign.check("manifest", make, lambda p, out: read_store(p))

    case()


# the authors' meta.jsonl ---------------------------------------------------------------------------

@st.composite
def meta_lines(draw):
    lines = []
    for _ in range(draw(st.integers(0, 6))):
        kind = draw(st.integers(0, 6))
        if kind == 0:
            lines.append(draw(st.binary(max_size=40)))
        elif kind == 1:
            lines.append(json.dumps(draw(json_values)).encode())
        else:
            obj = {"id": draw(st.one_of(weird_text, json_values)),
                   "imgpath": draw(st.one_of(st.sampled_from(["s1/img.png", "s2/img.png", "../up/img.png",
                                                              "/abs/img.png", "", "s1"]), json_values)),
                   "txt": draw(weird_text),
                   "available_clips": draw(st.one_of(st.lists(st.sampled_from(["A", "B", "Z"]), max_size=3),
                                                     json_values))}
            lines.append(json.dumps(obj).encode())
    return b"\n".join(lines)


def write_author_features(root: Path, draw_dims: int) -> None:
    import torch

    for folder, dims in (("s1", 4), ("s2", draw_dims)):
        (root / folder).mkdir(parents=True, exist_ok=True)
        feats = {"A_img": torch.ones(dims), "A_txt": torch.ones(dims), "B_img": torch.ones(4)}
        torch.save(feats, root / folder / "clips_output.pt")
        torch.save({k: torch.ones(4) for k in feats}, root / folder / "clips_project_output.pt")
    (root / "s2" / "clips_output.pt").write_bytes(b"\x80\x04forged") if draw_dims == 0 else None


def fuzz_meta(campaign: Campaign, examples: int) -> None:
    from mmkd.teachers.import_authors import import_author_features

    @settings(max_examples=examples, deadline=None, database=None, phases=[Phase.generate],
              suppress_health_check=list(HealthCheck))
    @given(data=meta_lines(), dims=st.sampled_from([0, 4, 5]))
    def case(data, dims):
        def make(sandbox):
            root = sandbox / "authors"
            write_author_features(root, dims)
            (root / "meta.jsonl").write_bytes(data)
            return root

        campaign.check("meta_jsonl", make,
                       lambda p, out: import_author_features(p, out, chunk_rows=2, teachers={"A": 4, "B": 4},
                                                             projected_dim=4, progress=False))

    case()


# ---- the campaign ---------------------------------------------------------------------------------

def run_campaign(examples: int, workdir: Path, readers: tuple[str, ...] = READERS) -> Campaign:
    import warnings

    import torch

    torch.set_num_threads(1)
    campaign = Campaign(workdir)
    steps = {"csv": fuzz_tables, "catalog": fuzz_catalogs, "config": fuzz_configs, "safetensors": fuzz_safetensors,
             "manifest": fuzz_manifests, "meta_jsonl": fuzz_meta}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for name, step in steps.items():
            if name in readers or (name == "csv" and {"csv", "jsonl", "tar"} & set(readers)):
                step(campaign, examples)
    return campaign


def figures_line(campaign: Campaign) -> str:
    figs = campaign.figures()
    total = {k: sum(f[k] for f in figs.values()) for k in ("tried", "ok", "refused", "crashes")}
    parts = ", ".join(f"{r}={f['tried']}/{f['ok']}/{f['refused']}/{f['crashes']}" for r, f in figs.items())
    return (f"RELIABILITY fuzz campaign: inputs_tried={total['tried']}, worked={total['ok']}, "
            f"clean_refusals={total['refused']}, crashes={total['crashes']}; per reader tried/worked/refused/crashes: "
            f"{parts}")


DOC_BEGIN = "<!-- fuzz-figures: written by `python tests/reliability/fuzz.py --write-docs` -->"
DOC_END = "<!-- /fuzz-figures -->"


def write_docs(campaign: Campaign, examples: int, doc: Path) -> None:
    figs = campaign.figures()
    rows = ["| reader | inputs tried | worked | clean refusals (exit 2) | crashes |", "|---|---:|---:|---:|---:|"]
    for r, f in figs.items():
        rows.append(f"| {r} | {f['tried']} | {f['ok']} | {f['refused']} | {f['crashes']} |")
    total = {k: sum(f[k] for f in figs.values()) for k in ("tried", "ok", "refused", "crashes")}
    rows.append(f"| **all** | **{total['tried']}** | **{total['ok']}** | **{total['refused']}** | "
                f"**{total['crashes']}** |")
    block = "\n".join([DOC_BEGIN, "", f"`python tests/reliability/fuzz.py --examples {examples} --write-docs` "
                       f"(up to {examples} generated inputs per reader; files outside the output folder were "
                       f"compared before and after every input):", "", *rows, "", DOC_END])
    text = doc.read_text(encoding="utf-8")
    if DOC_BEGIN in text:
        text = re.sub(re.escape(DOC_BEGIN) + ".*?" + re.escape(DOC_END), lambda m: block, text, flags=re.S)
    else:
        text = text.rstrip("\n") + "\n\n" + block + "\n"
    doc.write_text(text, encoding="utf-8")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--examples", type=int, default=300, help="generated inputs per reader")
    parser.add_argument("--readers", default=",".join(READERS))
    parser.add_argument("--write-docs", action="store_true", help="write the figures into docs/RELIABILITY.md")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="mmkd-fuzz-") as tmp:
        work = Path(tmp) / "work"
        work.mkdir()
        campaign = run_campaign(args.examples, work, tuple(args.readers.split(",")))
    print(figures_line(campaign))
    seen: dict[str, str] = {}
    for crash in campaign.crashes:  # one example per distinct place and error
        lines = [ln for ln in crash.splitlines() if ln.strip()]
        frames = [ln for ln in lines if ln.strip().startswith("File ")]
        error = next((ln for ln in lines if re.match(r"^\w+(Error|Exception)\b|^\w+:", ln) and "input:" not in ln),
                     lines[0])
        seen.setdefault(f"{frames[-1].strip() if frames else ''} {error[:120]}", crash)
    for crash in seen.values():
        print("----\n" + crash[-2500:])
    if args.write_docs:
        write_docs(campaign, args.examples, HERE.parents[1] / "docs" / "RELIABILITY.md")
    return 1 if campaign.crashes else 0


if __name__ == "__main__":
    sys.path.insert(0, str(HERE.parents[1] / "src"))
    sys.exit(main())
