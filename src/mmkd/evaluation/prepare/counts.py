"""Counted examples per split and class, checked against the figures the sources publish.

`published` (catalog `prepare.published`) is a list of `{source: text, counts: {split: N | {class: N}}}`
— several entries when sources disagree (e.g. a paper and a mirror); the split `total` means all
splits together. A source matches when every
figure it gives equals the counted one; the report names the sources that match. With published
figures and no match, the download is refused (`CountMismatch`) unless the caller accepts it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from mmkd.errors import DataError

Counts = dict[str, dict[str, int]]  # split -> class -> number of examples


def total(per_class: dict[str, int]) -> int:
    return int(sum(per_class.values()))


@dataclass
class CountCheck:
    counted: Counts
    matched: list[str]  # sources whose every figure equals the counted one
    differences: dict[str, list[str]]  # source -> "split/class: counted X, published Y"
    published: list[dict[str, Any]]

    @property
    def ok(self) -> bool:
        return not self.published or bool(self.matched)

    def table(self) -> str:
        """A plain-text table of the counted examples per split and class."""
        classes = sorted({c for per in self.counted.values() for c in per})
        lines = [f"  {'split':<8} {'total':>8}  " + "  ".join(f"{c}" for c in classes)]
        for split, per in self.counted.items():
            lines.append(f"  {split:<8} {total(per):>8}  " + "  ".join(f"{per.get(c, 0):>{len(c)}}" for c in classes))
        return "\n".join(lines)

    def summary(self) -> str:
        if not self.published:
            return "no published counts to check against; the counted numbers are above"
        if self.matched:
            others = [s for s in self.differences if s not in self.matched]
            text = "counts match " + "; ".join(self.matched)
            if others:
                text += " (and differ from " + "; ".join(f"{s}: {', '.join(self.differences[s][:3])}" for s in others) + ")"
            return text
        return "counts match no published figure:\n" + "\n".join(
            f"  - {s}: {', '.join(d[:6])}{' ...' if len(d) > 6 else ''}" for s, d in self.differences.items())


def check_counts(counted: Counts, published: list[dict[str, Any]] | None) -> CountCheck:
    published = list(published or [])
    matched, differences = [], {}
    overall: dict[str, int] = {}
    for per in counted.values():
        for cls, n in per.items():
            overall[cls] = overall.get(cls, 0) + n
    for entry in published:
        source = str(entry.get("source", "published"))
        diffs = []
        for split, figure in (entry.get("counts") or {}).items():
            have = overall if split == "total" and "total" not in counted else counted.get(str(split), {})
            if isinstance(figure, dict):
                for cls, n in figure.items():
                    if have.get(str(cls), 0) != int(n):
                        diffs.append(f"{split}/{cls}: counted {have.get(str(cls), 0)}, published {int(n)}")
            elif total(have) != int(figure):
                diffs.append(f"{split}: counted {total(have)}, published {int(figure)}")
        differences[source] = diffs
        if not diffs:
            matched.append(source)
    return CountCheck(counted, matched, differences, published)


class CountMismatch(DataError):
    """The download's counts match no published figure: likely partial or a different release."""
