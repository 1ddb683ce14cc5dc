"""Hub lookups for teachers; the resolver lives in `mmkd.utils.hub` (the student's tower init uses it too)."""

from mmkd.utils.hub import resolve_hub_repo

__all__ = ["resolve_hub_repo"]
