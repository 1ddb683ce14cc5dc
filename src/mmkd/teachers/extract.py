"""One pass over an image-text dataset that encodes every sample with every teacher.

Legend: B batch rows, n readable rows of a chunk, D a teacher's embedding dim.

Each image is decoded once and resized once, to the largest size the teachers need; every
teacher's own preprocessing then runs on that resized copy, and teachers whose preprocessing is
identical (size, interpolation, crop, mean and std) share one tensor (`TransformPlan`). A teacher
whose resize is the shared one gets exactly the pixels of its own preprocessing; a smaller one
resizes the resized copy instead of the original (cosine >= 0.99 to its own path on tiny
teachers, `tests/test_extract.py`). Captions go to every teacher's own tokenizer.

Rows are processed chunk by chunk (`chunk_rows` consecutive dataset records); model batches
never straddle a chunk, so a chunk's features do not depend on how many processes ran or where
a previous run stopped. Under torchrun the chunks still missing are dealt out by position
(`rank_chunks`), so a rerun after one rank died spreads that rank's leftovers over every rank;
all ranks write into the same store files (disjoint, page-aligned rows), rank 0 creates and
finishes the store. Row i is dataset record i, always: an unreadable sample keeps its row with
zero features and is unavailable for every teacher.
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from dataclasses import dataclass, field
from typing import Any, Iterable, Sequence

import numpy as np
import torch

from mmkd.data.content import ROW_BYTES, digest_of, image_bytes
from mmkd.data.feature_store import FeatureStore, FeatureStoreWriter, TeacherEntry
from mmkd.data.index import sample_ids_of
from mmkd.data.pairs import PairRecord, Skip, load_image, read_caption
from mmkd.errors import UsageError
from mmkd.models.adapter import ClipEncoder
from mmkd.teachers import availability
from mmkd.utils.dist import DistInfo
from mmkd.utils.locks import writer_lock


@dataclass
class ExtractOptions:
    batch_size: int = 64
    chunk_rows: int = 1024
    availability: str = "rank"
    candidates: int = 10
    threshold: float = 0.25
    seed: int = 0
    num_workers: int = 0
    max_image_pixels: int = 64_000_000
    shared_decode: bool = True  # False decodes the image once per teacher and runs each teacher's own
    # preprocessing on it (the benchmark's baseline and the tests' reference path)
    precision: str = "fp32"  # fp32 | bf16 (autocast around every teacher's forward pass)
    progress: bool = True
    check_data: str = "sample"  # sample | full | off: compare the data with the rows an existing store holds

    def settings(self) -> dict[str, Any]:
        """What changes stored rows besides the teacher itself (checked when resuming)."""
        return {"availability": self.availability, "candidates": int(self.candidates),
                "threshold": float(self.threshold) if self.availability == "threshold" else None,
                "seed": int(self.seed), "precision": self.precision}


_PURE_STEPS = ("CenterCrop", "MaybeConvertMode", "MaybeToTensor", "ToTensor", "Normalize", "_convert_to_rgb")


def _step_signature(step: Any) -> tuple | None:
    """What decides a preprocessing step's output, for the steps open_clip's eval transforms are made of;
    None for any other step (its teacher then runs its own preprocessing on the decoded image)."""
    name = getattr(step, "__qualname__", type(step).__name__)
    if name not in ("Resize", *_PURE_STEPS):
        return None
    state = {k: v for k, v in getattr(step, "__dict__", {}).items() if not k.startswith("_") and k != "training"}
    return getattr(step, "__module__", ""), name, repr(sorted(state.items()))


@dataclass
class TransformPlan:
    """How one decoded image becomes every teacher's pixels: `resize` (the Resize step of the teacher that
    needs the largest image, or None) makes the shared copy; teachers with the same `key` share the
    result; a teacher in `from_original` runs its own preprocessing on the decoded image (one whose
    steps are not open_clip's eval steps, or one of the largest size that resizes otherwise, e.g.
    bilinear where the shared copy is bicubic)."""

    resize: Any = None
    key: dict[str, Any] = field(default_factory=dict)
    from_original: set[str] = field(default_factory=set)

    @classmethod
    def of(cls, preprocess: dict[str, Any]) -> TransformPlan:
        plan, sizes = cls(), {}
        for name, transform in preprocess.items():
            steps = list(getattr(transform, "transforms", []))
            first = steps[0] if steps else None
            size = getattr(first, "size", None)
            size = size[0] if isinstance(size, (list, tuple)) and len(size) == 1 else size
            signature = [_step_signature(step) for step in steps]
            if type(first).__name__ != "Resize" or not isinstance(size, int) or \
                    getattr(first, "max_size", None) is not None or None in signature:
                plan.key[name] = name
                plan.from_original.add(name)
                continue
            plan.key[name] = tuple(signature)
            sizes[name] = size
        if sizes:
            plan.resize = preprocess[max(sizes, key=lambda n: sizes[n])].transforms[0]
            largest = _step_signature(plan.resize)
            plan.from_original |= {n for n, size in sizes.items() if size == plan.resize.size and
                                   _step_signature(preprocess[n].transforms[0]) != largest}
        return plan

    def pixels(self, image: Any, preprocess: dict[str, Any]) -> dict[str, torch.Tensor]:
        resized = self.resize(image) if self.resize is not None else image
        done: dict[Any, torch.Tensor] = {}
        out = {}
        for name, transform in preprocess.items():
            key = self.key.get(name, name)
            if key not in done:
                done[key] = transform(image if name in self.from_original else resized)
            out[name] = done[key]
        return out


class _RowsDataset(torch.utils.data.Dataset):
    """Row -> (row, caption | None, {teacher: pixels_3HW} | None, skip reason | None, content digest).

    The digest (mmkd.data.content) hashes the image bytes read for decoding and the caption."""

    def __init__(self, records: Sequence[PairRecord], preprocess: dict[str, Any], max_pixels: int,
                 shared_decode: bool):
        self.records = records
        self.preprocess = preprocess
        self.max_pixels = max_pixels
        self.shared_decode = shared_decode
        self.plan = TransformPlan.of(preprocess)

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, row: int):
        record = self.records[row]
        caption = read_caption(record)
        raw = image_bytes(record)
        content = digest_of(raw, caption)
        if isinstance(caption, Skip):
            return row, None, None, caption.reason, content
        image = load_image(record, self.max_pixels, raw)
        if isinstance(image, Skip):
            return row, None, None, image.reason, content
        if self.shared_decode:
            return row, caption, self.plan.pixels(image, self.preprocess), None, content
        pixels = {}
        for name, preprocess in self.preprocess.items():  # each teacher's own path, from its own decode
            if pixels:
                image = load_image(record, self.max_pixels)
            pixels[name] = preprocess(image)
        return row, caption, pixels, None, content


class _ChunkBatches(torch.utils.data.Sampler):
    """Batches of consecutive rows that never cross a chunk boundary."""

    def __init__(self, bounds: list[tuple[int, int]], batch_size: int):
        self.bounds = bounds
        self.batch_size = batch_size

    def __iter__(self):
        for start, stop in self.bounds:
            for s in range(start, stop, self.batch_size):
                yield list(range(s, min(s + self.batch_size, stop)))

    def __len__(self) -> int:
        return sum(-(-(stop - start) // self.batch_size) for start, stop in self.bounds)


def _identity(batch):
    return batch


class _ChunkBuffer:
    """Features of one chunk as they arrive, then availability and the arrays to commit."""

    def __init__(self, start: int, stop: int, dims: dict[str, int]):
        self.start, self.stop = start, stop
        n = stop - start
        self.image = {t: np.zeros((n, d), np.float32) for t, d in dims.items()}
        self.text = {t: np.zeros((n, d), np.float32) for t, d in dims.items()}
        self.readable = np.zeros(n, bool)
        self.content = np.zeros((n, ROW_BYTES), np.uint8)
        self.skipped: dict[int, str] = {}
        self.filled = 0

    def complete(self) -> bool:
        return self.filled == self.stop - self.start

    def arrays(self, teacher: str, opts: ExtractOptions, chunk: int) -> dict[str, np.ndarray]:
        n = self.stop - self.start
        ok = self.readable
        img, txt = self.image[teacher][ok], self.text[teacher][ok]
        score = np.full(n, np.nan, np.float32)
        avail = np.zeros(n, bool)
        if ok.any():
            margins = availability.rank_margins(img, txt, opts.candidates, opts.seed, chunk)
            own = availability.own_similarity(img, txt)
            score[ok] = margins
            avail[ok] = availability.decide(opts.availability, margins, own, opts.threshold)
        return {"image": self.image[teacher].astype(np.float16), "text": self.text[teacher].astype(np.float16),
                "available": avail, "score": score}


def _sync_error(dist_info: DistInfo, message: str | None) -> None:
    """Rank 0's set-up error (or None) reaches every rank, so none waits forever at a barrier."""
    if dist_info.distributed:
        import torch.distributed as dist

        box = [message]
        dist.broadcast_object_list(box, src=0)
        message = box[0]
    if message:
        raise UsageError(message)


class StoreWriteError(UsageError):
    """The store could not be written (disk full, quota, read-only); committed chunks are kept."""

    exit_code = 1


@contextlib.contextmanager
def _store_write_errors(out: str):
    """An OSError while writing the store becomes a message that says what happened and how to go on."""
    try:
        yield
    except OSError as e:
        where = f" ({Path(e.filename).name})" if e.filename else ""
        raise StoreWriteError(f"could not write the feature store {out}: {e.strerror or e}{where}. Every chunk "
                              f"committed so far is kept and nothing partial is visible; free space and rerun the "
                              f"same command to resume") from None


def extract_features(records: Sequence[PairRecord], teachers: dict[str, ClipEncoder], out: str,
                     opts: ExtractOptions, dist_info: DistInfo = DistInfo(),
                     extra_manifest: dict[str, Any] | None = None) -> dict[str, Any] | None:
    """Fill (or resume) the store at `out`. Returns the summary on rank 0, None elsewhere; a run stopped by a
    signal returns `{"stopped_by_signal": True, "signal": name, "chunks_left": n}` on every rank."""

    if opts.availability not in availability.RULES:
        raise UsageError(f"--availability: {opts.availability!r} is not a rule; choose from {availability.RULES}")
    sample_ids = sample_ids_of(records)  # lazy over a data index: nothing held per sample
    entries = [TeacherEntry(name, int(enc.embed_dim), dict(enc.provenance), settings=opts.settings())
               for name, enc in teachers.items()]
    writer = None
    lock = contextlib.ExitStack()  # rank 0 holds the store's writer lock until the store is finished
    if dist_info.is_main:
        try:
            if Path(out).exists() and not Path(out).is_dir():
                raise UsageError(f"--out: {out!r} is an existing file, not a feature store folder; give a folder "
                                 f"path (it is created)")
            lock.enter_context(writer_lock(out, "--out", "feature store", command="mmkd extract"))
            _check_existing_rows(out, records, sample_ids, opts.check_data)
            _check_no_teacher_left_behind(out, list(teachers))
            with _store_write_errors(out):
                writer = FeatureStoreWriter.open(out, sample_ids, entries, chunk_rows=opts.chunk_rows, create=True,
                                                 extra_manifest=extra_manifest, record_content=True)
            error = None
        except UsageError as e:
            lock.close()
            error = str(e)
        _sync_error(dist_info, error)
    else:
        _sync_error(dist_info, None)
        writer = FeatureStoreWriter.open(out, sample_ids, entries, chunk_rows=opts.chunk_rows, create=False)
    assert writer is not None  # rank 0's set-up error was raised on every rank above
    with lock:
        return _extract(records, teachers, out, opts, dist_info, writer)


def _check_no_teacher_left_behind(out: str, names: list[str]) -> None:
    """A store can only be finished with every teacher it holds: a rerun of an interrupted extraction that
    leaves out a teacher with chunks still to write is refused before the store is touched."""
    from mmkd.data.feature_store import MANIFEST, _read_manifest

    if not (Path(out) / MANIFEST).is_file():
        return
    writer = FeatureStoreWriter(Path(out), _read_manifest(Path(out)))
    behind = {t: len(writer.pending([t])) for t in writer._entries if t not in names}
    behind = {t: n for t, n in behind.items() if n}
    if behind:
        listed = ", ".join(f"{t!r} ({n} of {writer.num_chunks} chunks)" for t, n in behind.items())
        raise UsageError(f"--teacher: the feature store {out!r} is unfinished and also holds teacher(s) that still "
                         f"lack chunks: {listed}. Rerun with those teachers too (the same --teacher NAME=SPEC as the "
                         f"interrupted run) to finish the store, or extract these teachers into a new --out")


def _check_existing_rows(out: str, records: Sequence[PairRecord], sample_ids: Sequence[str], mode: str) -> None:
    """Before resuming or extending a store: the rows it holds were made from these images and captions."""
    from mmkd.data.content import check_rows, open_content
    from mmkd.data.feature_store import MANIFEST, _read_manifest
    from mmkd.data.records import ids_digest

    if not (Path(out) / MANIFEST).is_file():
        return
    manifest = _read_manifest(Path(out))
    if manifest.get("num_samples") != len(sample_ids) or manifest.get("sample_ids_sha256") != ids_digest(sample_ids):
        return  # other sample ids: FeatureStoreWriter.open refuses with its own message
    content = open_content(out)
    if content is not None and content.shape[0] == len(records):
        check_rows(content, records, None, mode, repr(str(out)), "--data")


def _extract(records: Sequence[PairRecord], teachers: dict[str, ClipEncoder], out: str, opts: ExtractOptions,
             dist_info: DistInfo, writer: FeatureStoreWriter) -> dict[str, Any] | None:
    from mmkd.utils.dist import barrier, max_over_ranks
    from mmkd.utils.signals import StopFlag, loader_kwargs

    names = list(teachers)
    pending = writer.pending(names)
    mine = rank_chunks(pending, dist_info.rank, dist_info.world_size)
    bounds = [writer.chunk_bounds(c) for c in mine]
    dataset = _RowsDataset(records, {t: enc.preprocess for t, enc in teachers.items()}, opts.max_image_pixels,
                           opts.shared_decode)
    bars = _progress_bars(names, sum(b - a for a, b in bounds), opts.progress and dist_info.is_main)
    dims = {t: int(enc.embed_dim) for t, enc in teachers.items()}
    chunk_of_start = {writer.chunk_bounds(c)[0]: c for c in mine}
    buffer: _ChunkBuffer | None = None
    chunk = -1
    # A stop signal (mmkd.utils.signals) ends the run after the current batch: written chunks are kept, the
    # chunk being filled is dropped, and a rerun of the same command extracts what is left.
    with StopFlag() as stop:
        loader = torch.utils.data.DataLoader(dataset, batch_sampler=_ChunkBatches(bounds, opts.batch_size),
                                             collate_fn=_identity, **loader_kwargs(opts.num_workers))
        for batch in loader:
            first_row = batch[0][0]
            if buffer is None:
                chunk = chunk_of_start[first_row]
                buffer = _ChunkBuffer(*writer.chunk_bounds(chunk), dims)
            _encode_batch(batch, teachers, buffer, bars, opts.precision)
            if buffer.complete():
                _same_rows_as_stored(writer, buffer, records, out)
                for teacher in pending[chunk]:
                    with _store_write_errors(out):
                        writer.write_chunk(chunk, teacher, buffer.arrays(teacher, opts, chunk),
                                           record_extra={"skipped": {str(r): why for r, why in buffer.skipped.items()},
                                                         "rank": dist_info.rank},
                                           content=buffer.content)
                buffer = None
            if stop.requested:
                break
        del loader
    for bar in bars.values():
        bar.close()
    barrier()
    # Every rank learns whether any rank stopped (a signal may reach one rank only): none finishes the store then.
    signum = max_over_ranks(stop.signum if stop.requested else 0)
    if signum:
        stop.signum = signum
        return {"stopped_by_signal": True, "signal": stop.name, "chunks_left": len(writer.pending(names))}
    if not dist_info.is_main:
        return None
    with _store_write_errors(out):
        return finish_store(writer)


def rank_chunks(pending: Iterable[int], rank: int, world_size: int) -> list[int]:
    """The chunks `rank` writes: every `world_size`-th of the pending chunks in order, starting at its own
    position. Dealing by position rather than by chunk number keeps the shares even when the pending
    chunks are those of one rank that died (all c with c % world == r)."""
    return sorted(pending)[rank::world_size]


def _same_rows_as_stored(writer: FeatureStoreWriter, buffer: _ChunkBuffer, records, out: str) -> None:
    """A chunk that other teachers committed already: its rows must digest as stored (every row is checked
    here, for free: the digests were computed while reading the chunk)."""
    if "content" not in writer.manifest:
        return
    stored = np.asarray(writer._content_map()[buffer.start:buffer.stop])
    written = stored.any(axis=1)
    bad = np.flatnonzero(written & (stored != buffer.content).any(axis=1))
    if bad.size:
        shown = ", ".join(f"row {buffer.start + i} ({records[buffer.start + i].sample_id})" for i in bad[:5])
        raise UsageError(f"--data: {bad.size} row(s) of chunk {buffer.start}:{buffer.stop} differ from the data the "
                         f"feature store {out!r} was made from: {shown}. Their image or caption bytes changed under "
                         f"the same sample ids; use the original data or a new --out")


def _encode_batch(batch, teachers: dict[str, ClipEncoder], buffer: _ChunkBuffer, bars,
                  precision: str = "fp32") -> None:
    good = [(row, caption, pixels) for row, caption, pixels, _, _ in batch if caption is not None]
    for row, _, _, reason, content in batch:
        buffer.content[row - buffer.start] = np.frombuffer(content, np.uint8)
        if reason is not None:
            buffer.skipped[row] = reason
    buffer.filled += len(batch)
    if not good:
        return
    local = np.array([row - buffer.start for row, _, _ in good])
    buffer.readable[local] = True
    captions = [caption for _, caption, _ in good]
    for name, enc in teachers.items():
        pixels_B3HW = torch.stack([pixels[name] for _, _, pixels in good])
        with teacher_precision(enc, precision):
            buffer.image[name][local] = enc.encode_image(pixels_B3HW).float().cpu().numpy()
            buffer.text[name][local] = enc.encode_text(captions).float().cpu().numpy()
        if name in bars:
            bars[name].update(len(good))


def teacher_precision(enc: ClipEncoder, precision: str):
    """The context a teacher encodes in: bf16 autocast on the teacher's own device, or plain fp32.

    Stored features stay float16 either way; bf16 only changes the arithmetic of the forward pass
    (`bench/bench_extract_precision.py` measures the cosine to fp32 features per teacher).
    """
    if precision == "fp32":
        return contextlib.nullcontext()
    if precision != "bf16":
        raise UsageError(f"--precision: {precision!r} is not a precision; choose fp32 or bf16")
    device = torch.device(getattr(enc, "device", "cpu"))
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16)


def _progress_bars(names: list[str], total: int, enabled: bool) -> dict[str, Any]:
    if not enabled:
        return {}
    from tqdm import tqdm

    width = max(len(n) for n in names)
    return {n: tqdm(total=total, desc=f"{n:<{width}}", unit="rows", position=i, leave=True, mininterval=1.0)
            for i, n in enumerate(names)}


def finish_store(writer: FeatureStoreWriter) -> dict[str, Any]:
    """Mark the store complete and attach per-teacher statistics and the skip counts."""
    skipped: dict[str, int] = {}
    first = next(iter(writer.manifest["teachers"]))["name"]
    for rec in writer.records(first):
        for reason in rec.get("skipped", {}).values():
            skipped[reason] = skipped.get(reason, 0) + 1
    store = FeatureStore(writer.path, allow_partial=True)
    table = teacher_table(store)
    summary = {"teachers": table, "skipped": skipped, "warnings": rarely_available(table)}
    writer.finalize(summary)
    return summary


RARE_SHARE = 0.05


def rarely_available(table: dict[str, dict[str, float]]) -> list[str]:
    """A warning per teacher available for under 5 % of rows: it will teach almost nothing, and `align`
    and `distill` get almost no signal from it."""
    out = []
    for name, row in table.items():
        if row["share_available"] < RARE_SHARE:
            out.append(f"{name}: teacher {name!r} is available for {row['share_available']:.1%} of rows (under "
                       f"{RARE_SHARE * 100:.0f} %), so it will teach almost nothing; re-decide with `mmkd extract "
                       f"--reapply-availability --availability threshold|always --out STORE` (or another "
                       f"--availability rule / --threshold)")
    return out


def reapply_availability(path: str, rule: str, threshold: float = 0.25) -> dict[str, Any]:
    """Decide availability again from the stored scores and features, without re-extracting.

    Readable rows are those with non-zero features (unreadable ones are all-zero). A rerun
    after a crash finishes the job (the store reads as incomplete until then).
    """

    if rule not in availability.RULES:
        raise UsageError(f"--availability: {rule!r} is not a rule; choose from {availability.RULES}")
    store = FeatureStore(path, allow_partial=True)
    with writer_lock(path, "--out", "feature store", command="mmkd extract --reapply-availability"):
        return _reapply(store, path, rule, threshold)


def _reapply(store: FeatureStore, path: str, rule: str, threshold: float) -> dict[str, Any]:
    writer = FeatureStoreWriter(Path(path), store.manifest)
    if rule == "rank":
        no_scores = [t for t in store.teachers if store.manifest_entry(t).get("settings", {}).get("candidates") is None]
        if no_scores:
            raise UsageError(f"--availability rank: teachers {no_scores} have no stored rank scores (imported "
                             f"features); use threshold or always, or re-extract them")
    writer.mark_incomplete()
    for name in store.teachers:
        for chunk in range(writer.num_chunks):
            start, stop = writer.chunk_bounds(chunk)
            img = np.asarray(store.image_features(name)[start:stop], dtype=np.float32)
            txt = np.asarray(store.text_features(name)[start:stop], dtype=np.float32)
            readable = np.abs(img).sum(axis=1) > 0
            scores = np.asarray(store.scores(name)[start:stop])
            avail = readable & availability.decide(rule, scores, availability.own_similarity(img, txt), threshold)
            writer.rewrite_kind(chunk, name, "available", avail)
        entry = writer._entries[name]
        entry["settings"] = {**entry.get("settings", {}), "availability": rule,
                             "threshold": float(threshold) if rule == "threshold" else None}
    return finish_store(writer)


def teacher_table(store: FeatureStore) -> dict[str, dict[str, float]]:
    """Per teacher: rows, share of rows available, mean availability score (readable rows)."""
    table = {}
    for name in store.teachers:
        avail = np.asarray(store.array(name, "available"))
        scores = np.asarray(store.scores(name), dtype=np.float64)
        finite = scores[np.isfinite(scores)]
        table[name] = {"rows": int(store.num_samples), "available": int(avail.sum()),
                       "share_available": float(avail.mean()) if avail.size else 0.0,
                       "mean_score": float(finite.mean()) if finite.size else float("nan")}
    return table


def format_table(table: dict[str, dict[str, float]]) -> str:
    width = max([len("teacher"), *map(len, table)])
    lines = [f"{'teacher':<{width}}  {'rows':>8}  {'available':>9}  {'mean score':>10}"]
    for name, row in table.items():
        lines.append(f"{name:<{width}}  {row['rows']:>8d}  {row['share_available']:>9.1%}  {row['mean_score']:>10.4f}")
    return "\n".join(lines)
