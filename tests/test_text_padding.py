"""`trim_padding`: text batches cut to their longest caption give the same text features."""

from __future__ import annotations

import torch
from test_export import build_tiny_bert

from mmkd.models.student import create_student
from mmkd.models.text import pad_id_of, trim_padding

CAPTIONS = ["a chest x ray", "a photo of the red square showing normal tissue , stained h & e",
            "fundus", "an x ray of the chest showing pneumonia . the blue disc is normal tissue ."]


def test_hf_text_tower_features_equal_after_trimming_to_a_multiple(tmp_path):
    student = create_student("mmkd-tiny-vit-hf", hf_text_path=str(build_tiny_bert(tmp_path / "bert")), seed=0)
    student.model.eval()
    tokens = student.tokenizer(CAPTIONS)
    pad = pad_id_of(student.tokenizer)
    longest = int((tokens != pad).any(dim=0).nonzero().max()) + 1
    assert longest < tokens.shape[1], "the captions must be shorter than the context for this test"
    exact = trim_padding(tokens, student.model, pad, multiple=1)
    rounded = trim_padding(tokens, student.model, pad, multiple=8)
    assert exact.shape[1] == longest
    assert rounded.shape[1] == min(-(-longest // 8) * 8, tokens.shape[1]) and rounded.shape[1] % 8 == 0
    with torch.no_grad():
        full = student.model.encode_text(tokens, normalize=True)
        for cut in (exact, rounded):
            assert torch.equal(cut, tokens[:, :cut.shape[1]])
            torch.testing.assert_close(student.model.encode_text(cut, normalize=True), full, atol=1e-5, rtol=1e-5)


def test_fixed_positional_text_tower_keeps_the_full_context():
    student = create_student("mmkd-tiny-vit", seed=0)
    tokens = student.tokenizer(CAPTIONS)
    assert trim_padding(tokens, student.model, pad_id_of(student.tokenizer)).shape == tokens.shape


def test_batch_tokenizer_gives_the_full_context_ids_cut_to_the_batch(tmp_path):
    from mmkd.models.text import BatchTokenizer

    student = create_student("mmkd-tiny-vit-hf", hf_text_path=str(build_tiny_bert(tmp_path / "bert")), seed=0)
    batcher = BatchTokenizer(student.tokenizer, student.model, pad_to_longest=True, multiple=8)
    assert batcher.direct, "open_clip's HF tokenizer is padded to the longest caption directly"
    for captions in (CAPTIONS, CAPTIONS[:1], ["fundus"], [" ".join(CAPTIONS * 20)]):  # the last one is truncated
        expected = trim_padding(student.tokenizer(captions), student.model, pad_id_of(student.tokenizer), multiple=8)
        assert torch.equal(batcher(captions), expected)
    full = BatchTokenizer(student.tokenizer, student.model, pad_to_longest=False)
    assert torch.equal(full(CAPTIONS), student.tokenizer(CAPTIONS))
    plain = create_student("mmkd-tiny-vit", seed=0)  # fixed positional table: never cut
    assert torch.equal(BatchTokenizer(plain.tokenizer, plain.model)(CAPTIONS), plain.tokenizer(CAPTIONS))


def test_loader_batches_carry_the_tokens(tmp_path):
    from helpers import make_pairs

    from mmkd.data.pairs import PairDataset, collate_pairs, index_source
    from mmkd.models.text import BatchTokenizer

    student = create_student("mmkd-tiny-vit-hf", hf_text_path=str(build_tiny_bert(tmp_path / "bert")), seed=0)
    table = make_pairs(tmp_path / "pairs", n=8)
    records, _ = index_source(str(table), "auto", "image", "caption", "sample_id", "modality")
    dataset = PairDataset(records, student.train_transform)
    batcher = BatchTokenizer(student.tokenizer, student.model)
    batch = collate_pairs([dataset[i] for i in range(4)], tokenize=batcher)
    assert torch.equal(batch.tokens, batcher(batch.captions))
    assert batch.tokens.shape[0] == len(batch) == 4


def test_pretraining_with_loader_workers_tokenizing(tmp_path):
    """Worker processes tokenize (HF tower: trimmed batches); the run learns and sees every sample."""
    import json

    from conftest import run_cli
    from helpers import make_pairs

    bert = build_tiny_bert(tmp_path / "bert")
    data = make_pairs(tmp_path / "data", n=48)
    r = run_cli("pretrain", "--data", str(data), "--out", str(tmp_path / "run"), "--model.name", "mmkd-tiny-vit-hf",
                "--model.hf_text_path", str(bert), "--data.num_workers", "2", "--batch-size", "8", "--epochs", "4",
                "--lr", "1e-3", "--optim.warmup_steps", "2", "--train.log_every", "1", "--train.progress", "false")
    assert r.returncode == 0, r.stderr[-3000:]
    lines = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    losses = [x["loss/loss"] for x in lines if "loss/loss" in x]
    assert len(losses) == 24 and sum(losses[-4:]) < sum(losses[:4])
    assert json.loads((tmp_path / "run" / "summary.json").read_text())["num_samples_seen"] == 4 * 48
