"""The teacher alignment autoencoder (MMKD-CLIP) and its training on a feature store.

Legend: B rows, D_t a teacher's dim, E the latent (= student embedding) dim.

    z = proj_t(x_BD);  encode(t, x_BD, modality) = z + mlp_modality(z)   -> [B, E]  (the distillation target)
    decode(t, z_BE)           = dec_t(z_BE)                    -> [B, D_t]

One linear projection per teacher shared by its image and text features, one MLP per
modality shared by all teachers, one linear decoder per teacher, trained by reconstruction
MSE; an optional cross-teacher InfoNCE pulls different teachers' latents of the same sample
together (the paper defines it but leaves it off).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from mmkd.errors import UsageError

WEIGHTS_FILE = "alignment.safetensors"
META_FILE = "alignment.json"


class AlignmentAE(nn.Module):
    def __init__(self, teacher_dims: dict[str, int], latent_dim: int, hidden_dim: int | None = None):
        super().__init__()
        hidden_dim = hidden_dim or latent_dim
        self.teacher_dims = dict(teacher_dims)
        self.latent_dim = latent_dim
        self.proj = nn.ModuleDict({t: nn.Linear(d, latent_dim) for t, d in teacher_dims.items()})
        self.mlp = nn.ModuleDict({m: nn.Sequential(nn.Linear(latent_dim, hidden_dim), nn.GELU(),
                                                   nn.Linear(hidden_dim, latent_dim))
                                  for m in ("image", "text")})
        self.dec = nn.ModuleDict({t: nn.Linear(latent_dim, d) for t, d in teacher_dims.items()})

    def encode(self, teacher: str, x_BD: torch.Tensor, modality: str) -> torch.Tensor:
        z = self.proj[teacher](x_BD.float())
        return z + self.mlp[modality](z)

    @torch.no_grad()
    def project_many(self, xs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """The per-teacher linear projections `proj_t(x)` of several teachers' [B_t, D_t] inputs, frozen:
        teachers of the same dim share one batched matmul. This alone is what the MMKD-CLIP authors
        distil towards (`clips_project_output`); their modality MLPs only serve the reconstruction."""
        z = {}
        for dim in dict.fromkeys(x.shape[1] for x in xs.values()):
            group = [t for t in xs if xs[t].shape[1] == dim]
            w_GED = torch.stack([self.proj[t].weight for t in group])
            b_GE = torch.stack([self.proj[t].bias for t in group])
            if len({xs[t].shape[0] for t in group}) == 1:
                x_GBD = torch.stack([xs[t].float() for t in group])
                z.update(zip(group, torch.baddbmm(b_GE.unsqueeze(1), x_GBD, w_GED.transpose(1, 2)).unbind(0)))
            else:
                z.update({t: self.proj[t](xs[t].float()) for t in group})
        return {t: z[t] for t in xs}

    @torch.no_grad()
    def encode_many(self, xs: dict[str, torch.Tensor], modality: str) -> dict[str, torch.Tensor]:
        """`encode` of several teachers' [B, D_t] inputs at once, for frozen use (stage-2 targets):
        `project_many`, then the modality MLP once over all of them, instead of 3 small calls per teacher."""
        names = list(xs)
        if not names:
            return {}
        z = self.project_many(xs)
        z_all = torch.cat([z[t] for t in names])
        out = z_all + self.mlp[modality](z_all)
        return dict(zip(names, out.split([xs[t].shape[0] for t in names])))

    def decode(self, teacher: str, z_BE: torch.Tensor) -> torch.Tensor:
        return self.dec[teacher](z_BE)


def alignment_paths(store_path: str | Path, alignment: str = "") -> tuple[Path, Path]:
    weights = Path(alignment) if alignment else Path(store_path) / WEIGHTS_FILE
    return weights, weights.with_suffix(".json")


def train_alignment(store, latent_dim: int, *, epochs: int = 10, steps: int = 0, batch_size: int = 256,
                    lr: float = 1e-3, lambda_nce: float = 0.0, temperature: float = 0.07, seed: int = 0,
                    teachers: list[str] | None = None, progress: bool = True) -> tuple[AlignmentAE, dict[str, Any]]:
    """Fit the autoencoder on a store's available rows; returns the model and its per-teacher report.

    Training passes over every row with an available teacher `epochs` times (a seeded order per
    pass), unless `steps` > 0 fixes the number of batches. A teacher available for no row is not
    trained (its projection stays at its initial values; it teaches no sample in stage 2 either)
    and is reported with `rows_available` 0.
    """
    teachers = teachers or list(store.teachers)
    dims = {t: store.embed_dim(t) for t in teachers}
    torch.manual_seed(seed)
    model = AlignmentAE(dims, latent_dim)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    avail = np.asarray(store.available)[:, [store.teachers.index(t) for t in teachers]]
    usable = np.nonzero(avail.any(axis=1))[0]
    if usable.size == 0:
        raise UsageError(f"--store: no sample of the feature store {store.path} has an available teacher "
                         f"({', '.join(teachers)}), so there is nothing to align. Decide availability again, e.g. "
                         f"`mmkd extract --out {store.path} --reapply-availability --availability threshold "
                         f"--threshold 0.2` (or `--availability always`)")
    batch = min(batch_size, usable.size)
    steps_per_epoch = -(-usable.size // batch)
    total = steps or epochs * steps_per_epoch
    rng = np.random.default_rng(seed)
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=total, desc="align", unit="step", dynamic_ncols=True)
    step = 0
    while step < total:
        order = rng.permutation(usable)  # one pass over every usable row
        for start in range(0, order.size, batch):
            if step == total:
                break
            loss = _reconstruction_step(model, store, np.sort(order[start:start + batch]), teachers, lambda_nce,
                                        temperature)
            opt.zero_grad()
            loss.backward()
            opt.step()
            step += 1
            if bar is not None:
                bar.update(1)
                bar.set_postfix(loss=f"{loss.item():.4f}")
    if bar is not None:
        bar.close()
    report = evaluate_alignment(model, store, teachers, seed=seed)
    report["steps"], report["epochs"] = total, round(total / steps_per_epoch, 3)
    return model, report


def _reconstruction_step(model: AlignmentAE, store, idx: np.ndarray, teachers: list[str], lambda_nce: float,
                         temperature: float) -> torch.Tensor:
    """Reconstruction MSE of the batch's available (teacher, modality) features (+ the cross-teacher NCE)."""
    batch = store.rows(idx, teachers=teachers)
    mask = torch.from_numpy(batch["available"])
    loss = torch.zeros(())
    latents: dict[str, dict[str, torch.Tensor]] = {}
    for j, t in enumerate(teachers):
        rows = mask[:, j]
        if rows.sum() == 0:
            continue
        for modality in ("image", "text"):
            x = torch.from_numpy(batch[modality][t].astype(np.float32))
            z = model.encode(t, x, modality)
            recon = model.decode(t, z)
            loss = loss + ((recon - x) ** 2).mean(dim=-1)[rows].mean()
            latents.setdefault(modality, {})[t] = z
    if lambda_nce > 0:
        loss = loss + lambda_nce * _cross_teacher_nce(latents, mask, teachers, temperature)
    return loss


def _cross_teacher_nce(latents, mask, teachers, temperature) -> torch.Tensor:
    total, count = torch.zeros(()), 0
    for by_teacher in latents.values():
        names = [t for t in teachers if t in by_teacher]
        for a in range(len(names)):
            for b in range(a + 1, len(names)):
                ja, jb = teachers.index(names[a]), teachers.index(names[b])
                both = mask[:, ja] & mask[:, jb]
                if both.sum() < 2:
                    continue
                za = F.normalize(by_teacher[names[a]][both], dim=-1)
                zb = F.normalize(by_teacher[names[b]][both], dim=-1)
                logits = za @ zb.T / temperature
                labels = torch.arange(za.shape[0])
                total = total + (F.cross_entropy(logits, labels) + F.cross_entropy(logits.T, labels)) / 2
                count += 1
    return total / max(count, 1)


@torch.no_grad()
def evaluate_alignment(model: AlignmentAE, store, teachers: list[str], max_rows: int = 4096,
                       seed: int = 0) -> dict[str, Any]:
    """Per teacher: its available rows in the whole store and the relative reconstruction error on
    them (None when it has none); per pair: mean cosine of latents of the same sample. Errors and
    cosines are measured on up to `max_rows` rows that have an available teacher (seeded draw)."""
    avail = np.asarray(store.available)[:, [store.teachers.index(t) for t in teachers]]
    usable = np.nonzero(avail.any(axis=1))[0]
    idx = usable if usable.size <= max_rows else np.sort(np.random.default_rng(seed).choice(usable, max_rows,
                                                                                           replace=False))
    batch = store.rows(idx, teachers=teachers)
    mask = batch["available"]
    report: dict[str, Any] = {"teachers": {}, "pair_cosine": {}}
    latents = {}
    for j, t in enumerate(teachers):
        rows = mask[:, j]
        errs = []
        for modality in ("image", "text"):
            x = torch.from_numpy(batch[modality][t].astype(np.float32))
            z = model.encode(t, x, modality)
            recon = model.decode(t, z)
            if rows.any():
                rel = ((recon - x) ** 2).sum(-1) / (x ** 2).sum(-1).clamp_min(1e-12)
                errs.append(float(rel[torch.from_numpy(rows)].mean()))
            latents[(t, modality)] = F.normalize(z, dim=-1)
        report["teachers"][t] = {"relative_reconstruction_error": float(np.mean(errs)) if errs else None,
                                 "rows_available": int(avail[:, j].sum())}
    for a in range(len(teachers)):
        for b in range(a + 1, len(teachers)):
            both = torch.from_numpy(mask[:, a] & mask[:, b])
            if both.sum() == 0:
                continue
            cos = [float((latents[(teachers[a], m)][both] * latents[(teachers[b], m)][both]).sum(-1).mean())
                   for m in ("image", "text")]
            report["pair_cosine"][f"{teachers[a]}|{teachers[b]}"] = float(np.mean(cos))
    values = list(report["pair_cosine"].values())
    report["mean_pair_cosine"] = float(np.mean(values)) if values else None
    return report


def save_alignment(model: AlignmentAE, path: Path, store, report: dict[str, Any]) -> None:
    from mmkd.utils.io import atomic_save_safetensors, atomic_write_json

    atomic_save_safetensors(path, model.state_dict())
    atomic_write_json(path.with_suffix(".json"), {
        "teacher_dims": model.teacher_dims, "latent_dim": model.latent_dim,
        "store_fingerprints": {t: store.manifest["teachers"][store.teachers.index(t)].get("fingerprint")
                               for t in model.teacher_dims},
        "report": report,
    })


def load_alignment(path: Path, store=None) -> AlignmentAE:
    """Load alignment weights; with `store`, check that its teachers and dims still match."""
    from safetensors.torch import load_file

    meta_path = path.with_suffix(".json")
    if not path.is_file() or not meta_path.is_file():
        raise UsageError(f"--distill.alignment: no alignment weights at {path}; run `mmkd align --store STORE "
                         f"--student STAGE1_RUN` "
                         f"first, or use --distill.target_space adaptor|relational which need none")
    meta = json.loads(meta_path.read_text())
    if store is not None:
        problems = []
        for t, d in meta["teacher_dims"].items():
            if t not in store.teachers:
                problems.append(f"teacher {t!r} of the alignment is not in the store")
            elif store.embed_dim(t) != d:
                problems.append(f"teacher {t!r}: store dim {store.embed_dim(t)} != alignment dim {d}")
            else:
                fp = store.manifest["teachers"][store.teachers.index(t)].get("fingerprint")
                if meta.get("store_fingerprints", {}).get(t) != fp:
                    problems.append(f"teacher {t!r}: the store's features changed since the alignment was trained")
        if problems:
            raise UsageError("the alignment does not match the feature store: " + "; ".join(problems)
                             + f". Rerun `mmkd align --store {store.path}`")
    model = AlignmentAE(meta["teacher_dims"], meta["latent_dim"])
    model.load_state_dict(load_file(str(path)))
    return model.eval()
