"""Finding Hugging Face Hub repositories in the local cache (offline first).

`resolve_hub_repo(repo_id)` returns the local snapshot folder of a cached repo; it only
downloads when the environment allows network access (HF_HUB_OFFLINE unset) and the repo is
not cached. The cache folder is `HF_HUB_CACHE` (or `HF_HOME/hub`, the library default).
"""

from __future__ import annotations

import os
from pathlib import Path

from mmkd.errors import UsageError


def _cache_dir() -> str | None:
    return os.environ.get("HF_HUB_CACHE") or None


def resolve_hub_repo(repo_id: str, option: str = "--teacher", how_to_get: str = "") -> Path:
    """The local snapshot folder of `repo_id` (see the module doc); UsageError naming `option` and the fix."""
    try:
        from huggingface_hub import snapshot_download
        from huggingface_hub.errors import LocalEntryNotFoundError
    except ImportError:  # pragma: no cover - huggingface_hub comes with transformers/open_clip
        raise UsageError(f"{option}: hub id {repo_id!r} needs the huggingface_hub package; "
                         "pip install huggingface_hub") from None
    try:
        return Path(snapshot_download(repo_id, local_files_only=True, cache_dir=_cache_dir()))
    except LocalEntryNotFoundError:
        pass
    except Exception as e:  # malformed id etc.
        raise UsageError(f"{option}: {repo_id!r} is not a usable Hugging Face repo id ({e})") from None
    offline = os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes")
    hint = how_to_get or (f"download it on a machine with network access (`huggingface-cli download {repo_id}`), "
                          f"copy the folder here and pass its path")
    if not offline:
        try:
            return Path(snapshot_download(repo_id, cache_dir=_cache_dir()))
        except Exception as e:
            raise UsageError(f"{option}: {repo_id!r} is not in the local Hugging Face cache and could not be "
                             f"downloaded ({type(e).__name__}). {hint}") from None
    raise UsageError(f"{option}: {repo_id!r} is not in the local Hugging Face cache "
                     f"({_cache_dir() or 'default cache'}) and HF_HUB_OFFLINE is set. {hint}")
