"""The teacher alignment autoencoder (MMKD-CLIP) and its training on a feature store.

Legend: B rows, D_t a teacher's dim, E the latent (= student embedding) dim.

    z = proj_t(x_BD);  encode(t, x_BD, modality) = z + mlp_modality(z)   -> [B, E]  (the distillation target)
    decode(t, z_BE)           = dec_t(z_BE)                    -> [B, D_t]

One linear projection per teacher shared by its image and text features, one MLP per
modality shared by all teachers, one linear decoder per teacher, trained by reconstruction
MSE; an optional cross-teacher InfoNCE pulls different teachers' latents of the same sample
together (the paper defines it but leaves it off). The authors' own autoencoder (`--arch authors`)
is mmkd.models.alignment_authors.

Every run reports, per teacher, the norms of its projected features: with unnormalised targets
(distill-paper.yaml) their scale sets the size of both FD and ICL, and the authors' released
targets have norms 1.09-2.58 (`TARGET_NORM_RANGE`).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from mmkd.models.projections import TeacherProjections

from mmkd.errors import UsageError

WEIGHTS_FILE = "alignment.safetensors"
META_FILE = "alignment.json"
ARCHS = ("mmkd", "authors")
# Norms of the authors' released projected features (clips_project_output.pt of their demo data,
# wangshansong1/MMKD-CLIP @ 127544c, MMKDCLIP_DATA/features): min 1.09, max 2.58 over teachers and modalities.
TARGET_NORM_RANGE = (1.09, 2.58)
FAR_OUTSIDE = 2.0  # a mean norm below range / 2 or above range x 2 is warned about


class AlignmentAE(TeacherProjections, nn.Module):
    arch = "mmkd"

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

    def _after_projection(self, z: dict[str, torch.Tensor], modality: str) -> dict[str, torch.Tensor]:
        """`encode` after the projection for several teachers: the modality MLP once over all their rows."""
        names = list(z)
        if not names:
            return {}
        z_all = torch.cat([z[t] for t in names])
        out = z_all + self.mlp[modality](z_all)
        return dict(zip(names, out.split([z[t].shape[0] for t in names])))

    def decode(self, teacher: str, z_BE: torch.Tensor) -> torch.Tensor:
        return self.dec[teacher](z_BE)

    def reconstruct(self, teacher: str, x_BD: torch.Tensor, modality: str) -> torch.Tensor:
        return self.decode(teacher, self.encode(teacher, x_BD, modality))

    def options(self) -> dict[str, Any]:
        return {}


def build_alignment(arch: str, teacher_dims: dict[str, int], latent_dim: int, **options) -> nn.Module:
    """mmkd's autoencoder (`AlignmentAE`) or the authors' (`alignment_authors.AuthorsAlignmentAE`)."""
    if arch == "authors":
        from mmkd.models.alignment_authors import AuthorsAlignmentAE

        return AuthorsAlignmentAE(teacher_dims, latent_dim, **options)
    if arch != "mmkd":
        raise UsageError(f"--arch: {arch!r} is not an alignment architecture; choose one of {', '.join(ARCHS)}")
    return AlignmentAE(teacher_dims, latent_dim)


def alignment_paths(store_path: str | Path, alignment: str = "") -> tuple[Path, Path]:
    weights = Path(alignment) if alignment else Path(store_path) / WEIGHTS_FILE
    return weights, weights.with_suffix(".json")


def train_alignment(store, latent_dim: int, *, epochs: int = 10, steps: int = 0, batch_size: int = 256,
                    lr: float = 1e-3, lambda_nce: float = 0.0, temperature: float = 0.07, seed: int = 0,
                    teachers: list[str] | None = None, progress: bool = True,
                    arch: str = "mmkd", device: str | torch.device = "cpu", state_dir: Path | None = None,
                    save_every: int = 0, stop=None) -> tuple[nn.Module, dict[str, Any]]:
    """Fit the autoencoder on a store's available rows; returns the model and its per-teacher report.

    Training passes over every row with an available teacher `epochs` times (a seeded order per
    pass), unless `steps` > 0 fixes the number of batches. A teacher available for no row is not
    trained (its projection stays at its initial values; it teaches no sample in stage 2 either)
    and is reported with `rows_available` 0. `arch`: mmkd (per-teacher means summed) or authors
    (mmkd.models.alignment_authors: noise, dropout, every item weighed equally). The model trains on
    `device` (batches are read from the store on the host and copied there); it is returned on the CPU.

    With `state_dir` (`mmkd.models.alignment_state`) the training state is written there every
    `save_every` steps and when `stop.requested` turns true (a `mmkd.utils.signals.StopFlag`; then
    `AlignmentStopped` is raised), and a state found there is continued: the result equals an
    uninterrupted run's.
    """
    teachers = teachers or list(store.teachers)
    dims = {t: store.embed_dim(t) for t in teachers}
    torch.manual_seed(seed)
    model = build_alignment(arch, dims, latent_dim).to(device)
    model.train()
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
    device = torch.device(device)
    step, offset = 0, 0
    settings = {"arch": arch, "latent_dim": latent_dim, "teachers": dims, "steps": total, "batch_size": batch,
                "lr": lr, "lambda_nce": lambda_nce, "temperature": temperature, "seed": seed,
                "store": {"num_samples": len(store), "fingerprints": store_fingerprints(store, teachers)}}
    if state_dir is not None:
        from mmkd.models.alignment_state import AlignmentStopped, load_state, save_state

        saved = load_state(state_dir, model, opt, settings)
        if saved is not None:
            step, offset = saved["step"], saved["offset"]
            rng.bit_generator.state = saved["pass_rng"]
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=total, initial=step, desc="align", unit="step", dynamic_ncols=True)
    while step < total:
        pass_rng = rng.bit_generator.state  # the pass's order is drawn again from it on a resume
        order = rng.permutation(usable)  # one pass over every usable row
        for start in range(offset, order.size, batch):
            if step == total:
                break
            loss = _reconstruction_step(model, store, np.sort(order[start:start + batch]), teachers, lambda_nce,
                                        temperature, device)
            opt.zero_grad()
            loss.backward()
            opt.step()
            step += 1
            if bar is not None:
                bar.update(1)
                bar.set_postfix(loss=f"{loss.item():.4f}")
            stopping = stop is not None and stop.requested
            if state_dir is not None and step < total and (stopping or (save_every and step % save_every == 0)):
                save_state(state_dir, model, opt, {"step": step, "pass_rng": pass_rng, "offset": start + batch},
                           settings)
                if stopping:
                    if bar is not None:
                        bar.close()
                    raise AlignmentStopped(step, total, stop.name, state_dir)
        offset = 0
    if bar is not None:
        bar.close()
    report = evaluate_alignment(model, store, teachers, seed=seed, device=device)
    report["steps"], report["epochs"] = total, round(total / steps_per_epoch, 3)
    report["device"] = str(device)
    return model.cpu(), report


def _reconstruction_step(model: nn.Module, store, idx: np.ndarray, teachers: list[str], lambda_nce: float,
                         temperature: float, device: str | torch.device = "cpu") -> torch.Tensor:
    """Reconstruction MSE of the batch's available (teacher, modality) features (+ the cross-teacher NCE).

    mmkd: the mean over a teacher's available rows, summed over teachers and modalities. authors: the
    mean over every available (sample, teacher, modality) item."""
    batch = store.rows(idx, teachers=teachers)
    mask = torch.from_numpy(batch["available"]).to(device)
    loss = torch.zeros((), device=device)
    latents: dict[str, dict[str, torch.Tensor]] = {}
    items = []
    for j, t in enumerate(teachers):
        rows = mask[:, j]
        if rows.sum() == 0:
            continue
        for modality in ("image", "text"):
            x = torch.from_numpy(batch[modality][t].astype(np.float32)).to(device)
            if model.arch == "authors":
                items.append((t, modality, x[rows]))
            else:
                loss = loss + ((model.reconstruct(t, x, modality) - x) ** 2).mean(dim=-1)[rows].mean()
            if lambda_nce > 0:
                latents.setdefault(modality, {})[t] = model.encode(t, x, modality)
    if model.arch == "authors":
        from mmkd.models.alignment_authors import authors_reconstruction_loss

        loss = authors_reconstruction_loss(model, items)
    if lambda_nce > 0:
        loss = loss + lambda_nce * _cross_teacher_nce(latents, mask, teachers, temperature)
    return loss


def _cross_teacher_nce(latents, mask, teachers, temperature) -> torch.Tensor:
    total, count = torch.zeros((), device=mask.device), 0
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
                labels = torch.arange(za.shape[0], device=za.device)
                total = total + (F.cross_entropy(logits, labels) + F.cross_entropy(logits.T, labels)) / 2
                count += 1
    return total / max(count, 1)


@torch.no_grad()
def evaluate_alignment(model: nn.Module, store, teachers: list[str], max_rows: int = 4096,
                       seed: int = 0, device: str | torch.device = "cpu") -> dict[str, Any]:
    """Per teacher: its available rows in the whole store, the relative reconstruction error on them
    (None when it has none) and the norms {min, mean, max} of its projected image and text features
    (the unnormalised targets of distill-paper.yaml); per pair: mean cosine of latents of the same
    sample. Measured on up to `max_rows` rows that have an available teacher (seeded draw), the
    model in eval mode (no noise, no dropout)."""
    model.eval()
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
        errs, norms = [], {}
        for modality in ("image", "text"):
            x = torch.from_numpy(batch[modality][t].astype(np.float32)).to(device)
            z = model.encode(t, x, modality)
            recon = model.reconstruct(t, x, modality)
            if rows.any():
                on = torch.from_numpy(rows).to(device)
                rel = ((recon - x) ** 2).sum(-1) / (x ** 2).sum(-1).clamp_min(1e-12)
                errs.append(float(rel[on].mean()))
                norm = model.proj[t](x[on]).norm(dim=-1)
                norms[modality] = {"min": float(norm.min()), "mean": float(norm.mean()), "max": float(norm.max())}
            latents[(t, modality)] = F.normalize(z, dim=-1)
        report["teachers"][t] = {"relative_reconstruction_error": float(np.mean(errs)) if errs else None,
                                 "rows_available": int(avail[:, j].sum()), "target_norm": norms or None}
    for a in range(len(teachers)):
        for b in range(a + 1, len(teachers)):
            both = torch.from_numpy(mask[:, a] & mask[:, b]).to(device)
            if both.sum() == 0:
                continue
            cos = [float((latents[(teachers[a], m)][both] * latents[(teachers[b], m)][both]).sum(-1).mean())
                   for m in ("image", "text")]
            report["pair_cosine"][f"{teachers[a]}|{teachers[b]}"] = float(np.mean(cos))
    values = list(report["pair_cosine"].values())
    report["mean_pair_cosine"] = float(np.mean(values)) if values else None
    report["arch"] = model.arch
    return report


def norm_warnings(report: dict[str, Any]) -> list[str]:
    """One line per teacher whose mean target norm (image or text) is far outside TARGET_NORM_RANGE."""
    lo, hi = TARGET_NORM_RANGE
    out = []
    for t, r in report["teachers"].items():
        for modality, n in (r.get("target_norm") or {}).items():
            if n["mean"] < lo / FAR_OUTSIDE or n["mean"] > hi * FAR_OUTSIDE:
                out.append(f"teacher {t}: the {modality} targets have mean norm {n['mean']:.3g} (min {n['min']:.3g}, "
                           f"max {n['max']:.3g}), far outside the {lo}-{hi} of the authors' released targets that "
                           f"distill-paper.yaml's weights (lambda_fd 50, fixed ICL scale) assume with unnormalised "
                           f"targets; use --distill.normalize_targets true, or weigh FD again")
    return out


def store_fingerprints(store, teachers: list[str]) -> dict[str, str | None]:
    """Each teacher's fingerprint in the store's manifest: a store whose features changed has other ones."""
    return {t: store.manifest["teachers"][store.teachers.index(t)].get("fingerprint") for t in teachers}


def save_alignment(model: nn.Module, path: Path, store, report: dict[str, Any]) -> None:
    from mmkd.utils.io import atomic_save_safetensors, atomic_write_json

    atomic_save_safetensors(path, model.state_dict())
    atomic_write_json(path.with_suffix(".json"), {
        "teacher_dims": model.teacher_dims, "latent_dim": model.latent_dim, "arch": model.arch,
        "options": model.options(),
        "store_fingerprints": store_fingerprints(store, list(model.teacher_dims)),
        "report": report,
    })


def load_alignment(path: Path, store=None) -> nn.Module:
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
                if meta.get("store_fingerprints", {}).get(t) != store_fingerprints(store, [t])[t]:
                    problems.append(f"teacher {t!r}: the store's features changed since the alignment was trained")
        if problems:
            raise UsageError("the alignment does not match the feature store: " + "; ".join(problems)
                             + f". Rerun `mmkd align --store {store.path}`")
    model = build_alignment(meta.get("arch", "mmkd"), meta["teacher_dims"], meta["latent_dim"],
                            **meta.get("options", {}))
    model.load_state_dict(load_file(str(path)))
    return model.eval()
