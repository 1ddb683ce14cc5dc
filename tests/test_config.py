import pytest
import yaml

from conftest import ROOT, run_cli
from mmkd.config import Config, build_config, parse_cli_overrides, validate
from mmkd.errors import ConfigError


def test_dotted_overrides_and_aliases_set_typed_fields():
    cfg = build_config(None, ["--data", "x.csv", "--optim.lr", "1e-4", "--train.accum_steps=2", "--batch-size", "8",
                              "--model.grad_checkpointing", "--distill.exclude_teachers", "a,b"])
    assert cfg.optim.lr == pytest.approx(1e-4)
    assert cfg.train.accum_steps == 2 and cfg.train.batch_size == 8
    assert cfg.model.grad_checkpointing is True
    assert cfg.distill.exclude_teachers == ["a", "b"]


def test_all_problems_reported_together():
    with pytest.raises(ConfigError) as e:
        build_config(None, ["--data", "x.csv", "--optim.lrr", "1", "--train.epochs", "zero"])
    msg = str(e.value)
    assert "optim.lrr" in msg and "did you mean optim.lr" in msg
    assert "train.epochs" in msg and "'zero'" in msg
    assert len(e.value.problems) == 2


def test_value_checks_name_key_value_and_fix():
    cfg = Config()
    cfg.data.path = "x.csv"
    cfg.optim.lr = -1
    cfg.train.precision = "fp8"
    problems = validate(cfg)
    assert any(p.startswith("optim.lr: -1") and "positive" in p for p in problems)
    assert any(p.startswith("train.precision: 'fp8'") and "bf16" in p for p in problems)


def test_yaml_unknown_key_is_reported(tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text(yaml.safe_dump({"data": {"path": "x.csv"}, "optim": {"learning_rate": 1}}))
    with pytest.raises(ConfigError) as e:
        build_config(str(recipe), [])
    assert "optim.learning_rate" in str(e.value)


def test_cli_config_with_two_wrong_keys_exits_2_without_traceback(tmp_path):
    r = run_cli("pretrain", "--data", "x.csv", "--out", str(tmp_path / "run"), "--optim.lrr", "1e-3",
                "--train.batchsize", "4")
    assert r.returncode == 2
    assert "optim.lrr" in r.stderr and "train.batchsize" in r.stderr
    assert "Traceback" not in r.stderr


def test_every_shipped_recipe_parses():
    recipes = sorted((ROOT / "configs").rglob("*.yaml"))
    assert recipes, "configs/ holds no recipes"
    for recipe in recipes:
        data = yaml.safe_load(recipe.read_text())
        if not isinstance(data, dict) or not set(data) <= {"data", "model", "optim", "train", "distill"}:
            continue  # not a run recipe (e.g. an extraction or evaluation recipe)
        build_config(str(recipe), ["--data", "x.csv", "--store", "s"], stage="distill")


def test_help_lists_commands():
    r = run_cli("--help")
    assert r.returncode == 0 and "pretrain" in r.stdout and "distill" in r.stdout


def test_parse_cli_overrides_bare_flag_is_true():
    problems = []
    out = parse_cli_overrides(["--train.compile", "--lr", "3"], problems)
    assert out == {"train.compile": "true", "optim.lr": "3"} and not problems


def test_parse_and_validation_problems_are_reported_together(tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text(yaml.safe_dump({"optim": {"lr": "fast"}}))
    with pytest.raises(ConfigError) as e:
        build_config(str(recipe), ["--data", "x.csv", "--train.epochs", "0", "--optim.beta2", "1.5"])
    keys = sorted(p.split(":")[0] for p in e.value.problems)
    assert keys == ["optim.beta2", "optim.lr", "train.epochs"]


def test_a_value_that_did_not_parse_is_not_validated_as_its_default():
    # batch_size fails to parse and keeps its default 32, which accum_steps 3 does not divide:
    # only the parse problem is the user's
    with pytest.raises(ConfigError) as e:
        build_config(None, ["--data", "x.csv", "--train.batch_size", "many", "--train.accum_steps", "3"])
    assert len(e.value.problems) == 1 and "'many'" in e.value.problems[0]


def test_a_missing_recipe_is_one_problem_among_the_others(tmp_path):
    with pytest.raises(ConfigError) as e:
        build_config(str(tmp_path / "none.yaml"), ["--data", "x.csv", "--train.epochs", "x"])
    assert len(e.value.problems) == 2 and "--config" in e.value.problems[0]


@pytest.mark.parametrize("value", ["\x98x", "{a: [", "a: b: c"])
def test_a_dict_option_that_is_not_yaml_is_refused_naming_the_key(value):
    """A dict-valued option given text YAML cannot read (a control character, an unclosed flow) is a problem
    naming the key, not a YAML traceback (found by tests/reliability/test_fuzz.py)."""
    from mmkd.config import build_config
    from mmkd.errors import UsageError

    with pytest.raises(UsageError, match="distill.modality_routes"):
        build_config(None, ["--data", "x.csv", "--out", "o", "--store", "s", "--distill.modality_routes", value],
                     stage="distill")
