"""mmkd as a lab installs it: the wheel built from this tree, in a fresh virtual environment outside the
repository, run from another folder — the recipes come with it, and a tiny training runs.

The environment gets the wheel alone (`--no-deps`); its dependencies (torch and the rest, no network
here) come from the test's own environment through a path entry that holds no mmkd.
"""

import json
import os
import shutil
import subprocess
import sys
import sysconfig
import venv
import zipfile
from pathlib import Path

import pytest

from conftest import ROOT

pytestmark = pytest.mark.slow


def _tree_copy(dest: Path) -> Path:
    """The files git would commit (tracked and new, not ignored), so the build leaves the worktree alone."""
    listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=ROOT,
                            capture_output=True, check=True).stdout.decode().split("\0")
    for name in filter(None, listed):
        src, out = ROOT / name, dest / name
        if not src.exists() and not src.is_symlink():
            continue  # deleted, not yet committed
        out.parent.mkdir(parents=True, exist_ok=True)
        if src.is_symlink():
            out.symlink_to(os.readlink(src))
        else:
            shutil.copy2(src, out)
    return dest


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("wheel")
    tree = _tree_copy(tmp / "tree")
    dist = tmp / "dist"
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index",
                    "--quiet", "-w", str(dist), str(tree)], check=True, timeout=600)
    wheel = next(dist.glob("mmkd-*.whl"))
    env_dir = tmp / "env"
    venv.EnvBuilder(with_pip=False).create(env_dir)
    python = env_dir / "bin" / "python"
    subprocess.run([sys.executable, "-m", "pip", "--python", str(python), "install", "--no-deps", "--no-index",
                    "--quiet", str(wheel)], check=True, timeout=600)
    site = Path(subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                               capture_output=True, text=True, check=True).stdout.strip())
    # the dependencies, after the environment's own site-packages; a path line runs none of the .pth files
    # there, so the editable mmkd of the test's environment stays out of sight
    (site / "zz_dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    elsewhere = tmp / "elsewhere"
    elsewhere.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env["OMP_NUM_THREADS"] = "1"
    return {"wheel": wheel, "bin": env_dir / "bin", "site": site, "cwd": elsewhere, "env": env}


def _run(installed, *args, timeout=600):
    return subprocess.run([str(installed["bin"] / "mmkd"), *args], cwd=installed["cwd"], env=installed["env"],
                          capture_output=True, text=True, timeout=timeout)


def test_wheel_carries_the_recipes_and_model_configs(installed):
    names = zipfile.ZipFile(installed["wheel"]).namelist()
    packaged = sorted(p.relative_to(ROOT / "src").as_posix() for p in (ROOT / "src/mmkd/recipes").rglob("*.yaml"))
    assert packaged and set(packaged) <= set(names)
    assert "mmkd/models/configs/mmkd-b16.json" in names
    assert not any(n.startswith(("configs/", "tests/", "bench/")) for n in names)


def test_installed_mmkd_runs_from_another_folder(installed):
    where = subprocess.run([str(installed["bin"] / "python"), "-c", "import mmkd; print(mmkd.__file__)"],
                           cwd=installed["cwd"], env=installed["env"], capture_output=True, text=True, check=True)
    assert Path(where.stdout.strip()).is_relative_to(installed["site"]), where.stdout

    r = _run(installed, "recipes")
    assert r.returncode == 0, r.stderr
    assert {line.split()[0] for line in r.stdout.splitlines()} >= {"mmkd_b16/pretrain", "tiny/pretrain"}
    r = _run(installed, "pretrain", "--config", "mmkd_b16/pretrain", "--help")
    assert r.returncode == 0 and "--config" in r.stdout, r.stderr
    r = _run(installed, "pretrain", "--config", "mmkd_b16/pretrian", "--data", "x.csv")
    assert r.returncode == 2 and "did you mean mmkd_b16/pretrain?" in r.stderr and "Traceback" not in r.stderr

    r = _run(installed, "synth", "--out", "data", "--quick")
    assert r.returncode == 0, r.stderr
    r = _run(installed, "pretrain", "--config", "tiny/pretrain", "--data", "data/train/pairs.csv", "--out", "run",
             "--train.max_steps", "1", "--batch-size", "8")
    assert r.returncode == 0, r.stderr
    summary = json.loads((installed["cwd"] / "run" / "summary.json").read_text())
    config = (installed["cwd"] / "run" / "config.yaml").read_text()
    assert summary["num_steps"] == 1, summary
    assert "mmkd-tiny-vit" in config and "0.001" in config  # the packaged tiny recipe's model and lr
