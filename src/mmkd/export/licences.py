"""Which licence of a set is the most restrictive, from free-text licence names.

A distilled student inherits obligations from every teacher it learned from (and from its data),
so the model card states the strictest one. Licence strings come from teacher registries and
checkpoints as written by people ("MIT", "CC BY-NC-SA 4.0", "research only", ""), so the ranking
reads keywords rather than exact SPDX ids. Unknown or missing licences rank as the strictest:
without stated terms nothing is granted.

Ranks (higher = more restrictive):
    0 permissive (MIT, Apache, BSD, CC0, public domain)
    1 attribution (CC-BY)
    2 share-alike / copyleft (CC-BY-SA, GPL, LGPL, AGPL, OpenRAIL and other use-restricted terms)
    3 non-commercial or research-only
    4 non-commercial with share-alike or no-derivatives
    5 unknown, unstated, proprietary or custom terms
"""

from __future__ import annotations

import re

RANK_LABELS = {
    0: "permissive",
    1: "attribution required",
    2: "share-alike / copyleft or use restrictions",
    3: "non-commercial / research only",
    4: "non-commercial with share-alike or no-derivatives",
    5: "unknown or unstated terms (treat as all rights reserved)",
}


def _tokens(text: str) -> list[str]:
    return [t for t in re.split(r"[^a-z0-9.]+", text.lower()) if t]


def licence_rank(licence: str | None) -> int:
    """Restrictiveness rank 0..5 of a free-text licence name (see module doc)."""
    words = _tokens(licence or "")
    joined = "-".join(words)
    if not words or joined in ("unknown", "none", "n-a", "na", "unspecified", "other", "custom", "proprietary"):
        return 5
    tokens = set(words)
    if tokens & {"unknown", "unspecified", "unlicensed"}:
        return 5
    non_commercial = bool(tokens & {"nc", "noncommercial"}) or "non-commercial" in joined \
        or bool(re.search(r"research-(only|use)|academic", joined))
    share_alike = bool(tokens & {"sa", "sharealike"}) or "share-alike" in joined
    no_derivs = bool(tokens & {"nd", "noderivatives", "noderivs"}) or "no-deriv" in joined
    if non_commercial:
        return 4 if (share_alike or no_derivs) else 3
    if "proprietary" in tokens or "all-rights-reserved" in joined:
        return 5
    if share_alike or no_derivs or tokens & {"gpl", "lgpl", "agpl", "openrail", "rail", "llama2",
                                               "llama", "gemma"} or re.search(r"(^|-)(a|l)?gpl", joined):
        return 2
    if tokens & {"cc0", "mit", "apache", "bsd", "isc", "unlicense", "zlib", "mpl", "psf"} or "public-domain" in joined \
            or re.match(r"(apache|bsd|mpl)", joined):
        return 0
    if tokens & {"cc", "by", "attribution"} or joined.startswith("cc-by"):
        return 1
    return 5


def licence_known(licence: str | None) -> bool:
    """False for a missing licence or one that says it is not known ("", None, "unknown ...", "n/a")."""
    words = _tokens(licence or "")
    return bool(words) and words[0] not in ("unknown", "none", "n", "na", "unspecified", "not")


def most_restrictive(licences: dict[str, str | None]) -> tuple[int, list[str]]:
    """(highest rank, the sources holding it) over `{source: licence}`; (-1, []) for no sources."""
    if not licences:
        return -1, []
    ranks = {source: licence_rank(lic) for source, lic in licences.items()}
    top = max(ranks.values())
    return top, [s for s, r in ranks.items() if r == top]
