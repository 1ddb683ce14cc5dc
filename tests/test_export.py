"""`mmkd export`: an open_clip-loadable folder whose embeddings equal mmkd's, and its model card.

Checkpoints are built with the real student factory and `save_checkpoint`; the HF text tower is a
tiny BERT written with transformers' own `save_pretrained` and a WordPiece vocab written here.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from conftest import run_cli

TOL = 1e-5
WORDS = ["a", "photo", "of", "the", "red", "green", "blue", "yellow", "square", "disc", "chest", "x", "ray", "showing",
         "pneumonia", "normal", "fundus", "tumour", "tissue", "slide", "stained", "an", "h", "&", "e", "-", ".", ","]


def build_tiny_bert(folder: Path) -> Path:
    """A 2-layer BERT (hidden 32) with a WordPiece tokenizer, saved as a HF model folder."""
    from transformers import BertConfig, BertModel, BertTokenizerFast

    folder.mkdir(parents=True, exist_ok=True)
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    for w in WORDS + list("abcdefghijklmnopqrstuvwxyz0123456789") + [f"##{c}" for c in "abcdefghijklmnopqrstuvwxyz"]:
        if w not in vocab:
            vocab.append(w)
    (folder / "vocab.txt").write_text("\n".join(vocab) + "\n")
    torch.manual_seed(0)
    config = BertConfig(vocab_size=len(vocab), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=64)
    BertModel(config).save_pretrained(folder)
    # from_pretrained reads vocab.txt in transformers 4 and 5 (5 ignores a `vocab_file=` argument)
    BertTokenizerFast.from_pretrained(str(folder)).save_pretrained(folder)
    return folder


def make_run(root: Path, name: str = "mmkd-tiny-vit", hf_text_path: Path | None = None, step: int = 20,
             train_state: dict | None = None, seed: int = 0) -> Path:
    """A run directory with one real checkpoint of a randomly initialised (perturbed) student."""
    from mmkd.config import Config, to_dict
    from mmkd.models.student import create_student
    from mmkd.training.checkpoint import save_checkpoint

    student = create_student(name, hf_text_path=str(hf_text_path or ""), seed=seed)
    with torch.no_grad():  # move off the init so a wrong or missing tensor shows up
        for p in student.model.parameters():
            p.add_(0.01 * torch.randn_like(p))
    cfg = to_dict(Config())
    cfg["model"]["name"] = name
    cfg["data"]["path"] = "data/pairs.csv"
    state = {"config": cfg, **(train_state or {})}
    run_dir = root / "run"
    save_checkpoint(run_dir, step, student.model, student.open_clip_config(), None, state,
                    tokenizer_dir=str(hf_text_path) if hf_text_path else None)
    return run_dir


def probe_images():
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    return [Image.fromarray(rng.integers(0, 255, (48, 40, 3), dtype=np.uint8)),
            Image.fromarray(np.full((32, 32, 3), (200, 30, 30), dtype=np.uint8))]


TEXTS = ["a photo of a red square", "chest x-ray showing pneumonia", "normal", "an h&e stained slide of tumour tissue"]


def assert_open_clip_parity(run_dir: Path, out: Path) -> dict:
    """Load `out` with open_clip's own functions; compare with mmkd's load of the checkpoint."""
    import open_clip

    from mmkd.api import load_model

    ours = load_model(str(run_dir))
    model, _, preprocess = open_clip.create_model_and_transforms(f"local-dir:{out}")
    tokenizer = open_clip.get_tokenizer(f"local-dir:{out}")
    model.eval()
    diffs = {}
    with torch.no_grad():
        pixels_ours = torch.stack([ours.preprocess(im) for im in probe_images()])
        pixels_theirs = torch.stack([preprocess(im) for im in probe_images()])
        diffs["preprocess"] = float((pixels_ours - pixels_theirs).abs().max())
        image_theirs = model.encode_image(pixels_theirs, normalize=True)
        diffs["image"] = float((ours.encode_image(pixels_ours) - image_theirs).abs().max())
        assert torch.equal(ours.tokenizer(TEXTS), tokenizer(TEXTS))
        text_theirs = model.encode_text(tokenizer(TEXTS), normalize=True)
        diffs["text"] = float((ours.encode_text(TEXTS) - text_theirs).abs().max())
    assert all(d <= TOL for d in diffs.values()), diffs
    # not a degenerate model: different inputs give different embeddings
    assert float((image_theirs[0] - image_theirs[1]).abs().max()) > 1e-3
    assert float((text_theirs[0] - text_theirs[1]).abs().max()) > 1e-3
    return diffs


def test_vit_student_export_loads_in_open_clip_with_equal_embeddings(tmp_path):
    from mmkd.export.exporter import export

    run_dir = make_run(tmp_path)
    out = tmp_path / "export"
    manifest = export(run_dir, out)

    assert {"open_clip_config.json", "open_clip_model.safetensors", "README.md", "mmkd_export.json"} <= \
        {p.name for p in out.iterdir()}
    ckpt = run_dir / "checkpoints" / "step_00000020"
    assert (out / "open_clip_model.safetensors").read_bytes() == (ckpt / "open_clip_model.safetensors").read_bytes()
    assert manifest["parity"]["passed"] and manifest["parity"]["image_max_abs_diff"] <= TOL
    assert_open_clip_parity(run_dir, out)


def test_hf_bert_student_export_loads_in_open_clip_with_equal_embeddings(tmp_path):
    from transformers import AutoConfig

    from mmkd.export.exporter import export

    bert = build_tiny_bert(tmp_path / "tiny-bert")
    run_dir = make_run(tmp_path, "mmkd-tiny-vit-hf", hf_text_path=bert)
    out = tmp_path / "export-hf"
    manifest = export(run_dir, out)
    assert manifest["parity"]["passed"], manifest["parity"]

    saved = json.loads((out / "open_clip_config.json").read_text())
    assert saved["model_cfg"]["text_cfg"]["hf_model_name"] == str(out.resolve())
    assert {"config.json", "vocab.txt", "tokenizer_config.json"} <= set(manifest["hf_files"])
    assert not (out / "model.safetensors").exists()  # the BERT weights live in open_clip_model.safetensors
    assert AutoConfig.from_pretrained(str(out)).model_type == "bert"
    # The original HF folder is not needed any more: the export carries config and tokenizer itself.
    shutil.rmtree(bert)
    assert_open_clip_parity(run_dir, out)
    import open_clip

    tokens = open_clip.get_tokenizer(f"local-dir:{out}")(["red square"])
    assert tokens[0, 0].item() == 2 and tokens.shape[1] == 32  # [CLS] of our vocab; context length kept


def test_moved_hf_export_loads_after_relink(tmp_path):
    import open_clip

    from mmkd.export.exporter import export
    from mmkd.export.folder import relink

    bert = build_tiny_bert(tmp_path / "tiny-bert")
    run_dir = make_run(tmp_path, "mmkd-tiny-vit-hf", hf_text_path=bert)
    export(run_dir, tmp_path / "first", verify=False)
    moved = tmp_path / "elsewhere" / "model"
    moved.parent.mkdir()
    shutil.move(str(tmp_path / "first"), str(moved))
    from mmkd.api import load_model

    assert load_model(str(moved)).embed_dim == 64  # mmkd itself finds the config.json bundled in the folder
    relink(moved)
    assert json.loads((moved / "open_clip_config.json").read_text())["model_cfg"]["text_cfg"]["hf_model_name"] == \
        str(moved.resolve())
    model, _, _ = open_clip.create_model_and_transforms(f"local-dir:{moved}")
    assert type(model).__name__ == "CustomTextCLIP"
    assert_open_clip_parity(run_dir, moved)


def test_export_accepts_a_checkpoint_folder_and_picks_the_latest_of_a_run(tmp_path):
    from mmkd.export.folder import resolve_checkpoint
    from mmkd.models.student import create_student
    from mmkd.training.checkpoint import save_checkpoint

    run_dir = make_run(tmp_path, step=5)
    student = create_student("mmkd-tiny-vit", seed=1)
    save_checkpoint(run_dir, 9, student.model, student.open_clip_config(), None, {"config": {}})
    assert resolve_checkpoint(run_dir).checkpoint.name == "step_00000009"
    step5 = run_dir / "checkpoints" / "step_00000005"
    source = resolve_checkpoint(step5)
    assert source.checkpoint == step5 and source.run_dir == run_dir
    assert "rng" not in source.train_state and source.train_state["step"] == 5


DISTILL_STATE = {
    "distill": {
        "teachers": [
            {"name": "biomedclip", "spec": "hf-hub:microsoft/BiomedCLIP-PubMedBERT_256-vit_base_patch16_224",
             "embed_dim": 512, "licence": "MIT"},
            {"name": "plip", "spec": "hf:vinid/plip", "embed_dim": 512, "licence": "research only"},
            {"name": "quiltnet", "spec": "hf-hub:wisdomik/QuiltNet-B-32", "embed_dim": 512, "licence": "MIT",
             "data_licence": "CC-BY-NC-ND-3.0"},
        ],
        "num_samples_with_teacher": 120,
    },
}


def _write_eval(run_dir: Path) -> None:
    record = {"model": "run", "dataset": "pneumoniamnist", "task": "zero_shot", "modality": "x-ray",
              "metrics": {"balanced_accuracy": 0.8125, "auroc": 0.9}, "ci": {"auroc": [0.85, 0.95]}}
    (run_dir / "eval" / "run").mkdir(parents=True)
    (run_dir / "eval" / "run" / "pneumoniamnist__zero_shot.json").write_text(json.dumps(record))
    (run_dir / "summary.json").write_text(json.dumps({"num_steps": 20, "num_samples_seen": 640, "final_loss": 1.5}))


def test_model_card_names_teachers_licences_settings_and_results(tmp_path):
    from mmkd.export.exporter import export

    run_dir = make_run(tmp_path, train_state=DISTILL_STATE)
    state = json.loads((run_dir / "checkpoints" / "step_00000020" / "train_state.json").read_text())
    assert state["config"]["distill"]["lambda_fd"] == 50.0
    _write_eval(run_dir)
    out = tmp_path / "export"
    export(run_dir, out, verify=False, data_licence="CC-BY-4.0")
    card = (out / "README.md").read_text()

    for teacher in ("biomedclip", "plip", "quiltnet"):
        assert f"| {teacher} |" in card
    assert "| research only |" in card.replace("| research only | —", "| research only |")
    # The strictest licence (no-derivatives + non-commercial, from QuiltNet's data) is stated before the details.
    headline = "**Most restrictive licence: CC-BY-NC-ND-3.0**"
    assert headline in card
    assert card.index(headline) < card.index("## Architecture") < card.index("## Teachers and distillation")
    assert "teacher quiltnet training data" in card.split("## Use")[0]
    assert "| training data | CC-BY-4.0 |" in card
    # distillation settings from the run config and the checkpoint
    assert "| lambda_fd | 50 |" in card and "| policy | random-available |" in card
    assert "| num_samples_with_teacher | 120 |" in card
    # architecture and evaluation
    assert "open_clip `CLIP`" in card and "| embedding dim | 64 |" in card
    assert "| pneumoniamnist | zero_shot | x-ray | balanced_accuracy 0.8125; auroc 0.9 [0.85, 0.95] |" in card
    assert "| num samples seen | 640 |" in card
    assert card.startswith("---\nlibrary_name: open_clip\nlicense: cc-by-nc-nd-3.0\n")  # HF front matter
    manifest = json.loads((out / "mmkd_export.json").read_text())
    assert manifest["card"]["most_restrictive"]["sources"] == ["teacher quiltnet training data"]


def test_stage1_card_says_not_distilled_and_has_no_licence_claims(tmp_path):
    from mmkd.export.model_card import gather_facts, render_card
    from mmkd.export.folder import resolve_checkpoint

    run_dir = make_run(tmp_path)
    card = render_card(gather_facts(resolve_checkpoint(run_dir), "stage1"))
    assert "Not distilled" in card and "No teacher or data licence was recorded" in card
    assert "No evaluation results were found" in card
    assert "| image-text pairs | data/pairs.csv (auto) |" in card


@pytest.mark.parametrize("licence, rank", [
    ("MIT", 0), ("Apache-2.0", 0), ("CC0-1.0", 0), ("CC-BY-4.0", 1), ("CC BY-SA 4.0", 2), ("GPL-3.0", 2),
    ("CC-BY-NC-4.0", 3), ("research only", 3), ("CC BY-NC-SA 4.0", 4), ("cc-by-nc-nd-3.0", 4),
    ("", 5), (None, 5), ("unknown", 5), ("limited use", 5), ("proprietary", 5),
    ("MIT (research use; see model card)", 3), ("unknown (see the authors' release)", 5)])
def test_licence_rank(licence, rank):
    from mmkd.export.licences import licence_rank

    assert licence_rank(licence) == rank


def test_card_names_no_unknown_licence_and_says_so(tmp_path):
    from mmkd.export.folder import resolve_checkpoint
    from mmkd.export.model_card import gather_facts, render_card

    unknown_only = {"distill": {"teachers": [{"name": "NoSuchTeacher", "embed_dim": 8},
                                             {"name": "Other", "embed_dim": 8, "licence": "unknown"}]}}
    card = render_card(gather_facts(resolve_checkpoint(make_run(tmp_path / "a", train_state=unknown_only)), "a"))
    front = card.split("---")[1]
    assert "license" not in front and '"None"' not in card and "| None |" not in card  # no made-up licence
    assert "**Licence unknown for teacher NoSuchTeacher, teacher Other.**" in card
    assert "Most restrictive licence" not in card
    mixed = {"distill": {"teachers": [{"name": "NoSuchTeacher", "embed_dim": 8},
                                      {"name": "t2", "embed_dim": 8, "licence": "MIT"}]}}
    card = render_card(gather_facts(resolve_checkpoint(make_run(tmp_path / "b", train_state=mixed)), "b"))
    assert card.startswith("---\nlibrary_name: open_clip\nlicense: mit\n")
    assert "**Most restrictive licence: MIT**" in card and "**Licence unknown for teacher NoSuchTeacher.**" in card
    assert "| teacher NoSuchTeacher | not stated |" in card


def test_teacher_without_a_recorded_licence_gets_the_registry_one():
    from mmkd.export.model_card import teachers_of

    teachers = teachers_of({"distill": {"teachers": [{"name": "biomedclip", "embed_dim": 512}, "NoSuchTeacher"]}})
    assert teachers[0]["licence"].startswith("MIT")  # BiomedCLIP in mmkd.teachers.registry
    assert teachers[1]["name"] == "NoSuchTeacher" and teachers[1]["licence"] is None


def test_most_restrictive_picks_all_sources_at_the_top_rank():
    from mmkd.export.licences import most_restrictive

    assert most_restrictive({"a": "MIT", "b": "CC-BY-NC-4.0", "c": "research only"}) == (3, ["b", "c"])
    assert most_restrictive({}) == (-1, [])


def test_cli_export_and_its_usage_errors(tmp_path):
    run_dir = make_run(tmp_path)
    out = tmp_path / "cli-export"
    done = run_cli("export", "--checkpoint", str(run_dir), "--out", str(out))
    assert done.returncode == 0, done.stderr
    assert "open_clip parity" in done.stdout and "ok" in done.stdout
    assert json.loads((out / "mmkd_export.json").read_text())["parity"]["passed"]

    again = run_cli("export", "--checkpoint", str(run_dir), "--out", str(out))
    assert again.returncode == 2 and "--overwrite" in again.stderr and "Traceback" not in again.stderr

    missing = run_cli("export", "--checkpoint", str(tmp_path / "nope"), "--out", str(tmp_path / "x"))
    assert missing.returncode == 2 and "--checkpoint" in missing.stderr and "does not exist" in missing.stderr


def test_overwrite_refuses_a_folder_that_is_not_an_export(tmp_path):
    from mmkd.errors import UsageError
    from mmkd.export.exporter import export

    run_dir = make_run(tmp_path)
    precious = tmp_path / "precious"
    precious.mkdir()
    (precious / "notes.txt").write_text("keep me")
    with pytest.raises(UsageError, match="not an earlier `mmkd export` folder"):
        export(run_dir, precious, overwrite=True, verify=False)
    assert (precious / "notes.txt").read_text() == "keep me"
    out = tmp_path / "ok"
    export(run_dir, out, verify=False)
    export(run_dir, out, overwrite=True, verify=False)  # an earlier export may be replaced
    assert not list(tmp_path.glob(".tmp-*"))


def test_hf_export_can_name_a_hub_id_for_publishing(tmp_path):
    from mmkd.export.exporter import export

    bert = build_tiny_bert(tmp_path / "tiny-bert")
    hub_id = "microsoft/BiomedNLP-BiomedBERT-base-uncased-abstract"
    manifest = export(make_run(tmp_path, "mmkd-tiny-vit-hf", hf_text_path=bert), tmp_path / "pub",
                      hf_model_name=hub_id)
    text_cfg = json.loads((tmp_path / "pub" / "open_clip_config.json").read_text())["model_cfg"]["text_cfg"]
    assert text_cfg["hf_model_name"] == hub_id == text_cfg["hf_tokenizer_name"]
    assert manifest["parity"]["passed"]  # checked offline with the config.json shipped in the folder
    assert (tmp_path / "pub" / "config.json").is_file()


def _save_during_verify(monkeypatch, run_dir: Path, picked: list) -> None:
    """The first parity check is preceded by the run saving a newer checkpoint with keep=1, which removes the
    one being exported, as a run still training does between an export's start and its check."""
    from mmkd.export import exporter
    from mmkd.models.student import create_student
    from mmkd.training.checkpoint import save_checkpoint

    check = exporter._verify

    def verify(source, hf_folder, out):
        picked.append(source.checkpoint.name)
        if len(picked) == 1:
            student = create_student("mmkd-tiny-vit", seed=7)
            save_checkpoint(run_dir, 9, student.model, student.open_clip_config(), None, {"config": {}}, keep=1)
            assert not source.checkpoint.exists()
        return check(source, hf_folder, out)

    monkeypatch.setattr(exporter, "_verify", verify)


def test_export_of_a_run_that_removes_its_checkpoint_meanwhile_exports_the_newest(tmp_path, monkeypatch):
    from mmkd.export.exporter import export
    from mmkd.utils.io import sha256_file

    run_dir = make_run(tmp_path, step=5)
    picked: list[str] = []
    _save_during_verify(monkeypatch, run_dir, picked)
    manifest = export(run_dir, tmp_path / "out")
    newest = run_dir / "checkpoints" / "step_00000009"
    assert picked == ["step_00000005", "step_00000009"]
    assert manifest["source_checkpoint"] == str(newest.resolve()) and manifest["parity"]["passed"]
    assert manifest["weights_sha256"] == sha256_file(newest / "open_clip_model.safetensors")
    assert sha256_file(tmp_path / "out" / "open_clip_model.safetensors") == manifest["weights_sha256"]
    assert_open_clip_parity(run_dir, tmp_path / "out")


def test_export_of_a_named_checkpoint_removed_meanwhile_leaves_no_folder(tmp_path, monkeypatch):
    from mmkd.errors import UsageError
    from mmkd.export.exporter import export

    run_dir = make_run(tmp_path, step=5)
    _save_during_verify(monkeypatch, run_dir, [])
    with pytest.raises(UsageError, match="removed while it was read") as e:
        export(run_dir / "checkpoints" / "step_00000005", tmp_path / "out")
    assert repr(str(run_dir)) in str(e.value)
    assert not (tmp_path / "out").exists()
    assert [p.name for p in tmp_path.iterdir()] == ["run"]  # no temporary folder left either
