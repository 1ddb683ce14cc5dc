"""Stage 2: multi-teacher distillation into the student, from a feature store.

Legend: B rows, E student dim, D_t teacher t's dim, T teachers.

Loss = CLIP + lambda_fd * FD + lambda_icl * ICL + lambda_kl * relational KL, where for each
row the policy gives teacher weights w_BT and each teacher's terms are averaged over the rows
it teaches. Target spaces (`distill.target_space`):
  projection  teacher features mapped into the student space by the alignment autoencoder
              (or the store's precomputed projections, as the authors' features carry);
  adaptor     a trainable linear head per teacher maps the student features into that
              teacher's own space (AM-RADIO style); FD/ICL are computed there;
  relational  no targets: KL between in-batch similarity distributions (always available
              with lambda_kl > 0; in this space FD/ICL are off);
  decision    no feature targets either: only the decision term (below) and the KL term.
Decision distillation (lambda_decision > 0, any space): on image-only samples, the student's
image-vs-class-prompt distribution learns each teacher's zero-shot distribution (see
mmkd.training.decision).
Rows with no available teacher get the CLIP loss only.

ICL (`distill.icl_form`): `mmkd` runs each teacher's InfoNCE over its own rows; `paper` is the
authors' code: one matrix over every taught row, each row's targets from its own teacher.
Every term is computed over the batch gathered from all ranks (`losses`), so N processes give
the loss and gradients of one process with the same global batch, as in stage 1.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from mmkd.errors import UsageError
from mmkd.losses.contrastive import clip_loss
from mmkd.losses.distill import (feature_distillation, feature_distillation_pairs, interactive_contrastive,
                                 interactive_contrastive_joint, interactive_contrastive_pairs, relational_kl)
from mmkd.losses.gather import gather_ids, gather_rows, gather_sizes, gather_with_grad
from mmkd.training.targets import TargetReader


class DistillExtras(nn.Module):
    """The trainable distillation parameters saved beside the student: adaptor heads, ICL temperature."""

    def __init__(self, heads: dict[str, nn.Module], log_icl_temperature: torch.Tensor, learnable_temperature: bool):
        super().__init__()
        self.heads = nn.ModuleDict(heads)
        if learnable_temperature:
            self.log_icl_temperature = nn.Parameter(log_icl_temperature)
        else:
            self.register_buffer("log_icl_temperature", log_icl_temperature)


class DistillForward(nn.Module):
    """Student forward plus the distillation heads, as one module for DDP."""

    def __init__(self, model: nn.Module, extras: DistillExtras):
        super().__init__()
        self.model = model
        self.extras = extras

    def forward(self, images: torch.Tensor, tokens: torch.Tensor, decision_images: torch.Tensor | None = None,
                prompt_tokens: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        n = images.shape[0]
        if decision_images is not None:  # one pass of the image tower for pairs and image-only samples
            all_images = self.model.encode_image(torch.cat([images, decision_images]), normalize=True).float()
            image = all_images[:n]
        else:
            image = self.model.encode_image(images, normalize=True).float()
        text = self.model.encode_text(tokens, normalize=True).float()
        out = {"image": image, "text": text, "logit_scale": self.model.logit_scale.exp().float(),
               "icl_temperature": self.extras.log_icl_temperature.exp()}
        if decision_images is not None:
            out["decision_image"] = all_images[n:]
            out["prompts"] = self.model.encode_text(prompt_tokens, normalize=True).float()
        for t, head in self.extras.heads.items():  # heads are applied here so DDP sees their use
            out[f"head_image:{t}"] = F.normalize(head(image), dim=-1)
            out[f"head_text:{t}"] = F.normalize(head(text), dim=-1)
        return out


def _check_content(store, records, rows, mode: str) -> None:
    """The training data is the data the store was made from (content digests of images and captions)."""

    from mmkd.data.content import check_rows, open_content

    content = open_content(store.path)
    if content is None or content.shape[0] != store.num_samples:
        if mode != "off":
            print(f"mmkd distill: note: the feature store {store.path} records no content digests (made by an older "
                  f"mmkd or imported); the data cannot be compared with it", file=sys.stderr)
        return
    check_rows(content, records, rows, mode, repr(str(store.path)), "--store")


class DistillTask:
    name = "distill"
    shared_outputs = ("logit_scale", "icl_temperature", "prompts")  # not per row (see mmkd.training.accumulate)

    def __init__(self, student, cfg, device, records=None):
        from mmkd.data.feature_store import FeatureStore
        from mmkd.data.index import sample_ids_of
        from mmkd.data.pairs import records_from_config

        d = cfg.distill
        self.cfg = cfg
        self.device = device
        self.store = FeatureStore(d.store)
        unknown = [t for t in d.exclude_teachers if t not in self.store.teachers]
        if unknown:
            raise UsageError(f"--distill.exclude_teachers: {unknown} not in the store; it has {self.store.teachers}")
        self.teachers = [t for t in self.store.teachers if t not in d.exclude_teachers]
        if not self.teachers:
            raise UsageError("--distill.exclude_teachers: every teacher is excluded; keep at least one")
        self.space = d.target_space
        embed_dim = student.embed_dim
        # Preflight: every training sample has a store row.
        if records is None:  # built on its own (not by fit): index the training data here
            records, _ = records_from_config(cfg.data)
        try:  # memory grows with the training set, not with the store (`FeatureStore.rows_of`)
            self.row_of_index = self.store.rows_of(sample_ids_of(records))
        except KeyError as e:
            missing = e.args[0]
            raise UsageError(f"--store: {len(missing)} of {len(records)} training samples have no row in "
                             f"{self.store.path} (e.g. {missing[:3]}); extract features for this data with "
                             f"`mmkd extract --data {cfg.data.path} ...`") from None
        _check_content(self.store, records, self.row_of_index, getattr(d, "check_data", "sample"))
        self.alignment = None
        self.precomputed = False
        if self.space == "projection":
            from mmkd.models.alignment import alignment_paths, load_alignment

            weights, _ = alignment_paths(d.store, d.alignment)
            if not d.alignment and not weights.is_file() and all(
                    self.store.has_array(t, "projected_image") for t in self.teachers):
                self.precomputed = True  # the authors' projected features, imported with the store
            else:
                self.alignment = load_alignment(weights, self.store).to(device)
                for p in self.alignment.parameters():
                    p.requires_grad_(False)
                if self.alignment.latent_dim != embed_dim:
                    raise UsageError(f"alignment latent dim {self.alignment.latent_dim} != student embed dim "
                                     f"{embed_dim}; rerun `mmkd align --store {d.store} --student {cfg.model.init or cfg.model.name}` "
                                     f"(or --latent-dim {embed_dim})")
        heads = {}
        if self.space == "adaptor":
            heads = {t: nn.Linear(embed_dim, self.store.embed_dim(t)) for t in self.teachers}
        self.module = DistillForward(student.model, DistillExtras(
            heads, torch.tensor(float(np.log(d.icl_temperature))), d.learnable_icl_temperature))
        self.kinds = ("projected_image", "projected_text") if self.precomputed else ("image", "text")
        # Which terms have teacher-feature targets; the relational KL reads the raw features too.
        self.feature_terms = self.space in ("projection", "adaptor") and (d.lambda_fd > 0 or d.lambda_icl > 0)
        self.needs_features = self.feature_terms or d.lambda_kl > 0
        self.epoch = 0
        self._prepared: tuple[Any, dict[str, Any]] | None = None
        # The decision and CLIP-only runs read no features. Used by the loader's workers (`fit`).
        self.target_reader = TargetReader(self.store, self.teachers, self.kinds if self.needs_features else (),
                                          self.row_of_index, d.policy, cfg.train.seed, d.modality_routes)
        self.decision = None
        if d.lambda_decision > 0 or self.space == "decision":
            from mmkd.training.decision import DecisionTargets, teacher_specs_from_store
            from mmkd.utils.dist import env_dist_info

            specs = teacher_specs_from_store(self.store, self.teachers, d.decision_teachers)
            self.decision = DecisionTargets(cfg, specs, d.modality_routes, Path(cfg.train.out), student, device,
                                            is_main=env_dist_info().is_main)
            size = student.preprocess_cfg["size"]
            self.image_hw = tuple(size) if isinstance(size, (list, tuple)) else (size, size)
            self._decision_rows = None
        self._warn_if_no_signal()

    def _warn_if_no_signal(self) -> None:
        """Say once (rank 0) when no distillation term can ever be non-zero: every distillation weight is 0,
        or no training sample has an available teacher and no decision term brings other targets."""
        import warnings

        from mmkd.utils.dist import env_dist_info

        d = self.cfg.distill
        if not env_dist_info().is_main:
            return
        if self.decision is None and not (self.feature_terms or d.lambda_kl > 0):
            warnings.warn(f"no distillation signal: every distillation weight is 0 for target space {self.space!r} "
                          f"(lambda_fd {d.lambda_fd:g}, lambda_icl {d.lambda_icl:g}, lambda_kl {d.lambda_kl:g}, "
                          f"lambda_decision {d.lambda_decision:g}); this run trains with the CLIP loss only. Set "
                          f"--distill.lambda_fd / --distill.lambda_icl (or --distill.lambda_kl, "
                          f"--distill.lambda_decision)", stacklevel=2)
            return
        if self.decision is not None or not self.needs_features:
            return
        cols = [self.store.teachers.index(t) for t in self.teachers]
        if self.store.available[:, cols][self.row_of_index].any():
            return
        warnings.warn(f"no distillation signal: none of the {len(self.row_of_index)} training samples has an "
                      f"available teacher in {d.store} (teachers {', '.join(self.teachers)}), and there is no decision "
                      f"term; this run trains with the CLIP loss only. Decide availability again with `mmkd extract "
                      f"--out {d.store} --reapply-availability --availability threshold|always`, or add decision "
                      f"distillation (--distill.lambda_decision)", stacklevel=2)

    def extra_inputs(self, position: int, info, device) -> dict[str, torch.Tensor]:
        if self.decision is None:
            return {}
        micro = self.cfg.train.batch_size // self.cfg.train.accum_steps
        per_rank = (self.cfg.distill.decision_batch_size or micro) // info.world_size or 1
        # Every rank's rows are a pure function of the position: the loss over the gathered batch
        # needs all of them, and only the weights (unreadable images) have to travel.
        all_rows = np.concatenate([self.decision.rows_for(position, per_rank, r, info.world_size)
                                   for r in range(info.world_size)])
        rows = all_rows[info.rank * per_rank:(info.rank + 1) * per_rank]
        images, weights = self.decision.load_images(
            rows, self.image_hw, self.decision.first_draw(position, per_rank, info.rank, info.world_size))
        self._decision_rows = (rows, weights)  # this rank's: `prepare` hands them to the loss with the targets
        return {"decision_images": images.to(device), "prompt_tokens": self.decision.prompt_tokens.to(device)}

    def set_epoch(self, epoch: int) -> None:
        """Random teacher draws change with the epoch (and never with the number of processes)."""
        self.epoch = epoch
        self.target_reader.epoch = epoch

    # ---- targets ------------------------------------------------------------------------------
    def prepare(self, batch, host: dict[str, Any] | None = None) -> dict[str, Any]:
        """Start the copy of the batch's teacher features and weights to the device.

        `fit` calls this (after `extra_inputs`) before the student's forward pass, with what the loader's
        worker read for the batch (`host`, see mmkd.training.targets); without it the store is read here.
        Returns the targets `losses` takes (and keeps them for a `losses(outputs, batch)` call without them).
        """
        targets = self._load_targets(batch, host)
        self._prepared = (batch, targets)
        return targets

    def _load_targets(self, batch, host: dict[str, Any] | None = None) -> dict[str, Any]:
        """The batch's targets on the device, from what a loader worker read (`host`) or read here."""
        host = self.target_reader(batch) if host is None else host
        block = host["block"].to(self.device, non_blocking=True)  # pinned by the loader on a GPU
        targets = {"weights": host["weights"], "on_device": self.target_reader.split(block)}
        if self.decision is not None and self._decision_rows is not None:  # this rank's image-only rows
            targets["decision_rows"], targets["decision_weight"] = self._decision_rows
        return targets

    def _raw(self, targets, t: str) -> tuple[torch.Tensor, torch.Tensor]:
        """Teacher t's stored image and text features of the batch, float32 on the device."""
        return tuple(targets["on_device"][f"{kind}:{t}"] for kind in self.kinds)

    def _own_space_targets(self, targets) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        """Adaptor targets: every teacher's stored features in its own space, normalised unless
        `distill.normalize_targets` is false."""
        raw = {t: self._raw(targets, t) for t in self.teachers}
        if self.cfg.distill.normalize_targets:
            raw = {t: (F.normalize(img, dim=-1), F.normalize(txt, dim=-1)) for t, (img, txt) in raw.items()}
        return raw

    def _projected_targets(self, targets) -> torch.Tensor:
        """Image and text targets [P, 2, E] of the (row, teacher) pairs the policy weighs, in the student's
        space and the order of `weighted_pairs`, normalised unless `distill.normalize_targets` is false:
        the stored features through the frozen alignment (its linear projection only, or with the modality
        MLP: `distill.projection`), or the authors' precomputed projections.

        Only those pairs are projected (one in ~6.6 under the paper's random-available policy): FD and ICL
        weigh a pair by its teacher weight and the paper's ICL mixes a row's targets by them, so the other
        pairs never count."""
        raw = {t: self._raw(targets, t) for t in self.teachers}
        rows_P, teacher_P = weighted_pairs(targets["weights"])
        first = raw[self.teachers[0]][0]
        num_pairs = rows_P.size
        if not num_pairs:
            return first.new_zeros((0, 2, self.alignment.latent_dim if self.alignment else first.shape[1]))
        # Each teacher's rows are read and projected together (teacher-major); one index puts every pair back
        # in row-major order with its image and text targets side by side. One host-to-device copy for all.
        by_teacher = np.lexsort((rows_P, teacher_P))
        position = np.empty(num_pairs, dtype=np.int64)
        position[by_teacher] = np.arange(num_pairs)
        counts = np.bincount(teacher_P, minlength=len(self.teachers))
        flat = np.concatenate([rows_P[by_teacher], np.stack([position, position + num_pairs], axis=1).ravel()])
        index = torch.from_numpy(flat).to(first.device, non_blocking=True)
        taught = [t for t, n in zip(self.teachers, counts) if n]
        per_teacher = dict(zip(taught, index[:num_pairs].split([int(n) for n in counts if n])))
        images = {t: raw[t][0].index_select(0, per_teacher[t]) for t in taught}
        texts = {t: raw[t][1].index_select(0, per_teacher[t]) for t in taught}
        if self.alignment is not None:
            project = (self.alignment.project_pairs_many if self.cfg.distill.projection == "linear"
                       else self.alignment.encode_pairs_many)
            images, texts = project(images, texts)
        both = torch.cat([images[t] for t in taught] + [texts[t] for t in taught]).index_select(0, index[num_pairs:])
        if self.cfg.distill.normalize_targets:
            both = F.normalize(both, dim=-1)
        return both.view(num_pairs, 2, both.shape[-1])

    def _pair_terms(self, g, target_P2E: torch.Tensor, w_NT: np.ndarray, num_taught: int, temperature: torch.Tensor
                    ) -> tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
        """(FD total, ICL total, each taught teacher's FD and ICL to log) in the projection space, over the global
        batch's weighted pairs. A teacher's FD is its pairs' weighted mean and its total share is its weight
        over the taught rows, so the FD total is every pair's weight times its FD over the number of taught
        rows; the same holds for ICL (a teacher with one pair gives 0: it is alone in its group). The
        coefficients are built on the host and sent with the indices (no device sync)."""
        rows_P, teacher_P = weighted_pairs(w_NT)
        w_P = np.asarray(w_NT, dtype=np.float32)[rows_P, teacher_P]
        taught, k_P = np.unique(teacher_P, return_inverse=True)
        weight_T = np.bincount(k_P, weights=w_P, minlength=taught.size)
        coef = np.zeros((taught.size + 1, rows_P.size), dtype=np.float32)  # [teachers, total] x pairs
        coef[k_P, np.arange(rows_P.size)] = w_P / weight_T[k_P]
        coef[-1] = w_P / num_taught
        device = target_P2E.device
        index = torch.from_numpy(np.concatenate([rows_P, teacher_P])).to(device, non_blocking=True)
        floats = torch.from_numpy(np.concatenate([coef.ravel(), w_P])).to(device, non_blocking=True)
        row_P, group_P = index.split(rows_P.size)
        coef_t, w_P_t = floats.split([coef.size, rows_P.size])
        paper = self.cfg.distill.icl_form == "paper"
        s_img, s_txt = g["image"].index_select(0, row_P), g["text"].index_select(0, row_P)
        t_img, t_txt = target_P2E[:, 0], target_P2E[:, 1]
        fd_P = feature_distillation_pairs(s_img, t_img) + feature_distillation_pairs(s_txt, t_txt)
        if paper:
            # One matrix over every taught row; a row's targets are its own teacher's (the policy's mix of
            # them when it gives a row several teachers).
            mix_N2E = target_P2E.new_zeros((g["image"].shape[0], *target_P2E.shape[1:])).index_add_(
                0, row_P, target_P2E * w_P_t[:, None, None])
            keep_N = torch.zeros(g["image"].shape[0], dtype=torch.bool, device=device).index_fill_(0, row_P, True)
            icl_N = interactive_contrastive_joint(g["image"], g["text"], mix_N2E[:, 0], mix_N2E[:, 1], temperature, keep_N)
            icl_P = icl_N.index_select(0, row_P)
        else:
            icl_P = interactive_contrastive_pairs(s_img, s_txt, t_img, t_txt, temperature, group_P)
        per_term = coef_t.view(coef.shape) @ torch.stack([fd_P, icl_P], dim=1)  # [T' + 1, 2]
        icl_total = icl_N.sum() / num_taught if paper else per_term[-1, 1]
        logged = per_term[:-1].detach()
        names = [self.teachers[j] for j in taught]
        return per_term[-1, 0], icl_total, {f"{term}:{t}": logged[k, i] for k, t in enumerate(names)
                                            for i, term in enumerate(("fd", "icl"))}

    def _local_rows(self, outputs, targets) -> dict[str, torch.Tensor]:
        """Everything the loss reads per pair row of this rank, student outputs and teacher targets (but the
        projection space's, which are per (row, teacher) pair: `_projected_targets`): `losses` gathers it
        across ranks in one collective. Every rank builds the same keys and widths, also for an empty
        micro-batch (0 rows), so the collectives always match."""
        d = self.cfg.distill
        on_device = targets["on_device"]
        rows = {"image": outputs["image"], "text": outputs["text"], "weights": on_device["weights"],
                "available": on_device["available"]}
        if self.feature_terms and self.space == "adaptor":  # each teacher's own space and its own head's outputs
            fd_targets = self._own_space_targets(targets)
            for t in self.teachers:
                rows[f"target_image:{t}"], rows[f"target_text:{t}"] = fd_targets[t]
                rows[f"head_image:{t}"] = outputs[f"head_image:{t}"]
                rows[f"head_text:{t}"] = outputs[f"head_text:{t}"]
        if d.lambda_kl > 0:
            for t in self.teachers:
                rows[f"raw_image:{t}"], rows[f"raw_text:{t}"] = self._raw(targets, t)
        return rows

    # ---- the loss -----------------------------------------------------------------------------
    def losses(self, outputs, batch, rank: int, world_size: int, targets=None) -> dict[str, torch.Tensor]:
        """Every term over the global batch: the rows of all ranks are gathered (student features with
        their gradient), and every rank computes the same loss. With DDP averaging the gradients this
        equals one process on the global batch (see mmkd.losses.gather). `targets`: what `prepare`
        returned (concatenated over a step's micro-batches); without them, the batch's are read."""
        d = self.cfg.distill
        if targets is None:
            prepared, self._prepared = self._prepared, None
            targets = prepared[1] if prepared is not None and prepared[0] is batch else self._load_targets(batch)
        local = self._local_rows(outputs, targets)
        row_sizes = gather_sizes(local["image"].shape[0], world_size, outputs["image"].device)
        g = gather_rows(local, rank, world_size, row_sizes)
        terms = clip_loss(g["image"], g["text"], outputs["logit_scale"])  # already global: no second gather
        zero = outputs["image"].sum() * 0.0
        fd_total, icl_total, kl_total = zero, zero, zero
        # Which teachers teach the global batch is decided on the host: from the policy's own weights
        # in one process (no device sync), from the gathered weights under torchrun.
        w_np = np.asarray(targets["weights"] if world_size == 1 else g["weights"].detach().cpu().numpy(), np.float32)
        num_taught = max(int((w_np.sum(axis=1) > 0).sum()), 1)
        taught = [j for j in range(len(self.teachers)) if w_np[:, j].any()]
        share = {j: float(w_np[:, j].sum()) / num_taught for j in taught}  # a teacher's share of the taught rows
        w_NT = g["weights"]
        if self.feature_terms and self.space == "projection" and taught:
            # Every target is in the student's space: FD and ICL over the weighted (row, teacher) pairs, in
            # a few ops for all teachers. Each rank's pairs are row-major, so in rank order they are the
            # gathered batch's pairs in row-major order (`weighted_pairs(w_np)`), and each rank's count is
            # known from the gathered weights (no collective for the sizes).
            pairs = self._projected_targets(targets)
            if world_size > 1:
                ends = np.cumsum(row_sizes)
                pair_sizes = [int(np.count_nonzero(w_np[end - n:end])) for end, n in zip(ends, row_sizes)]
                pairs = gather_with_grad(pairs.flatten(1), rank, world_size, pair_sizes)[0].view(-1, *pairs.shape[1:])
            fd, icl, logged = self._pair_terms(g, pairs, w_np, num_taught, outputs["icl_temperature"])
            fd_total, icl_total = fd_total + fd, icl_total + icl
            terms.update(logged)
        for j in taught if self.feature_terms and self.space == "adaptor" else ():
            t = self.teachers[j]  # each teacher's own space: one at a time
            s_img, s_txt = g[f"head_image:{t}"], g[f"head_text:{t}"]
            t_img, t_txt = g[f"target_image:{t}"], g[f"target_text:{t}"]
            fd = feature_distillation(s_img, t_img, w_NT[:, j]) + feature_distillation(s_txt, t_txt, w_NT[:, j])
            icl = interactive_contrastive(s_img, s_txt, t_img, t_txt, outputs["icl_temperature"], w_NT[:, j])
            fd_total = fd_total + share[j] * fd
            icl_total = icl_total + share[j] * icl
            terms[f"fd:{t}"], terms[f"icl:{t}"] = fd.detach(), icl.detach()
        for j in taught if d.lambda_kl > 0 else ():
            t = self.teachers[j]
            # Relational KL uses every row the teacher may teach (the in-batch distribution
            # needs several rows), not only the rows the policy drew for it.
            kl = relational_kl(g["image"], g["text"], g[f"raw_image:{t}"], g[f"raw_text:{t}"], d.kl_temperature,
                               g["available"][:, j])
            kl_total = kl_total + kl / len(self.teachers)
            terms[f"kl:{t}"] = kl.detach()
        decision_total = zero
        if self.decision is not None and "decision_image" in outputs:
            rows, weights = targets["decision_rows"], targets["decision_weight"]  # this rank's
            local = {"image": outputs["decision_image"], "weight": torch.from_numpy(weights).to(outputs["image"].device)}
            gd = gather_rows(local, rank, world_size)
            if world_size > 1:
                weights = gd["weight"].detach().cpu().numpy()
                rows = gather_ids(rows, world_size, outputs["image"].device)
            decision_total = self.decision.loss(gd["image"], outputs["prompts"], rows, weights)
        terms["fd"], terms["icl"], terms["kl"], terms["decision"] = fd_total, icl_total, kl_total, decision_total
        # Zero-weighted use of every output keeps DDP's gradient bookkeeping whole when a batch has
        # no row for some teacher (its head and the ICL temperature then get a zero gradient).
        unused = sum(v.sum() for v in outputs.values()) * 0.0
        terms["loss"] = (terms["clip"] + d.lambda_fd * fd_total + d.lambda_icl * icl_total
                         + d.lambda_kl * kl_total + d.lambda_decision * decision_total + unused)
        return terms

    def extra_modules(self) -> dict[str, nn.Module]:
        return {"distill": self.module.extras}

    def checkpoint_info(self) -> dict[str, Any]:
        teachers = []
        for t in self.teachers:
            prov = self.store.provenance(t)
            teachers.append({"name": t, "embed_dim": self.store.embed_dim(t), "spec": prov.get("spec"),
                             "licence": prov.get("licence") or _registry_licence(t)})
        d = self.cfg.distill
        return {"distill": {"store": str(Path(d.store).resolve()), "teachers": teachers, "target_space": self.space,
                            "policy": d.policy, "lambda_fd": d.lambda_fd, "lambda_icl": d.lambda_icl,
                            "lambda_kl": d.lambda_kl, "lambda_decision": d.lambda_decision, "normalize_targets": d.normalize_targets,
                            "learnable_icl_temperature": d.learnable_icl_temperature, "icl_form": d.icl_form,
                            "projection": d.projection}}


def weighted_pairs(w_BT) -> tuple[np.ndarray, np.ndarray]:
    """(rows, teachers) of the pairs with a weight > 0 in float32 (as the gathered weights carry them),
    row-major: a row's teachers in teacher order, rows in order."""
    rows, teachers = np.nonzero(np.asarray(w_BT, dtype=np.float32))
    return rows.astype(np.int64), teachers.astype(np.int64)


def _registry_licence(name: str) -> str | None:
    """The licence the teacher registry knows for `name` (case-insensitive), if any."""
    from mmkd.teachers.registry import KNOWN_TEACHERS

    for key, info in KNOWN_TEACHERS.items():
        if key.lower() == name.lower():
            return info.licence
    return None
