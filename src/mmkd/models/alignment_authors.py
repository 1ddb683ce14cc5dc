"""The MMKD-CLIP authors' alignment autoencoder (`mmkd align --arch authors`).

Legend: B rows, D_t a teacher's dim, E the latent (= student embedding) dim, H the hidden dim.

As wangshansong1/MMKD-CLIP @ 127544c, src/open_clip/models_ae.py `MultiCLIP_AE` defines it:

    x_E   = proj_t(x_BD)                                   (lines 12-14; the distillation target, 150-160)
    h_H   = encoder_m(x_E + noise)                         noise N(0, 0.01^2) while training (50-61);
                                                           encoder: 2 x (Linear, ReLU, Dropout 0.2) (20-36)
    x'_E  = decoder_m(h_H)                                 Linear, ReLU, Linear (39-49)
    x'_BD = dec_proj_t(x'_E)                               one decoder projection per teacher (16-18)

m is the modality (image or text); proj_t and dec_proj_t are shared by a teacher's two modalities.
The loss is the MSE of every (sample, teacher, modality) item, averaged over all items (136-144),
so a teacher available for more rows weighs more. Their training script is not released: the
optimiser, hidden size and schedule are mmkd align's.
"""

from __future__ import annotations

import torch
from torch import nn

from mmkd.models.projections import TeacherProjections

DROPOUT, NOISE_STD = 0.2, 0.01  # MultiCLIP_AE's defaults (models_ae.py:6)


def _encoder(latent_dim: int, hidden_dim: int, dropout: float) -> nn.Sequential:
    return nn.Sequential(nn.Linear(latent_dim, hidden_dim), nn.ReLU(), nn.Dropout(dropout),
                         nn.Linear(hidden_dim, hidden_dim), nn.ReLU(), nn.Dropout(dropout))


def _decoder(latent_dim: int, hidden_dim: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(hidden_dim, hidden_dim), nn.ReLU(), nn.Linear(hidden_dim, latent_dim))


class AuthorsAlignmentAE(TeacherProjections, nn.Module):
    arch = "authors"

    def __init__(self, teacher_dims: dict[str, int], latent_dim: int, hidden_dim: int | None = None,
                 dropout: float = DROPOUT, noise_std: float = NOISE_STD):
        super().__init__()
        self.teacher_dims = dict(teacher_dims)
        self.latent_dim, self.hidden_dim = latent_dim, hidden_dim or latent_dim
        self.dropout, self.noise_std = dropout, noise_std
        self.proj = nn.ModuleDict({t: nn.Linear(d, latent_dim) for t, d in teacher_dims.items()})
        self.dec_proj = nn.ModuleDict({t: nn.Linear(latent_dim, d) for t, d in teacher_dims.items()})
        self.encoder = nn.ModuleDict({m: _encoder(latent_dim, self.hidden_dim, dropout) for m in ("image", "text")})
        self.decoder = nn.ModuleDict({m: _decoder(latent_dim, self.hidden_dim) for m in ("image", "text")})

    def encode(self, teacher: str, x_BD: torch.Tensor, modality: str) -> torch.Tensor:
        """The distillation target: the teacher's projection alone (their visual_forward / text_forward)."""
        return self.proj[teacher](x_BD.float())

    def reconstruct(self, teacher: str, x_BD: torch.Tensor, modality: str) -> torch.Tensor:
        z = self.encode(teacher, x_BD, modality)
        if self.training and self.noise_std > 0:
            z = z + torch.randn_like(z) * self.noise_std
        return self.dec_proj[teacher](self.decoder[modality](self.encoder[modality](z)))

    def options(self) -> dict:
        return {"hidden_dim": self.hidden_dim, "dropout": self.dropout, "noise_std": self.noise_std}


def authors_reconstruction_loss(model: AuthorsAlignmentAE, items: list[tuple[str, str, torch.Tensor]]) -> torch.Tensor:
    """Mean over every item of the per-item MSE (models_ae.py:136-144). `items`: (teacher, modality, x_BD)
    with the available rows only; each row of each entry is one item."""
    per_item = [((model.reconstruct(t, x, m) - x.float()) ** 2).mean(dim=-1) for t, m, x in items]
    if not per_item:
        return torch.zeros((), device=next(model.parameters()).device)
    return torch.cat(per_item).mean()
