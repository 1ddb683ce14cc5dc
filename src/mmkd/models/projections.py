"""The per-teacher linear projections both alignment autoencoders (mmkd's and the authors') distil towards."""

from __future__ import annotations

import torch


class TeacherProjections:
    """Mixin for an alignment module with `proj`, an `nn.ModuleDict` of one `nn.Linear` per teacher."""

    proj: torch.nn.ModuleDict

    @torch.no_grad()
    def project_many(self, xs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """The per-teacher linear projections `proj_t(x)` of several teachers' [B_t, D_t] inputs, frozen.
        This alone is what the MMKD-CLIP authors distil towards (`clips_project_output`); their modality
        MLPs only serve the reconstruction. Stage 2 projects only the rows its policy weighs, so each
        teacher brings its own number of rows: one matmul per teacher."""
        return {t: self.proj[t](x.float()) for t, x in xs.items()}

    @torch.no_grad()
    def encode_many(self, xs: dict[str, torch.Tensor], modality: str) -> dict[str, torch.Tensor]:
        """The distillation targets of several teachers' [B_t, D_t] inputs of one modality, frozen."""
        return self._after_projection(self.project_many(xs), modality)

    @torch.no_grad()
    def project_pairs_many(self, images: dict[str, torch.Tensor], texts: dict[str, torch.Tensor]
                           ) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        """`project_many` of each teacher's image rows and text rows (one projection serves both) in one call."""
        both = self.project_many({t: torch.cat([images[t], texts[t]]) for t in images})
        return ({t: z[:images[t].shape[0]] for t, z in both.items()},
                {t: z[images[t].shape[0]:] for t, z in both.items()})

    @torch.no_grad()
    def encode_pairs_many(self, images: dict[str, torch.Tensor], texts: dict[str, torch.Tensor]
                          ) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        """`encode_many` of the image rows and of the text rows, their projections in one call."""
        z_img, z_txt = self.project_pairs_many(images, texts)
        return self._after_projection(z_img, "image"), self._after_projection(z_txt, "text")

    def _after_projection(self, z: dict[str, torch.Tensor], modality: str) -> dict[str, torch.Tensor]:
        """What follows the projection in a target (nothing here; mmkd's autoencoder adds its modality MLP)."""
        return z
