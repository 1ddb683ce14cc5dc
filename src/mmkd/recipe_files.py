"""The YAML recipes that ship inside the package (`mmkd/recipes/`), and `mmkd recipes`, which lists them.

A recipe is named by its path under `mmkd/recipes/` without `.yaml` (`mmkd_b16/pretrain`), so
`--config mmkd_b16/pretrain` works from any folder of any install. A clone's `configs/` is a link to
the same folder. A file given by its path always wins over a packaged name; the first comment line of
each recipe is its one-line description.
"""

from __future__ import annotations

import argparse
import difflib
from pathlib import Path

from mmkd.errors import UsageError

RECIPE_DIR = Path(__file__).parent / "recipes"
DESCRIPTION = "List the YAML recipes that ship with mmkd; give one to --config by its name (e.g. mmkd_b16/pretrain)."


def packaged_recipes() -> dict[str, Path]:
    """name (`mmkd_b16/pretrain`) -> file, sorted by name."""
    files = sorted(RECIPE_DIR.rglob("*.yaml"))
    return {p.relative_to(RECIPE_DIR).with_suffix("").as_posix(): p for p in files}


def describe(path: Path) -> str:
    """The recipe's first comment line: what it is for."""
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.startswith("#"):
            return line.lstrip("#").strip()
        if line.strip():
            break
    return ""


def resolve_recipe(value: str | Path, option: str = "--config") -> Path:
    """A recipe file by its path, or else by its packaged name (with or without `.yaml`)."""
    path = Path(value)
    if path.is_file():
        return path
    recipes = packaged_recipes()
    name = path.as_posix().removesuffix(".yaml").removesuffix(".yml")
    if name in recipes:
        return recipes[name]
    # `configs/mmkd_b16/pretrain.yaml` outside a clone: the packaged recipe of the same name
    hint = [n for n in recipes if name.endswith("/" + n)] or difflib.get_close_matches(name, list(recipes), n=1)
    raise UsageError(f"{option}: {str(value)!r} is neither a file nor a packaged recipe"
                     + (f"; did you mean {hint[0]}?" if hint else "")
                     + " (`mmkd recipes` lists the packaged ones)")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--paths", action="store_true", help="also print where each recipe file is")


def run(args: argparse.Namespace) -> int:
    recipes = packaged_recipes()
    width = max(map(len, recipes), default=0)
    for name, path in recipes.items():
        print(f"{name:<{width}}  {describe(path)}" + (f"\n{'':<{width}}  {path}" if args.paths else ""))
    return 0
