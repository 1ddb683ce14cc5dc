"""The per-teacher linear projections both alignment autoencoders (mmkd's and the authors') distil towards."""

from __future__ import annotations

import torch


class TeacherProjections:
    """Mixin for an alignment module with `proj`, an `nn.ModuleDict` of one `nn.Linear` per teacher."""

    proj: torch.nn.ModuleDict

    @torch.no_grad()
    def project_many(self, xs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """The per-teacher linear projections `proj_t(x)` of several teachers' [B_t, D_t] inputs, frozen:
        teachers of the same dim share one batched matmul. This alone is what the MMKD-CLIP authors
        distil towards (`clips_project_output`); their modality MLPs only serve the reconstruction."""
        z = {}
        for dim in dict.fromkeys(x.shape[1] for x in xs.values()):
            group = [t for t in xs if xs[t].shape[1] == dim]
            if len({xs[t].shape[0] for t in group}) == 1:
                w_GED, b_GE = self._stacked(group)
                x_GBD = torch.stack([xs[t].float() for t in group])
                z.update(zip(group, torch.baddbmm(b_GE.unsqueeze(1), x_GBD, w_GED.transpose(1, 2)).unbind(0)))
            else:
                z.update({t: self.proj[t](xs[t].float()) for t in group})
        return {t: z[t] for t in xs}

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

    def _stacked(self, group: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """The group's weights [G, E, D] and biases [G, E], stacked once and kept while every parameter is
        the same tensor at the same version (a load, an in-place update or a move to another device restacks):
        the projections are frozen, so a training step does not copy them again."""
        params = [p for t in group for p in (self.proj[t].weight, self.proj[t].bias)]
        state = tuple((p.data_ptr(), p._version, p.device) for p in params)
        cache = self.__dict__.setdefault("_stacked_cache", {})
        hit = cache.get(tuple(group))
        if hit is None or hit[0] != state:
            hit = (state, torch.stack(params[0::2]), torch.stack(params[1::2]))
            cache[tuple(group)] = hit
        return hit[1], hit[2]
