"""`mmkd datasets prepare`: official downloads -> the layouts the catalog reads, with verified counts.

A catalog entry's `prepare:` block names a layout family (one converter per family, the entry
gives the file names, classes and published counts as data) and the entry's `path` says where the
result goes. The flow: open the download (archive or folder, see download.py) -> the family's
converter finds its files and counts examples per split and class -> the counts are checked
against the entry's `prepare.published` figures (counts.py) -> the layout is written into a
`<target>.partial` folder that is renamed into place at the end, with `PREPARED.json` (counts,
which published figures they match, the sources) beside it.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import shutil
from pathlib import Path
from typing import Any, Callable

from mmkd.errors import UsageError
from mmkd.evaluation.prepare.common import Context, Plan
from mmkd.evaluation.prepare.counts import CountCheck, CountMismatch, check_counts
from mmkd.evaluation.prepare.download import Download

LAYOUTS: dict[str, str] = {
    "class_folders": "mmkd.evaluation.prepare.images:class_folders",
    "table_images": "mmkd.evaluation.prepare.images:table_images",
    "table_paths": "mmkd.evaluation.prepare.images:table_paths",
    "h5_patches": "mmkd.evaluation.prepare.images:h5_patches",
    "npz": "mmkd.evaluation.prepare.images:npz",
    "vqa_records": "mmkd.evaluation.prepare.vqa:vqa_records",
    "survival_mcat": "mmkd.evaluation.prepare.slides:survival_mcat",
    "slide_labels": "mmkd.evaluation.prepare.slides:slide_labels",
}
MANIFEST = "PREPARED.json"
FOLDER_FORMATS = ("txt", "imagefolder", "slides")  # the catalog path is the folder itself
FILE_FORMATS = ("medmnist",)  # the catalog path is one file in a folder shared with other datasets


def converter(layout: str) -> Callable[..., Plan]:
    import importlib

    if layout not in LAYOUTS:
        raise UsageError(f"prepare.layout: {layout!r} is not a known layout; choose from {', '.join(LAYOUTS)}")
    module, attr = LAYOUTS[layout].split(":")
    return getattr(importlib.import_module(module), attr)


def data_root_unset(entry) -> bool:
    """The catalog puts `entry` under ${MMKD_DATA}, and MMKD_DATA is not set."""
    return "${MMKD_DATA}" in str(entry.option("path", "")) and not os.environ.get("MMKD_DATA")


def target_of(entry) -> tuple[Path, str, str]:
    """(folder the prepared data goes in, the catalog path's file name in it or '', "file" | "folder").
    A "file" target is written alone into a shared folder (MedMNIST's .npz files); a "folder"
    target is a whole folder of its own, replaced as a unit."""
    if data_root_unset(entry):
        raise UsageError("MMKD_DATA is not set: `export MMKD_DATA=/path/to/data` (the folder prepared datasets go "
                         "in), or give --out")
    if entry.format in FOLDER_FORMATS:
        return entry.path, "", "folder"
    return entry.path.parent, entry.path.name, "file" if entry.format in FILE_FORMATS else "folder"


def _manifest_path(folder: Path, file_name: str, kind: str) -> Path:
    return folder / (f"{file_name}.prepared.json" if kind == "file" else MANIFEST)


def prepare_dataset(entry, sources: list[str], *, out: str | Path | None = None, overwrite: bool = False,
                    accept_counts: bool = False, splits: list[str] | None = None, link: bool = True,
                    log: Callable[[str], None] = print) -> dict[str, Any]:
    """Convert the download `sources` of catalog `entry` into its layout; returns the manifest."""
    spec = entry.option("prepare")
    if not isinstance(spec, dict):
        raise UsageError(f"dataset {entry.name}: no converter (no `prepare:` in its catalog entry); "
                         f"{entry.option('how_to_get') or 'arrange it as the catalog entry says'}")
    if out is None:
        folder, file_name, kind = target_of(entry)
    else:
        folder = Path(out).expanduser().resolve()
        file_name, kind = ("", "folder") if entry.format in FOLDER_FORMATS else (entry.path.name, "folder")
    _refuse_overlap(folder / file_name if kind == "file" else folder, sources, "--out" if out else "the catalog path")
    from mmkd.utils.locks import writer_lock

    # the scratch folder beside the target holds the writer lock: one `prepare` per target at a time
    scratch = folder.parent / f".{file_name if kind == 'file' else folder.name}.prepare"
    expected = str(spec.get("expected") or entry.option("source") or "the official download")
    ctx = Context(entry.name, expected, file_name, scratch, splits, link)
    folder.parent.mkdir(parents=True, exist_ok=True)
    with writer_lock(scratch, "--out", "dataset folder", f"mmkd datasets prepare {entry.name}"):
        try:
            return _prepare(entry, spec, sources, folder, file_name, kind, ctx, overwrite, accept_counts, log)
        finally:
            shutil.rmtree(scratch, ignore_errors=True)


def _prepare(entry, spec: dict, sources: list[str], folder: Path, file_name: str, kind: str, ctx: Context,
             overwrite: bool, accept_counts: bool, log: Callable[[str], None]) -> dict[str, Any]:
    old_outputs = _claim(folder, file_name, kind, overwrite)
    with Download.open(sources) as download:
        plan = converter(str(spec.get("layout")))(download, spec, ctx)
        check = check_counts(plan.counts, spec.get("published"))
        log(f"{entry.name}: counted examples\n{check.table()}")
        for note in plan.notes:
            log(f"  note: {note}")
        log(f"  {check.summary()}")
        if not check.ok and not accept_counts:
            raise CountMismatch(f"dataset {entry.name}: the download's counts match no published figure — it may "
                                f"be partial or another release; nothing was written. Pass --accept-counts to "
                                f"prepare it anyway")
        info, outputs = _write(plan, folder, file_name, old_outputs, log)
    manifest = _manifest(entry, sources, check, plan, info)
    manifest["outputs"] = outputs
    from mmkd.utils.io import atomic_write_json

    atomic_write_json(_manifest_path(folder, file_name, plan.kind), manifest)
    return manifest


def _refuse_overlap(target: Path, sources: list[str], what: str) -> None:
    """Output and download must not overlap: replacing one would delete the other."""
    for source in sources:
        src = Path(source).expanduser().resolve()
        if target == src or src in target.parents or target in src.parents:
            raise UsageError(f"{what}: {target} overlaps the download {src} (--from); writing there would replace "
                             f"the download's own files — give --out a folder outside the download")


def _claim(folder: Path, file_name: str, kind: str, overwrite: bool) -> list[str]:
    """Check the target can be written; returns the files an earlier `prepare` wrote there (its
    PREPARED.json `outputs`), the only ones --overwrite removes."""
    if kind == "file":
        if (folder / file_name).exists() and not overwrite:
            raise UsageError(f"{folder / file_name} already exists; pass --overwrite to replace it, or --out DIR")
        return []
    if folder.exists() and not folder.is_dir():
        raise UsageError(f"{folder} is a file, not a folder; give --out a folder")
    if not folder.exists() or not any(folder.iterdir()):
        return []
    if not overwrite:
        raise UsageError(f"{folder} already exists and is not empty; pass --overwrite to replace what "
                         f"`mmkd datasets prepare` wrote there, or --out DIR")
    try:
        outputs = json.loads((folder / MANIFEST).read_text(encoding="utf-8")).get("outputs")
    except (OSError, json.JSONDecodeError, AttributeError):
        outputs = None
    if not isinstance(outputs, list):
        raise UsageError(f"--overwrite: {folder} was not made by `mmkd datasets prepare` (no {MANIFEST} listing its "
                         f"outputs), so nothing in it is removed; give --out an empty or new folder, or move its "
                         f"files away yourself")
    return [str(o) for o in outputs]


def _files_under(folder: Path) -> list[str]:
    return sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file() or p.is_symlink())


def _write(plan: Plan, folder: Path, file_name: str, old_outputs: list[str],
           log: Callable[[str], None]) -> tuple[dict, list[str]]:
    """Write the plan into `<folder>.partial`, check its content, then put it in place: the folder
    itself when it is new or empty, else file by file after removing only `old_outputs`."""
    if plan.kind == "file":
        info = plan.write(folder)
        return info, [file_name]
    partial = folder.parent / f"{folder.name}.partial"
    shutil.rmtree(partial, ignore_errors=True)
    try:
        info = plan.write(partial)
        from mmkd.evaluation.prepare.verify import verify_prepared

        problems = verify_prepared(partial / file_name if file_name else partial, str(info.get("format")),
                                   {"counts": plan.counts, "written": info})
        if problems:
            from mmkd.errors import DataError

            raise DataError("the prepared files are not usable, nothing was written:\n" +
                            "\n".join(f"  - {p}" for p in problems).replace(str(partial), str(folder)))
        outputs = _files_under(partial)
        if not folder.exists() or not any(folder.iterdir()):
            if folder.exists():
                folder.rmdir()
            partial.rename(folder)
            return info, outputs
        _replace_outputs(partial, folder, outputs, old_outputs, log)
        return info, outputs
    finally:
        shutil.rmtree(partial, ignore_errors=True)


def _replace_outputs(partial: Path, folder: Path, outputs: list[str], old_outputs: list[str],
                     log: Callable[[str], None]) -> None:
    owned = set(old_outputs) | {MANIFEST}
    clash = [o for o in outputs if (folder / o).exists() and o not in owned]
    if clash:
        raise UsageError(f"--overwrite: {folder} holds file(s) `prepare` did not write where it would write now "
                         f"({', '.join(clash[:3])}); move them away, or give --out another folder")
    for rel in old_outputs:
        path = folder / rel
        if ".." in Path(rel).parts or Path(rel).is_absolute():
            continue  # never follow a manifest outside the folder
        path.unlink(missing_ok=True)
        for parent in path.parents:
            if parent == folder or not parent.is_dir() or any(parent.iterdir()):
                break
            parent.rmdir()
    for rel in outputs:
        (folder / rel).parent.mkdir(parents=True, exist_ok=True)
        os.replace(partial / rel, folder / rel)
    kept = [f for f in _files_under(folder) if f not in set(outputs) | {MANIFEST}]
    if kept:
        log(f"  kept {len(kept)} file(s) in {folder} that `prepare` did not write: {', '.join(kept[:5])}"
            f"{' ...' if len(kept) > 5 else ''}")


def _manifest(entry, sources, check: CountCheck, plan: Plan, info: dict) -> dict[str, Any]:
    from mmkd import __version__

    return {"dataset": entry.name, "counts": check.counted, "published_match": check.matched,
            "published_differences": {k: v for k, v in check.differences.items() if v},
            "notes": plan.notes, "skipped": plan.skipped, "sources": [str(Path(s).expanduser().resolve()) for s in sources],
            "written": info, "mmkd_version": __version__,
            "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")}


def present(entry) -> bool:
    """Whether the dataset's data is on disk where the catalog says."""
    path = entry.path
    if entry.format == "txt":
        from mmkd.evaluation.datasets import list_files

        return bool(list_files(path))
    if entry.format == "slides":
        return (path / "slides.csv").is_file() if path.is_dir() else path.is_file()
    return path.exists()


def read_manifest(entry) -> dict | None:
    folder = entry.path if entry.format in FOLDER_FORMATS else entry.path.parent
    path = _manifest_path(folder, entry.path.name, "file" if entry.format in FILE_FORMATS else "folder")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return None
