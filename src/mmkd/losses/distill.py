"""Distillation losses. Pure functions: tensors in, named terms out; weights are applied by the caller.

Legend: B rows, E student embedding dim, D a teacher's dim (targets are in the same space as the
student features they are compared with), T teachers.

- `feature_distillation` (FD): mean squared error between student features and targets.
- `interactive_contrastive` (ICL): student image vs teacher text and student text vs teacher
  image, InfoNCE with the matching pair as the positive.
- `relational_kl`: KL from the teacher's in-batch image->text (and text->image) similarity
  distribution to the student's; each side stays in its own space, so no projection is needed.
- `decision_kl`: KL from a teacher's distribution over a set of class prompts to the student's.
All take per-row weights `w_B` (0 drops a row) and return a scalar averaged over weighted rows.
`feature_distillation_pairs` / `interactive_contrastive_pairs` give per-pair values over the
(row, teacher) pairs a policy weighs, P of them, each teacher's pairs a group of their own (stage 2
in the projection space: P x E targets instead of T x B x E, one P x P matrix instead of T of B x B).
`interactive_contrastive_joint` is the ICL of the MMKD-CLIP authors' code: one similarity matrix
over all rows, each row's targets from its own teacher, every other row a negative whichever
teacher it came from (mmkd's default keeps each teacher's rows to themselves).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def _weighted_mean(values_B: torch.Tensor, w_B: torch.Tensor) -> torch.Tensor:
    """Weighted mean over rows; 0 when no row has weight (no host sync)."""
    w = w_B.to(values_B.dtype)
    total = w.sum()
    return (values_B * w).sum() / total.clamp_min(torch.finfo(values_B.dtype).tiny) * (total > 0)


def feature_distillation(student_BE: torch.Tensor, target_BE: torch.Tensor, w_B: torch.Tensor) -> torch.Tensor:
    """Per-row MSE (mean over dims) between student features and targets, weighted over rows."""
    return _weighted_mean(feature_distillation_pairs(student_BE, target_BE), w_B)


def interactive_contrastive(student_image_BE: torch.Tensor, student_text_BE: torch.Tensor,
                            teacher_image_BE: torch.Tensor, teacher_text_BE: torch.Tensor,
                            temperature: torch.Tensor | float, w_B: torch.Tensor) -> torch.Tensor:
    """ICL over the rows with w > 0: student image -> teacher texts, student text -> teacher images,
    the other rows no negatives either (one matrix over the taught rows), weighted over rows."""
    per_row_B = interactive_contrastive_joint(student_image_BE, student_text_BE, teacher_image_BE, teacher_text_BE,
                                              temperature, w_B > 0)
    return _weighted_mean(per_row_B, w_B)


def feature_distillation_pairs(student_PE: torch.Tensor, target_PE: torch.Tensor) -> torch.Tensor:
    """Per-pair MSE [P] (mean over dims) between each pair's student features and its target."""
    return ((student_PE - target_PE.to(student_PE.dtype)) ** 2).mean(dim=-1)


def interactive_contrastive_pairs(student_image_PE: torch.Tensor, student_text_PE: torch.Tensor,
                                  target_image_PE: torch.Tensor, target_text_PE: torch.Tensor,
                                  temperature: torch.Tensor | float, group_P: torch.Tensor) -> torch.Tensor:
    """Per-pair ICL [P] within groups (`group_P`, a teacher per pair): pair p's student image against
    the text targets of its group's pairs, its own the positive, and its student text against their
    image targets; other groups' pairs are no negatives. A pair alone in its group gives 0."""
    same_group_PP = group_P.unsqueeze(1) == group_P.unsqueeze(0)
    return (_info_nce_rows(student_image_PE, target_text_PE, temperature, same_group_PP)
            + _info_nce_rows(student_text_PE, target_image_PE, temperature, same_group_PP)) / 2


def interactive_contrastive_joint(student_image_BE: torch.Tensor, student_text_BE: torch.Tensor,
                                  target_image_BE: torch.Tensor, target_text_BE: torch.Tensor,
                                  temperature: torch.Tensor | float, keep_B: torch.Tensor) -> torch.Tensor:
    """Per-row ICL [B] over one matrix of the kept rows (0 on the others, and everywhere when
    fewer than 2 rows are kept): row i's positive is its own target, its negatives are the
    targets of every other kept row. Targets are used as given (the authors do not normalise
    them); logits = cos-like products / temperature, i.e. times the authors' fixed multiplier
    when temperature = 1 / multiplier."""
    dtype = student_image_BE.dtype
    columns = keep_B.unsqueeze(0)  # [1, B]: rows without a teacher are no negatives either
    per_row_B = (_info_nce_rows(student_image_BE, target_text_BE, temperature, columns)
                 + _info_nce_rows(student_text_BE, target_image_BE, temperature, columns)) / 2
    enough = (keep_B.sum() >= 2).to(dtype)
    return torch.where(keep_B, per_row_B, torch.zeros_like(per_row_B)) * enough


def _info_nce_rows(a_RE: torch.Tensor, b_RE: torch.Tensor, temperature: torch.Tensor | float,
                   columns: torch.Tensor) -> torch.Tensor:
    """-log softmax of row i's own column (a_i . b_i) among the columns `columns[i]` allows, [R]."""
    logits = (a_RE @ b_RE.to(a_RE.dtype).T) / temperature
    masked = torch.finfo(logits.dtype).min
    return -torch.diagonal(torch.log_softmax(logits.masked_fill(~columns, masked), dim=-1))


def _kl_rows(teacher_logits: torch.Tensor, student_logits: torch.Tensor) -> torch.Tensor:
    p = F.softmax(teacher_logits, dim=-1)
    return (p * (F.log_softmax(teacher_logits, dim=-1) - F.log_softmax(student_logits, dim=-1))).sum(dim=-1)


def relational_kl(student_image_BE: torch.Tensor, student_text_BE: torch.Tensor,
                  teacher_image_BD: torch.Tensor, teacher_text_BD: torch.Tensor,
                  temperature: float, w_B: torch.Tensor) -> torch.Tensor:
    """KL(teacher || student) of in-batch similarity distributions (both directions) over rows with w > 0."""
    keep = w_B > 0
    if keep.sum() < 2:
        return (student_image_BE.sum() + student_text_BE.sum()) * 0.0
    si, st = student_image_BE[keep], student_text_BE[keep]
    ti, tt = teacher_image_BD[keep].float(), teacher_text_BD[keep].float()
    s_logits = si @ st.T / temperature
    t_logits = ti @ tt.T / temperature
    per_row = (_kl_rows(t_logits, s_logits) + _kl_rows(t_logits.T, s_logits.T)) / 2
    return _weighted_mean(per_row, w_B[keep])


def decision_kl(student_image_BE: torch.Tensor, student_classes_CE: torch.Tensor,
                teacher_probs_BC: torch.Tensor, temperature: float, w_B: torch.Tensor) -> torch.Tensor:
    """KL(teacher || student) of class distributions; the student uses its own image and text towers."""
    s_logp = F.log_softmax(student_image_BE @ student_classes_CE.T / temperature, dim=-1)
    p = teacher_probs_BC.to(s_logp.dtype)
    per_row = (p * (torch.log(p.clamp_min(1e-12)) - s_logp)).sum(dim=-1)
    return _weighted_mean(per_row, w_B)
