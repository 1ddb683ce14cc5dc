"""Losses and policies against naive references on seeded tensors."""

import math

import numpy as np
import torch
import torch.nn.functional as F

from mmkd.losses.contrastive import clip_loss
from mmkd.losses.distill import decision_kl, feature_distillation, interactive_contrastive, relational_kl
from mmkd.training.policies import mean_available, random_available, score_weighted, teacher_weights, uniform_draws


def _feats(b, d, seed):
    g = torch.Generator().manual_seed(seed)
    return F.normalize(torch.randn(b, d, generator=g), dim=-1)


def test_clip_loss_matches_naive_loop():
    img, txt, scale = _feats(6, 8, 0), _feats(6, 8, 1), torch.tensor(10.0)
    got = clip_loss(img, txt, scale)["clip"]
    logits = scale * img @ txt.T
    i2t = -sum(math.log(torch.softmax(logits[i], 0)[i]) for i in range(6)) / 6
    t2i = -sum(math.log(torch.softmax(logits[:, i], 0)[i]) for i in range(6)) / 6
    assert abs(got.item() - (i2t + t2i) / 2) < 1e-5


def test_feature_distillation_weighted_mse():
    s, t = _feats(5, 4, 2), _feats(5, 4, 3)
    w = torch.tensor([1.0, 0.0, 2.0, 0.0, 1.0])
    ref = sum(w[i] * ((s[i] - t[i]) ** 2).mean() for i in range(5)) / w.sum()
    assert torch.allclose(feature_distillation(s, t, w), ref)
    assert feature_distillation(s, t, torch.zeros(5)).item() == 0.0


def test_icl_matches_naive_and_ignores_zero_weight_rows():
    si, st, ti, tt = (_feats(5, 4, k) for k in range(4))
    w = torch.tensor([1.0, 1.0, 0.0, 1.0, 1.0])
    keep = [0, 1, 3, 4]
    tau = 0.1
    ref = 0.0
    for a, i in enumerate(keep):
        l1 = -torch.log_softmax(torch.stack([si[i] @ tt[j] for j in keep]) / tau, 0)[a]
        l2 = -torch.log_softmax(torch.stack([st[i] @ ti[j] for j in keep]) / tau, 0)[a]
        ref += (l1 + l2) / 2
    ref /= len(keep)
    assert torch.allclose(interactive_contrastive(si, st, ti, tt, tau, w), ref, atol=1e-5)


def test_relational_kl_is_zero_for_identical_geometry_and_positive_otherwise():
    img, txt = _feats(6, 8, 4), _feats(6, 8, 5)
    w = torch.ones(6)
    q = torch.linalg.qr(torch.randn(8, 8, generator=torch.Generator().manual_seed(0)))[0]
    assert relational_kl(img, txt, img @ q, txt @ q, 0.1, w).item() < 1e-5  # rotated teacher: same relations
    kl = relational_kl(img, txt, _feats(6, 8, 6), _feats(6, 8, 7), 0.1, w)
    p = torch.softmax((_feats(6, 8, 6) @ _feats(6, 8, 7).T) / 0.1, 1)
    logq = torch.log_softmax(img @ txt.T / 0.1, 1)
    ref_i2t = (p * (p.log() - logq)).sum(1).mean()
    assert kl.item() > 0 and kl.item() > 0.2 * ref_i2t.item()


def test_decision_kl_matches_reference():
    img, classes = _feats(4, 8, 8), _feats(3, 8, 9)
    p = torch.softmax(torch.randn(4, 3, generator=torch.Generator().manual_seed(1)), 1)
    got = decision_kl(img, classes, p, 0.05, torch.ones(4))
    ref = F.kl_div(torch.log_softmax(img @ classes.T / 0.05, 1), p, reduction="batchmean")
    assert torch.allclose(got, ref, atol=1e-5)


def test_random_available_picks_only_available_teachers_uniformly():
    avail = np.array([[1, 0, 1, 1]] * 3000 + [[0, 0, 0, 0]], dtype=bool)
    w = random_available(avail, uniform_draws(0, 0, np.arange(len(avail))))
    assert (w[:-1].sum(1) == 1).all() and w[-1].sum() == 0
    assert (w[:, 1] == 0).all()
    share = w[:-1].mean(0)
    assert np.allclose(share[[0, 2, 3]], 1 / 3, atol=0.03)
    w2 = random_available(avail, uniform_draws(0, 1, np.arange(len(avail))))
    assert (w != w2).any(), "draws must change with the epoch"


def test_mean_and_score_weighted_and_modality_policies():
    avail = np.array([[1, 1, 0], [0, 0, 0], [1, 1, 1]], dtype=bool)
    assert np.allclose(mean_available(avail), [[0.5, 0.5, 0], [0, 0, 0], [1 / 3] * 3])
    scores = np.array([[1.0, 0.0, 9.0], [0, 0, 0], [0.0, 0.0, 0.0]])
    w = score_weighted(avail, scores, temperature=1.0)
    assert np.allclose(w[0], [math.e / (1 + math.e), 1 / (1 + math.e), 0]) and w[1].sum() == 0
    w = teacher_weights("modality", avail, modalities_B=["ct", "ct", "xray"], routes={"ct": ["b"]},
                        teachers=["a", "b", "c"])
    assert np.allclose(w, [[0, 1, 0], [0, 0, 0], [1 / 3] * 3])


def test_alignment_encode_many_equals_encode_per_teacher():
    from mmkd.models.alignment import AlignmentAE

    torch.manual_seed(0)
    ae = AlignmentAE({"a": 12, "b": 8, "c": 12, "d": 5}, 6)
    xs = {t: torch.randn(7, d) for t, d in ae.teacher_dims.items() if t != "c"}  # a subset, mixed dims
    for modality in ("image", "text"):
        many = ae.encode_many(xs, modality)
        assert list(many) == list(xs)
        for t, x in xs.items():
            torch.testing.assert_close(many[t], ae.encode(t, x, modality), rtol=1e-5, atol=1e-6)
    with torch.no_grad():
        ae.proj["a"].weight.add_(1.0)  # a changed weight is seen (the stacked copy is rebuilt)
    torch.testing.assert_close(ae.encode_many(xs, "image")["a"], ae.encode("a", xs["a"], "image"))


def test_pairs_of_image_and_text_rows_project_as_each_teacher_alone():
    """encode_pairs_many / project_pairs_many (one projection call for both kinds of rows) against `encode` and
    the plain nn.Linear of each teacher, for mmkd's autoencoder and the authors'."""
    from mmkd.models.alignment import AlignmentAE
    from mmkd.models.alignment_authors import AuthorsAlignmentAE

    torch.manual_seed(0)
    dims = {"a": 12, "b": 8, "c": 12}
    images = {t: torch.randn(5, d) for t, d in dims.items()}
    texts = {t: torch.randn(3, d) for t, d in dims.items()}  # another row count
    for ae in (AlignmentAE(dims, 6), AuthorsAlignmentAE(dims, 6)):
        got_img, got_txt = ae.encode_pairs_many(images, texts)
        lin_img, lin_txt = ae.project_pairs_many(images, texts)
        for t in dims:
            torch.testing.assert_close(got_img[t], ae.encode(t, images[t], "image"), rtol=1e-5, atol=1e-6)
            torch.testing.assert_close(got_txt[t], ae.encode(t, texts[t], "text"), rtol=1e-5, atol=1e-6)
            for x, lin in ((images[t], lin_img[t]), (texts[t], lin_txt[t])):
                torch.testing.assert_close(lin, torch.nn.functional.linear(x, ae.proj[t].weight, ae.proj[t].bias),
                                           rtol=1e-5, atol=1e-6)


def test_pair_fd_and_icl_match_a_naive_loop_within_each_group():
    """Per-pair FD and ICL: a pair's negatives are its own group's targets only; a pair alone in its group gives 0."""
    from mmkd.losses.distill import feature_distillation_pairs, interactive_contrastive_pairs

    si, st = _feats(7, 4, 20), _feats(7, 4, 21)
    ti, tt = 1.3 * _feats(7, 4, 22), 0.8 * _feats(7, 4, 23)
    group = torch.tensor([2, 0, 2, 5, 0, 2, 0])  # group 5 has one pair
    tau = 0.1
    fd = feature_distillation_pairs(si, ti)
    icl = interactive_contrastive_pairs(si, st, ti, tt, tau, group)
    for p in range(7):
        assert abs(fd[p].item() - sum((si[p, e] - ti[p, e]).item() ** 2 for e in range(4)) / 4) < 1e-6
        same = [q for q in range(7) if group[q] == group[p]]
        a = same.index(p)
        l1 = -math.log(torch.softmax(torch.stack([si[p] @ tt[q] / tau for q in same]), 0)[a])
        l2 = -math.log(torch.softmax(torch.stack([st[p] @ ti[q] / tau for q in same]), 0)[a])
        assert abs(icl[p].item() - (l1 + l2) / 2) < 1e-5, p
    assert icl[3].item() == 0.0


def test_joint_icl_is_one_matrix_over_the_kept_rows():
    """The authors' ICL: each kept row against every kept row's target, whoever its teacher."""
    from mmkd.losses.distill import interactive_contrastive_joint

    si, st = _feats(6, 4, 10), _feats(6, 4, 11)
    ti, tt = 1.7 * _feats(6, 4, 12), 0.6 * _feats(6, 4, 13)  # unnormalised targets are used as given
    keep = torch.tensor([True, True, False, True, True, True])
    rows = [0, 1, 3, 4, 5]
    scale = math.log(1 / 0.07)
    got = interactive_contrastive_joint(si, st, ti, tt, 1 / scale, keep)
    assert got[2].item() == 0.0
    for a, i in enumerate(rows):
        l1 = -math.log(torch.softmax(torch.stack([scale * si[i] @ tt[j] for j in rows]), 0)[a])
        l2 = -math.log(torch.softmax(torch.stack([scale * st[i] @ ti[j] for j in rows]), 0)[a])
        assert abs(got[i].item() - (l1 + l2) / 2) < 1e-5
    assert interactive_contrastive_joint(si, st, ti, tt, 0.5, torch.tensor([True] + [False] * 5)).abs().sum() == 0
