"""The recipes ship inside the package: one copy (configs/ is a link to it), named from any folder."""

import os
import subprocess
import sys

import pytest
import yaml

from conftest import ROOT
from mmkd.config import Config, build_config, to_dict
from mmkd.data.select import parse_clauses
from mmkd.errors import ConfigError, UsageError

RECIPES = ROOT / "src" / "mmkd" / "recipes"


def _mmkd(*args: str, cwd) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "mmkd", *args], capture_output=True, text=True, cwd=cwd,
                          env={**os.environ, "OMP_NUM_THREADS": "1"}, timeout=300)


def test_configs_is_a_relative_link_to_the_packaged_recipes_in_git():
    mode = subprocess.run(["git", "ls-files", "-s", "configs"], cwd=ROOT, capture_output=True, text=True).stdout
    assert mode.split()[0] == "120000", f"git stores configs/ as {mode!r}, not as a symbolic link"
    assert os.readlink(ROOT / "configs") == "src/mmkd/recipes"
    assert (ROOT / "configs" / "mmkd_b16" / "pretrain.yaml").samefile(RECIPES / "mmkd_b16" / "pretrain.yaml")
    tracked = subprocess.run(["git", "ls-files", "src/mmkd/recipes"], cwd=ROOT, capture_output=True,
                             text=True).stdout.split()
    assert "src/mmkd/recipes/mmkd_b16/pretrain.yaml" in tracked and "src/mmkd/recipes/tiny/pretrain.yaml" in tracked


@pytest.mark.parametrize("name", ["mmkd_b16/pretrain", "mmkd_b16/pretrain.yaml"])
def test_packaged_name_works_from_another_folder(tmp_path, monkeypatch, name):
    monkeypatch.chdir(tmp_path)
    cfg = to_dict(build_config(name, ["--model.hf_text_path", "bert"]))
    recipe = yaml.safe_load((RECIPES / "mmkd_b16" / "pretrain.yaml").read_text())
    defaults = to_dict(Config())
    for section, values in recipe.items():
        for key, value in values.items():
            if key != "hf_text_path":
                assert cfg[section][key] == value, f"{section}.{key}"
    assert cfg["model"]["name"] == "mmkd-b16" != defaults["model"]["name"]  # the recipe, not the defaults


def test_a_file_path_wins_over_a_packaged_name(tmp_path, monkeypatch):
    (tmp_path / "tiny").mkdir()
    (tmp_path / "tiny" / "pretrain.yaml").write_text("optim:\n  lr: 0.125\n")
    monkeypatch.chdir(tmp_path)
    assert build_config("tiny/pretrain.yaml", ["--data", "x.csv"]).optim.lr == 0.125
    assert build_config("tiny/pretrain", ["--data", "x.csv"]).optim.lr == 1e-3  # the packaged tiny recipe


def test_unknown_recipe_name_suggests_the_packaged_one(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError) as e:
        build_config("mmkd_b16/pretrian", ["--data", "x.csv"])
    assert "'mmkd_b16/pretrian'" in str(e.value) and "did you mean mmkd_b16/pretrain?" in str(e.value)
    with pytest.raises(ConfigError) as e:  # a clone's path, given outside the clone
        build_config("configs/mmkd_b16/distill.yaml", ["--data", "x.csv"])
    assert "did you mean mmkd_b16/distill?" in str(e.value)


def test_cli_unknown_recipe_exits_2_and_recipes_lists_every_file(tmp_path):
    r = _mmkd("pretrain", "--config", "tiny/pretrain-x", "--data", "x.csv", cwd=tmp_path)
    assert r.returncode == 2 and "did you mean tiny/pretrain?" in r.stderr and "Traceback" not in r.stderr
    r = _mmkd("recipes", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    listed = dict(line.split(None, 1) for line in r.stdout.splitlines())
    files = sorted(RECIPES.rglob("*.yaml"))
    assert sorted(listed) == sorted(str(p.relative_to(RECIPES))[:-5] for p in files)
    for path in files:
        first = path.read_text().splitlines()[0]
        assert first.startswith("# "), f"{path.name}: the first line is not its one-line description"
        assert listed[str(path.relative_to(RECIPES))[:-5]] == first[2:].strip()


def test_data_select_takes_a_packaged_selection_by_name(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    expected = yaml.safe_load((RECIPES / "mmkd_b16" / "select-26-modalities.yaml").read_text())
    expected = expected.get("select", expected)
    clauses = parse_clauses(["mmkd_b16/select-26-modalities"], what="--select")
    assert clauses == {k: [str(v) for v in vals] for k, vals in expected.items()}
    with pytest.raises(UsageError, match="FIELD=V1,V2"):
        parse_clauses(["modality"], what="--select")


def test_recipes_paths_name_files_to_copy(capsys):
    import argparse

    from mmkd.recipe_files import run

    assert run(argparse.Namespace(paths=True)) == 0
    lines = capsys.readouterr().out.splitlines()
    paths = [line.strip() for line in lines[1::2]]
    assert len(paths) == len(list(RECIPES.rglob("*.yaml")))
    assert all(os.path.isfile(p) and p.endswith(".yaml") and "/mmkd/recipes/" in p for p in paths)
