"""Building and refreshing a source index (the format is described in `mmkd.data.index`).

`ensure_index(source)` is what every launch calls. It reads index.json and `stat`s each shard;
when nothing changed it maps the index and returns. Otherwise it scans only the shards whose
size or mtime changed (all of them when the index is new or its settings changed), in parallel:
under torchrun each rank takes every world_size-th of them, and each rank (or a lone process)
spreads its shards over a pool of worker processes. Workers write one part file per shard into
a build folder; rank 0 merges the parts with the unchanged shards' rows of the previous
generation into a new generation and replaces index.json. The other ranks wait by watching the
build folder and index.json, not in a collective call, so an index build of hours cannot hit a
process-group timeout. An advisory lock (`fcntl`) keeps two separate launches from building the
same index at once: the second one finds it built when it gets the lock. Rank 0 takes that lock
after the launch's only collective call (a broadcast of a token, at once) and hands its plan to
the other ranks in a file named by the token; they wait for it on the filesystem, so a launch
whose rank 0 waits behind another launch's build cannot hit a process-group timeout either. A
wait for the lock ends after `MMKD_INDEX_LOCK_TIMEOUT_S` (default 2 hours) with a message naming
the holder (host, pid, command, since when). Replaced generations are removed only when no
process may still open them (leases, see `mmkd.data.index`).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import multiprocessing
import os
import re
import secrets
import shutil
import socket
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from mmkd.data import tarscan
from mmkd.data.index import (DEFAULT_SHARD_FIELDS, DERIVED_FIELDS, FORMAT, INDEX_FILE, LEASES, MEMBER_DTYPE,
                             RETIRED, VERSION, SourceIndex, TableLayout)
from mmkd.data.index_scan import part_path, read_part, scan_job, scan_table, write_part
from mmkd.errors import UsageError
from mmkd.utils.io import atomic_write_text

CHECKS = ("stat", "full")
RETIRED_GRACE_S = 600.0  # a replaced generation is kept at least this long (see mmkd.data.index)
FOREIGN_LEASE_MAX_AGE_S = 7 * 86400.0  # a lease of another host not renewed for this long is stale
HANDOFF_MAX_AGE_S = 3600.0  # a plan handed to the other ranks, left by a launch that ended
LOCK_TIMEOUT_ENV = "MMKD_INDEX_LOCK_TIMEOUT_S"
# Test-only: seconds rank 0 keeps the index lock before handing its plan to the other ranks (a
# stand-in for a long build); read at each call.
_TEST_HOLD_ENV = "MMKD_TEST_INDEX_LOCK_HOLD_S"
_GENERATION_RE = re.compile(r"^g\d{14}-[0-9a-f]{6}$")


@dataclass
class Source:
    """A data source resolved to files: what to index and where the index lives."""

    kind: str  # webdataset | csv | jsonl
    spec: str  # the --data value
    root: Path  # shard paths are stored relative to it (a table: its folder)
    files: list[str]  # absolute shard paths, or [the table]
    index_dir: Path
    fields: tuple[str, ...]  # metadata fields (JSON keys / columns) to index
    table: TableLayout | None = None

    def settings(self) -> dict[str, Any]:
        """What shapes the index besides the files: a change rebuilds it from scratch."""
        table = None
        if self.table is not None:
            table = {k: v for k, v in asdict(self.table).items() if k not in ("header", "delimiter")}
        return {"kind": self.kind, "fields": sorted(self.fields), "table": table}


def index_cache() -> Path:
    """Where indexes live unless `--data.index_dir` says otherwise: $MMKD_CACHE/index (default
    ~/.cache/mmkd/index). Reading data never writes into the data's own folders."""
    return Path(os.environ.get("MMKD_CACHE") or Path.home() / ".cache" / "mmkd") / "index"


def default_index_dir(name: str, spec: str) -> Path:
    """`<index cache>/<name>-<hash of the absolute --data path>`: one index per data source."""
    return index_cache() / f"{name}-{hashlib.sha1(os.path.abspath(spec).encode()).hexdigest()[:10]}"


def resolve_source(path: str, fmt: str, image_key: str = "image", caption_key: str = "caption",
                   id_key: str = "sample_id", fields: tuple[str, ...] = (), index_dir: str = "") -> Source:
    """The files of `--data` and where their index lives. `fields` are indexed on top of the built-in
    ones (BIOMEDICA's label, panel and licence fields for shards)."""
    from mmkd.data.sources import expand_shards

    if fmt == "webdataset":
        shards = [os.path.abspath(s) for s in expand_shards(path)]
        # Not resolved: through a symlinked folder, shard paths (and so sample ids and subsets) are
        # relative to the folder as the user named it.
        root = Path(os.path.abspath(path)) if os.path.isdir(path) else Path(os.path.commonpath(
            [os.path.dirname(s) for s in shards]))
        all_fields = tuple(dict.fromkeys((*DEFAULT_SHARD_FIELDS, *DERIVED_FIELDS, *fields)))
        where = Path(index_dir) if index_dir else default_index_dir(root.name or "shards", path)
        return Source("webdataset", path, root, shards, where, all_fields)
    table = Path(path)
    if not table.is_file():
        raise UsageError(f"--data: file {str(table)!r} does not exist")
    root = table.resolve().parent
    delimiter = "\t" if table.suffix.lower() == ".tsv" else ","
    layout = TableLayout([], delimiter, image_key, caption_key, id_key)
    where = Path(index_dir) if index_dir else default_index_dir(table.name, path)
    return Source(fmt, path, root, [str(table.resolve())], where, tuple(dict.fromkeys(fields)), layout)


# ---- planning -------------------------------------------------------------------------------
def read_meta(index_dir: Path) -> dict[str, Any] | None:
    try:
        meta = json.loads((index_dir / INDEX_FILE).read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT or meta.get("version") != VERSION:
        return None
    if not (index_dir / str(meta.get("generation"))).is_dir():
        return None
    return meta


def make_plan(source: Source, check: str = "stat") -> dict[str, Any] | None:
    """None when the index is current; else the shards to (re)scan and the ones whose rows are kept."""
    meta = read_meta(source.index_dir)
    if meta is not None and meta.get("root") == str(source.root) and \
            {**meta.get("settings", {}), "fields": None} == {**source.settings(), "fields": None}:
        # Fields indexed before stay indexed: asking for fewer never rebuilds, asking for more rebuilds once.
        source.fields = tuple(dict.fromkeys((*meta["fields"], *source.fields)))
    usable = meta is not None and meta.get("settings") == source.settings() and meta.get("root") == str(source.root)
    old = {s["path"]: (i, s) for i, s in enumerate(meta["shards"])} if usable and meta is not None else {}
    shards, todo = [], []
    for i, f in enumerate(source.files):
        rel = os.path.relpath(f, source.root)
        try:
            st = os.stat(f)
        except OSError as e:
            raise UsageError(f"--data: cannot read {f}: {e.strerror or e}") from None
        entry: dict[str, Any] = {"path": rel, "size": st.st_size, "mtime_ns": st.st_mtime_ns, "old": None}
        prev = old.get(rel)
        if prev and prev[1]["size"] == st.st_size and prev[1]["mtime_ns"] == st.st_mtime_ns:
            entry["old"] = prev[0]
            if check == "full" and source.kind == "webdataset":  # catches a rewrite that kept size and mtime
                from mmkd.data.index_scan import _listing_digest

                if _listing_digest(tarscan.list_members(f)) != prev[1].get("listing"):
                    entry["old"] = None
        if entry["old"] is None:
            todo.append(i)
        shards.append(entry)
    if usable and meta is not None and not todo and \
            [s["path"] for s in shards] == [s["path"] for s in meta["shards"]]:
        return None
    generation = f"g{time.strftime('%Y%m%d%H%M%S')}-{secrets.token_hex(3)}"
    reason = "new index" if meta is None else ("settings changed" if not usable else
                                               f"{len(todo)} new or changed shard(s), "
                                               f"{len(old) - sum(s['old'] is not None for s in shards)} removed")
    return {"generation": generation, "shards": shards, "todo": todo,
            "old_generation": meta["generation"] if usable and meta is not None else None, "reason": reason}


# ---- merging --------------------------------------------------------------------------------
def _open_npy(path: Path, dtype, shape) -> np.memmap:
    return np.lib.format.open_memmap(path, mode="w+", dtype=dtype, shape=shape)


def merge(source: Source, plan: dict[str, Any], build_dir: Path) -> dict[str, Any]:
    """Write the new generation from the parts and the previous generation's kept rows; returns its meta."""
    from mmkd.data.records import ids_digest

    old = SourceIndex(source.index_dir) if plan["old_generation"] else None
    reused = [e["old"] for e in plan["shards"] if e["old"] is not None]
    assert old is not None or not reused  # rows are only kept from an existing generation
    names = list(source.fields)
    vocab: dict[str, dict[str, int]] = {fname: {} for fname in names}
    if old is not None:
        for fname in names:
            vocab[fname] = {v: i for i, v in enumerate(old.fields.get(fname, []))}
    table_kind = source.kind != "webdataset"
    # pass 1: sizes and vocabularies
    sizes: list[tuple[int, int, list[int]]] = []  # per shard: rows, key bytes, values per field
    metas: dict[int, dict[str, Any]] = {}
    for s, entry in enumerate(plan["shards"]):
        if entry["old"] is not None:
            assert old is not None
            a, b = int(old.shard_starts[entry["old"]]), int(old.shard_starts[entry["old"] + 1])
            counts = [int(old.field_arrays(f)[1][b]) - int(old.field_arrays(f)[1][a]) for f in names]
            sizes.append((b - a, int(old.key_starts[b]) - int(old.key_starts[a]), counts))
        else:
            with np.load(part_path(build_dir, s), allow_pickle=False) as z:
                meta = json.loads(bytes(z["meta"]).decode())
            metas[s] = meta
            sizes.append((meta["num_samples"], meta["key_bytes"], meta["field_values"]))
            for fname, values in zip(names, meta["vocab"]):
                for v in values:
                    vocab[fname].setdefault(v, len(vocab[fname]))
    total = sum(x[0] for x in sizes)
    total_keys = sum(x[1] for x in sizes)
    total_values = [sum(x[2][j] for x in sizes) for j in range(len(names))]
    gen_dir = source.index_dir / plan["generation"]
    gen_dir.mkdir(parents=True)
    keys = _open_npy(gen_dir / "keys.npy", np.uint8, (total_keys,))
    key_starts = _open_npy(gen_dir / "key_starts.npy", np.int64, (total + 1,))
    if table_kind:
        record_starts = _open_npy(gen_dir / "record_starts.npy", np.int64, (total + 1,))
        flags = _open_npy(gen_dir / "flags.npy", np.uint8, (total,))
    else:
        members = _open_npy(gen_dir / "members.npy", MEMBER_DTYPE, (total,))
    code_types = [np.uint16 if len(vocab[f]) <= 0xFFFF else np.uint32 for f in names]
    start_types = [np.uint32 if t < 2 ** 32 else np.int64 for t in total_values]
    codes = [_open_npy(gen_dir / f"field-{j}.codes.npy", code_types[j], (total_values[j],)) for j in range(len(names))]
    starts = [_open_npy(gen_dir / f"field-{j}.starts.npy", start_types[j], (total + 1,)) for j in range(len(names))]
    key_starts[0] = 0
    for j in range(len(names)):
        starts[j][0] = 0
    # pass 2: copy, one shard at a time
    row, key_off, value_off = 0, 0, [0] * len(names)
    shard_table = []
    for s, entry in enumerate(plan["shards"]):
        n, kb, counts = sizes[s]
        if entry["old"] is not None:
            assert old is not None
            prev = old.shards[entry["old"]]
            a, b = int(old.shard_starts[entry["old"]]), int(old.shard_starts[entry["old"] + 1])
            ka = int(old.key_starts[a])
            keys[key_off:key_off + kb] = old.keys[ka:ka + kb]
            key_starts[row + 1:row + n + 1] = np.asarray(old.key_starts[a + 1:b + 1]) - ka + key_off
            if table_kind:
                record_starts[:] = old.record_starts  # a table is one file: kept whole or rescanned
                flags[:] = old.flags
            else:
                members[row:row + n] = old.members[a:b]
            for j, name in enumerate(names):
                c, st, _ = old.field_arrays(name)
                va = int(st[a])
                codes[j][value_off[j]:value_off[j] + counts[j]] = c[va:va + counts[j]]
                starts[j][row + 1:row + n + 1] = np.asarray(st[a + 1:b + 1], dtype=np.int64) - va + value_off[j]
            info = {k: prev[k] for k in ("damaged", "bad_json", "num_members", "listing", "duplicate_keys",
                                         "duplicate_examples") if k in prev}
        else:
            arrays, meta = read_part(build_dir, s)
            keys[key_off:key_off + kb] = arrays["keys"]
            key_starts[row + 1:row + n + 1] = arrays["key_starts"][1:] + key_off
            if table_kind:
                record_starts[:] = arrays["record_starts"]
                flags[:] = arrays["flags"]
            else:
                members[row:row + n] = arrays["members"]
            for j, name in enumerate(names):
                local = meta["vocab"][j]
                lut = np.array([vocab[name][v] for v in local], dtype=np.int64) if local else np.zeros(0, np.int64)
                part_codes = arrays[f"f{j}_codes"]
                codes[j][value_off[j]:value_off[j] + counts[j]] = lut[part_codes] if part_codes.size else part_codes
                starts[j][row + 1:row + n + 1] = arrays[f"f{j}_starts"][1:] + value_off[j]
            info = {k: meta[k] for k in ("damaged", "bad_json", "num_members", "listing", "caption_too_long")
                    if k in meta}
            if meta.get("duplicate_keys"):
                info.update(duplicate_keys=meta["duplicate_keys"], duplicate_examples=meta["duplicate_examples"])
        shard_table.append({"path": entry["path"], "size": entry["size"], "mtime_ns": entry["mtime_ns"],
                            "start": row, "stop": row + n, **info})
        row, key_off = row + n, key_off + kb
        value_off = [v + c for v, c in zip(value_off, counts)]
    arrays_out = [keys, key_starts, *codes, *starts] + ([record_starts, flags] if table_kind else [members])
    for arr in arrays_out:
        arr.flush()
    del arrays_out, keys, key_starts, codes, starts
    if table_kind:
        del record_starts, flags
    else:
        del members
    for f in gen_dir.iterdir():
        with open(f, "rb+") as fh:
            os.fsync(fh.fileno())
    meta_out: dict[str, Any] = {
        "format": FORMAT, "version": VERSION, "kind": source.kind, "source": source.spec, "root": str(source.root),
        "generation": plan["generation"], "num_samples": total, "settings": source.settings(),
        "fields": {n: {"values": list(vocab[n])} for n in names}, "shards": shard_table,
        "created": time.strftime("%Y-%m-%d %H:%M:%S"),
    }
    if source.table is not None:
        table = source.table
        if metas:  # the header comes from the scan
            table.header = metas[0].get("header", table.header)
        elif old is not None:
            table = TableLayout(**old.meta["table"])
        meta_out["table"] = asdict(table)
    meta_out["sample_ids_sha256"] = ids_digest(SourceIndex(source.index_dir, meta_out).iter_sample_ids())
    meta_out["bytes_per_sample"] = round(sum(f.stat().st_size for f in gen_dir.iterdir()) / max(1, total), 2)
    atomic_write_text(source.index_dir / INDEX_FILE, json.dumps(meta_out, indent=1))
    if old is not None and plan["old_generation"] != plan["generation"]:
        (source.index_dir / plan["old_generation"] / RETIRED).touch()  # removed once no process may open it
    collect_generations(source.index_dir, plan["generation"])
    return meta_out


def _lease_is_live(lease: Path, now: float) -> bool:
    _, host, pid = lease.name.rsplit("@", 2)
    if host != socket.gethostname():
        return now - lease.stat().st_mtime < FOREIGN_LEASE_MAX_AGE_S
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def collect_generations(index_dir: Path, current: str | None) -> list[str]:
    """Remove the generations no process may still open (not `current`, retired longer than the grace
    period, no live lease), stale leases and plans handed over by ended launches; returns the
    generations removed. Called with the index lock held."""
    now = time.time()
    leased: set[str] = set()
    lease_dir = index_dir / LEASES
    for lease in sorted(lease_dir.iterdir()) if lease_dir.is_dir() else []:
        try:
            live = _lease_is_live(lease, now)
        except (OSError, ValueError):
            live = False
        if live:
            leased.add(lease.name.rsplit("@", 2)[0])
        else:
            lease.unlink(missing_ok=True)
    for handoff in [*index_dir.glob("plan-*.json"), *index_dir.glob("plan-*.wait")]:
        with contextlib.suppress(OSError):
            if now - handoff.stat().st_mtime > HANDOFF_MAX_AGE_S:
                handoff.unlink()
    removed = []
    for gen in sorted(index_dir.iterdir()):
        if gen.name == current or gen.name in leased or not _GENERATION_RE.match(gen.name) or not gen.is_dir():
            continue
        marker = gen / RETIRED
        try:
            since = (marker if marker.exists() else gen).stat().st_mtime
        except OSError:
            continue
        if now - since >= RETIRED_GRACE_S:
            shutil.rmtree(gen, ignore_errors=True)
            removed.append(gen.name)
    return removed


# ---- orchestration --------------------------------------------------------------------------
def lock_holder(index_dir: Path) -> str:
    """Who holds (or last held) the index lock, as its holder wrote it into the lock file."""
    try:
        who = json.loads((index_dir / ".lock").read_text() or "{}")
    except (OSError, ValueError):
        who = {}
    if not who:
        return "another process (it did not say which)"
    return f"pid {who.get('pid')} on host {who.get('host')} ({who.get('command')}, since {who.get('since')})"


def lock_timeout() -> float:
    value = os.environ.get(LOCK_TIMEOUT_ENV, "")
    try:
        return float(value) if value else 7200.0
    except ValueError:
        raise UsageError(f"{LOCK_TIMEOUT_ENV}: {value!r} is not a number of seconds") from None


@contextlib.contextmanager
def _locked(index_dir: Path, enabled: bool) -> Iterator[None]:
    """The index lock, waited for at most `lock_timeout()` seconds; the holder writes who it is into it."""
    if not enabled:
        yield
        return
    fd = os.open(index_dir / ".lock", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        deadline, told = time.time() + lock_timeout(), False
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.time() > deadline:
                    raise UsageError(f"--data.index_dir: the index in {index_dir} is locked by {lock_holder(index_dir)} "
                                     f"for over {lock_timeout():.0f} s. Wait for that launch to finish indexing (or "
                                     f"stop it), or raise {LOCK_TIMEOUT_ENV}") from None
                if not told:
                    print(f"waiting for the index lock of {index_dir}, held by {lock_holder(index_dir)}",
                          file=sys.stderr)
                    told = True
                time.sleep(0.5)
        who = {"pid": os.getpid(), "host": socket.gethostname(), "command": " ".join(sys.argv[:3]),
               "since": time.strftime("%Y-%m-%d %H:%M:%S")}
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(who).encode(), 0)
        try:
            yield
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


def _rank_world() -> tuple[int, int]:
    """(rank, world size) of an initialised process group; a process that never imported torch has none
    (and is not made to import it: that alone costs seconds and hundreds of MB)."""
    if "torch.distributed" not in sys.modules:
        return 0, 1
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def _broadcast(obj: Any, world: int) -> Any:
    if world == 1:
        return obj
    import torch.distributed as dist

    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def default_workers() -> int:
    """Worker processes per launching process: the cores, shared among the ranks of a node."""
    local_world = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
    return max(1, (len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1)
               // max(1, local_world))


def _scan(source: Source, plan: dict[str, Any], mine: list[int], build_dir: Path, workers: int,
          progress: bool) -> None:
    if source.kind != "webdataset":
        if mine:
            assert source.table is not None
            arrays, meta = scan_table(source.files[0], source.kind, source.table, source.fields)
            write_part(build_dir, 0, arrays, meta)
        return
    jobs = [(source.files[i], plan["shards"][i]["path"], source.fields, str(build_dir), i) for i in mine]
    bar = None
    if progress and jobs:
        from tqdm import tqdm

        rank, world = _rank_world()
        bar = tqdm(total=len(jobs), desc="indexing shards" + (f" (rank 0 of {world})" if world > 1 else ""),
                   unit="shard", file=sys.stderr, mininterval=1.0, dynamic_ncols=True)
    n = min(workers or default_workers(), len(jobs))
    if n <= 1:
        for job in jobs:
            scan_job(job)
            if bar is not None:
                bar.update(1)
    else:
        with multiprocessing.get_context("fork").Pool(n) as pool:
            for _ in pool.imap_unordered(scan_job, jobs, chunksize=1):
                if bar is not None:
                    bar.update(1)
    if bar is not None:
        bar.close()


def _wait(predicate, error_dir: Path, what: str, timeout: float | None = None) -> None:
    """Poll until `predicate()`; raise the first error another rank left in `error_dir`."""
    deadline = None if timeout is None else time.time() + timeout
    while not predicate():
        errors = sorted(error_dir.glob("error-*.txt")) if error_dir.is_dir() else []
        if errors:
            raise UsageError(errors[0].read_text())
        if deadline is not None and time.time() > deadline:
            raise UsageError(what)
        time.sleep(0.2)


def _receive_plan(handoff: Path, rank: int) -> dict[str, Any] | None:
    """Rank 0's plan, waited for on the filesystem (never in a collective call, so no process-group
    timeout applies while rank 0 waits for another launch's lock)."""
    index_dir, waiting = handoff.parent, handoff.with_suffix(".wait")
    none = index_dir / "build-none"  # _wait's error folder: this wait has none
    _wait(lambda: waiting.exists() or handoff.exists(), none, f"--data.index_dir: rank {rank} cannot see "
          f"{waiting.name}, which rank 0 created in {index_dir}: the index folder must be on storage every node "
          f"shares. Set --data.index_dir to a shared folder, or build the index once beforehand with "
          f"`mmkd data index --data ...`", 120)
    _wait(handoff.is_file, none, f"--data.index_dir: rank {rank} waited {lock_timeout():.0f} s for rank 0 to take "
          f"the lock of the index in {index_dir}, held by {lock_holder(index_dir)}; wait for that launch to finish "
          f"indexing, or raise {LOCK_TIMEOUT_ENV}", lock_timeout() + 60)
    plan = json.loads(handoff.read_text())["plan"]
    waiting.unlink(missing_ok=True)
    return plan


def ensure_index(source: Source, workers: int = 0, progress: bool = True, check: str = "stat") -> SourceIndex:
    """The current index of `source`, built or refreshed first when needed (see the module doc)."""
    if check not in CHECKS:
        raise UsageError(f"--data.index_check: {check!r} is not allowed; choose stat or full")
    rank, world = _rank_world()
    try:
        source.index_dir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UsageError(f"--data.index_dir: cannot create {source.index_dir}: {e.strerror or e}; choose a "
                         f"writable folder") from None
    # The launch's only collective call, before rank 0 waits for the lock: every rank gets here at once.
    handoff = source.index_dir / f"plan-{_broadcast(secrets.token_hex(8), world)}.json" if world > 1 else None
    if handoff is not None and rank == 0:
        handoff.with_suffix(".wait").touch()  # seen by the other ranks: the index folder is shared
    with contextlib.ExitStack() as held:
        try:
            held.enter_context(_locked(source.index_dir, rank == 0))
        except UsageError as e:  # the lock timed out: the other ranks stop with the same message
            if handoff is not None:
                atomic_write_text(handoff, json.dumps({"plan": {"error": str(e)}}))
            raise
        plan = None
        if rank == 0:
            try:
                collect_generations(source.index_dir, (read_meta(source.index_dir) or {}).get("generation"))
                plan = make_plan(source, check)
                if plan is not None:
                    for stale in source.index_dir.glob("build-*"):  # left by a killed build (we hold the lock)
                        shutil.rmtree(stale, ignore_errors=True)
                    (source.index_dir / f"build-{plan['generation']}").mkdir()
            except UsageError as e:
                plan = {"error": str(e)}
            hold = float(os.environ.get(_TEST_HOLD_ENV, "0") or 0)
            if hold:  # test hook: keep the lock (and the other ranks waiting) as a long build would
                time.sleep(hold)
            if handoff is not None:
                atomic_write_text(handoff, json.dumps({"plan": plan}))
        else:
            assert handoff is not None
            plan = _receive_plan(handoff, rank)
        if plan is not None and "error" in plan:
            raise UsageError(plan["error"])
        if plan is None:
            return SourceIndex(source.index_dir)
        build_dir = source.index_dir / f"build-{plan['generation']}"
        if rank != 0:
            _wait(build_dir.is_dir, build_dir, f"--data.index_dir: rank {rank} cannot see {build_dir}, which rank 0 "
                  f"created: the index folder must be on storage every node shares. Set --data.index_dir to a "
                  f"shared folder, or build the index once beforehand with `mmkd data index --data ...`", 120)
        if progress and rank == 0:
            print(f"indexing {source.spec} ({plan['reason']}) into {source.index_dir}", file=sys.stderr)
        mine = plan["todo"][rank::world]
        try:
            _scan(source, plan, mine, build_dir, workers, progress and rank == 0)
            (build_dir / f"done-{rank}").touch()
            if rank == 0:
                _wait(lambda: all((build_dir / f"done-{r}").exists() for r in range(world)), build_dir, "")
                merge(source, plan, build_dir)
        except BaseException as e:
            if not list(build_dir.glob("error-*.txt")):  # the other ranks raise this message too
                message = str(e) if isinstance(e, UsageError) else f"building the index in {source.index_dir} " \
                                                                      f"failed on rank {rank}: {e!r}"
                (build_dir / f"error-{rank}.txt").write_text(message)
            if rank == 0:
                if world > 1:
                    time.sleep(1.0)  # let the other ranks read the error before the folder goes
                shutil.rmtree(build_dir, ignore_errors=True)
                shutil.rmtree(source.index_dir / plan["generation"], ignore_errors=True)
            raise
        if rank == 0:
            shutil.rmtree(build_dir, ignore_errors=True)
        else:
            _wait(lambda: (read_meta(source.index_dir) or {}).get("generation") == plan["generation"], build_dir, "")
    return SourceIndex(source.index_dir)
