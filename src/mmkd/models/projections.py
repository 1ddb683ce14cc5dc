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
            w_GED, b_GE = self._stacked(group)
            if len({xs[t].shape[0] for t in group}) == 1:
                x_GBD = torch.stack([xs[t].float() for t in group])
                z.update(zip(group, torch.baddbmm(b_GE.unsqueeze(1), x_GBD, w_GED.transpose(1, 2)).unbind(0)))
            else:
                z.update({t: self.proj[t](xs[t].float()) for t in group})
        return {t: z[t] for t in xs}

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
