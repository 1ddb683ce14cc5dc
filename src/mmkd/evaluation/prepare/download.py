"""An official download — folders, .zip and .tar(.gz/.bz2/.xz) archives, single files — as one tree.

Every file of every `--from` source gets a POSIX path: files of a folder relative to the folder,
members of an archive by their path inside it, and archives lying inside a folder are opened in
place (their members appear under the archive's folder), so a download can be given as the
archive, as the folder it was unpacked to, or as the folder holding several archives.

Files are recognised by their content, not their name: a `.zip` that holds a plain CSV (MCAT's
tables) is a plain file, and a Git LFS pointer or an HTML page saved under a data file's name
(a clone without `git lfs pull`, a download link that returned an error page) is refused naming
the file and how to get the real one. Archive member names are normalised: `./` and `../` parts
are dropped (MCAT's `../dataset_csv/x.csv.zip`, PORPOISE's `./x.csv.zip`), so a member never lands
outside the tree. A member that fails its CRC or cannot be decompressed is a `DataError` naming the
member, its archive and the fix.

Converters find files by pattern (`match`): `**/` matches any number of folders, `*` and `?` stay
inside one name, `{name}` captures one path part (or the part of a name between fixed text) and
`{name*}` a relative path of several parts. Matching ignores case.
Files are copied with `copy_many`, which reads each archive in stored order so a compressed tar is
decompressed once.
"""

from __future__ import annotations

import os
import re
import shutil
import tarfile
import zipfile
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, Callable, Iterable

from mmkd.errors import DataError, UsageError

ARCHIVE_SUFFIXES = (".zip", ".tar", ".tar.gz", ".tgz", ".tar.bz2", ".tbz2", ".tar.xz", ".txz")


LFS_POINTER = b"version https://git-lfs.github.com/spec/"
_TAR_COMPRESSED = {"gzip": b"\x1f\x8b", "bzip2": b"BZh", "xz": b"\xfd7zXZ\x00"}


def sniff(head: bytes) -> str:
    """What the first bytes of a file say it is: "zip", "tar", "gzip", "bzip2", "xz", "lfs-pointer",
    "html" or "" (anything else)."""
    if head.startswith((b"PK\x03\x04", b"PK\x05\x06", b"PK\x07\x08")):
        return "zip"
    if len(head) >= 262 and head[257:262] == b"ustar":
        return "tar"
    for kind, magic in _TAR_COMPRESSED.items():
        if head.startswith(magic):
            return kind
    if head.startswith(LFS_POINTER):
        return "lfs-pointer"
    if head.lstrip(b"\xef\xbb\xbf \t\r\n").lower().startswith((b"<!doctype html", b"<html")):
        return "html"
    return ""


def _head(path: Path, n: int = 512) -> bytes:
    with open(path, "rb") as f:
        return f.read(n)


def placeholder_problem(name: str, head: bytes) -> str | None:
    """The refusal for a file that is a stand-in for the data (an LFS pointer, an HTML page), else None."""
    kind = sniff(head)
    if kind == "lfs-pointer":
        size = re.search(rb"size (\d+)", head)
        real = f" of {int(size.group(1)):,} bytes" if size else ""
        return (f"{name} is a Git LFS pointer ({len(head)} bytes of text naming a file{real}), not the data; "
                f"run `git lfs pull` in the repository it was cloned from, or download the file from its official "
                f"source")
    if kind == "html":
        title = re.search(rb"<title>(.*?)</title>", head, re.IGNORECASE | re.DOTALL)
        shown = f" titled {title.group(1).decode('utf-8', 'replace').strip()[:80]!r}" if title else ""
        return (f"{name} is an HTML page{shown}, not the data (a download link that answered with a web page: an "
                f"error, a login or a virus-scan notice); open the link in a browser and download the file itself")
    return None


def refuse_placeholder(name: str, head: bytes) -> None:
    problem = placeholder_problem(name, head)
    if problem:
        raise UsageError(f"--from: {problem}")


def archive_kind(path: Path) -> str:
    """"zip" or "tar" when the file is an archive by content and by name (an archive's suffix, or none:
    a saved download link), else "": a `.zip` holding a plain CSV is a plain file, and so is a `.npz`
    (a zip by content, but data). An LFS pointer or HTML page under an archive's name is refused."""
    name = path.name.lower()
    archive_name = name.endswith(ARCHIVE_SUFFIXES) or "." not in name
    if not archive_name:
        return ""
    head = _head(path)
    kind = sniff(head)
    if kind == "zip":
        return "zip"
    tar_name = ".tar" in name or name.endswith((".tgz", ".tbz2", ".txz")) or "." not in name
    if kind == "tar" or (kind in _TAR_COMPRESSED and tar_name):
        return "tar"
    if name.endswith(ARCHIVE_SUFFIXES):
        refuse_placeholder(str(path), head)
    return ""


def member_name(name: str) -> str:
    """An archive member's path with `.`, `..` and empty parts dropped (never above the tree's root)."""
    return "/".join(p for p in name.replace("\\", "/").split("/") if p not in ("", ".", ".."))


def damaged(member_path: str, container: str, error: BaseException) -> DataError:
    return DataError(f"--from: {member_path} in {container} cannot be read ({type(error).__name__}: {error}); the "
                     f"archive is damaged — download it again (and compare its checksum with the published one "
                     f"where there is one)")


_READ_ERRORS = (zipfile.BadZipFile, tarfile.TarError, zlib.error, EOFError)


def _opener(open_fn: Callable[..., Any], *args: Any) -> Callable[[], IO[bytes]]:
    """How a member is opened when it is read: `open_fn(*args)`, late, so no file stays open meanwhile."""
    return lambda: open_fn(*args)


@dataclass
class Member:
    """One file of the download. `opener()` returns a binary stream; `order` sorts reads per container."""

    path: str  # POSIX path in the merged tree
    size: int
    opener: Callable[[], IO[bytes]]
    container: str  # the folder or archive it comes from
    order: int = 0
    local: Path | None = None  # the file on disk, for folder sources

    def read_bytes(self) -> bytes:
        try:
            with self.opener() as f:
                return f.read()
        except _READ_ERRORS as e:
            raise damaged(self.path, self.container, e) from None

    def head(self, n: int = 512) -> bytes:
        try:
            with self.opener() as f:
                return f.read(n)
        except _READ_ERRORS as e:
            raise damaged(self.path, self.container, e) from None


@dataclass
class Download:
    """The merged file tree of one or more sources."""

    sources: list[Path]
    members: dict[str, Member] = field(default_factory=dict)
    _archives: list = field(default_factory=list)

    @classmethod
    def open(cls, sources: Iterable[str | Path]) -> Download:
        paths = [Path(os.path.expanduser(str(s))) for s in sources]
        missing = [str(p) for p in paths if not p.exists()]
        if missing:
            raise UsageError(f"--from: {', '.join(map(repr, missing))} does not exist; give the downloaded archive or "
                             f"the folder it was unpacked to")
        download = cls(paths)
        for path in paths:
            if path.is_dir():
                download._add_folder(path)
            elif archive_kind(path):
                download._add_archive(path, prefix="")
            else:
                download._add_file(path, path.name, container=str(path.parent))
        return download

    def close(self) -> None:
        for archive in self._archives:
            archive.close()
        self._archives.clear()

    def __enter__(self) -> Download:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- building ------------------------------------------------------------------------------

    def _add_file(self, path: Path, rel: str, container: str) -> None:
        self.members[rel] = Member(rel, path.stat().st_size, _opener(open, path, "rb"), container, local=path)

    def _add_folder(self, root: Path) -> None:
        for dirpath, dirnames, filenames in os.walk(root):
            dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
            for name in sorted(filenames):
                if name.startswith("."):
                    continue
                path = Path(dirpath) / name
                rel = path.relative_to(root).as_posix()
                if archive_kind(path):
                    parent = str(Path(rel).parent.as_posix())
                    self._add_archive(path, prefix="" if parent == "." else parent + "/")
                else:
                    self._add_file(path, rel, str(root))

    def _add_archive(self, path: Path, prefix: str) -> None:
        try:
            if archive_kind(path) == "zip":
                zipped = zipfile.ZipFile(path)
                self._archives.append(zipped)
                for info in zipped.infolist():
                    name = member_name(info.filename)
                    if info.is_dir() or not name or _hidden(name):
                        continue
                    rel = prefix + name
                    self.members[rel] = Member(rel, info.file_size, _opener(zipped.open, info), str(path),
                                               order=info.header_offset)
            else:
                tarred = tarfile.open(path, "r:*")
                self._archives.append(tarred)
                for member in tarred.getmembers():
                    name = member_name(member.name)
                    if not member.isfile() or not name or _hidden(name):
                        continue
                    rel = prefix + name
                    self.members[rel] = Member(rel, member.size, _opener(tarred.extractfile, member),
                                               str(path), order=member.offset_data)
        except (zipfile.BadZipFile, tarfile.TarError, EOFError, OSError) as e:
            raise UsageError(f"--from: {str(path)!r} is not a readable archive ({type(e).__name__}: {e}); the "
                             f"download may be incomplete — download it again") from None

    # -- finding -------------------------------------------------------------------------------

    def match(self, pattern: str) -> list[tuple[Member, dict[str, str]]]:
        """(member, captured fields) of every file whose path matches `pattern`, sorted by path."""
        regex = compile_pattern(pattern)
        out = []
        for rel in sorted(self.members):
            m = regex.fullmatch(rel)
            if m:
                out.append((self.members[rel], {k: v for k, v in m.groupdict().items() if v is not None}))
        return out

    def one(self, pattern: str | list[str], what: str, expected: str) -> Member:
        """The single file matching `pattern` (or one of several patterns); UsageError naming what was
        expected when there is none or several."""
        patterns = [pattern] if isinstance(pattern, str) else [str(p) for p in pattern]
        found = [hit for p in patterns for hit in self.match(p)]
        found = list({m.path: (m, f) for m, f in found}.values())
        if not found:
            raise UnrecognisedDownload(self, f"no {what} ({' or '.join(patterns)})", expected)
        if len(found) > 1:
            shown = ", ".join(m.path for m, _ in found[:5])
            raise UsageError(f"--from: several files match {what} ({shown}); give the one to use with --from")
        return found[0][0]

    def describe(self, limit: int = 8) -> str:
        """A short listing of what the download holds (top-level entries with file counts)."""
        tops: dict[str, int] = {}
        for rel in self.members:
            head = rel.split("/", 2)
            key = "/".join(head[:2]) + ("/" if len(head) > 2 else "") if len(head) > 1 else head[0]
            tops[key] = tops.get(key, 0) + 1
        shown = [f"{k} ({n} file{'s' if n != 1 else ''})" if k.endswith("/") else k
                 for k, n in sorted(tops.items())[:limit]]
        more = f", ... {len(tops) - limit} more" if len(tops) > limit else ""
        return ", ".join(shown) + more if shown else "nothing"

    # -- copying -------------------------------------------------------------------------------

    def copy_many(self, jobs: list[tuple[Member, Path]], progress: str | None = None, link: bool = True) -> None:
        """Copy members to destinations, archive members in stored order; folder files are hard-linked
        when `link` and the filesystem allows, else copied."""
        from tqdm.auto import tqdm

        ordered = sorted(jobs, key=lambda j: (j[0].container, j[0].order, j[0].path))
        for member, dest in tqdm(ordered, desc=progress or "copy", unit="file", disable=None, leave=False):
            dest.parent.mkdir(parents=True, exist_ok=True)
            if member.local is not None and link:
                try:
                    os.link(member.local, dest)
                    continue
                except OSError:
                    pass
            try:
                with member.opener() as src, open(dest, "wb") as out:
                    shutil.copyfileobj(src, out, 1 << 20)
            except _READ_ERRORS as e:
                dest.unlink(missing_ok=True)
                raise damaged(member.path, member.container, e) from None


class UnrecognisedDownload(UsageError):
    """The download does not hold what a converter needs; the message names what was expected."""

    def __init__(self, download: Download, problem: str, expected: str):
        sources = ", ".join(str(s) for s in download.sources)
        super().__init__(f"--from: {sources} is not the expected download: {problem}.\n  expected: {expected}\n"
                         f"  found: {download.describe()}")


def _hidden(name: str) -> bool:
    return any(part.startswith(".") or part == "__MACOSX" for part in name.split("/") if part)


_PATTERN_CACHE: dict[str, re.Pattern] = {}


def compile_pattern(pattern: str) -> re.Pattern:
    """Regex of a path pattern: `**/` any folders, `*`/`?` within a name, `{name}` a captured part."""
    if pattern in _PATTERN_CACHE:
        return _PATTERN_CACHE[pattern]
    out, i = [], 0
    seen: set[str] = set()
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out.append("(?:[^/]+/)*")
            i += 3
        elif pattern[i] == "*":
            out.append("[^/]*")
            i += 1
        elif pattern[i] == "?":
            out.append("[^/]")
            i += 1
        elif pattern[i] == "{":
            j = pattern.index("}", i)
            name, spans = pattern[i + 1:j].rstrip("*"), pattern[i + 1:j].endswith("*")
            out.append(f"(?P={name})" if name in seen else f"(?P<{name}>{'.+?' if spans else '[^/]+?'})")
            seen.add(name)
            i = j + 1
        else:
            out.append(re.escape(pattern[i]))
            i += 1
    regex = re.compile("".join(out), re.IGNORECASE)
    _PATTERN_CACHE[pattern] = regex
    return regex
