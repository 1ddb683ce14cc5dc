"""Shared helpers of the benchmarks: data makers, timing, memory, machine facts.

Not a benchmark itself (`run_all.py` runs `bench_*.py` only). Every benchmark measures its
baseline in the same process and run, so the ratios it prints compare like with like even
on a noisy shared machine; absolute figures move with the load of the machine.
"""

from __future__ import annotations

import csv
import io
import json
import os
import platform
import resource
import statistics
import tarfile
import time
from pathlib import Path
from typing import Callable

import numpy as np

REPO = Path(__file__).resolve().parents[1]
REFERENCE_META = REPO / "tests" / "data" / "mmkd-reference" / "MMKDCLIP_DATA" / "meta.jsonl"

# Words of biomedical figure captions (PubMed Central style), for synthetic captions.
CAPTION_WORDS = (
    "axial coronal sagittal contrast enhanced computed tomography ct magnetic resonance imaging mri t1 t2 weighted "
    "flair diffusion image shows demonstrates reveals a an the of in with and without left right bilateral lower "
    "upper lobe lesion mass nodule opacity consolidation effusion pleural pericardial hepatic renal splenic "
    "pancreatic cyst tumor tumour carcinoma adenocarcinoma metastasis metastatic lymph node lymphadenopathy "
    "hematoxylin eosin h&e staining stained section tissue biopsy specimen magnification x100 x200 x400 scale bar "
    "arrow arrows arrowhead asterisk indicates showing fundus photograph retina optic disc macula oct chest "
    "radiograph x-ray anteroposterior posteroanterior view ultrasound hypoechoic hyperechoic doppler flow "
    "endoscopy colonoscopy mucosa ulcer polyp inflammation immunohistochemistry positive negative expression cells "
    "cell nuclei cytoplasm membrane fibrosis necrosis hemorrhage edema enhancement heterogeneous homogeneous "
    "well-defined ill-defined margins measuring cm mm diameter patient year-old male female case figure panel "
    "(a) (b) (c) (d) after before treatment follow-up months weeks days post-operative pre-operative scan pet "
    "fdg uptake suv hypermetabolic segment artery vein aneurysm stenosis occlusion thrombus brain cerebral "
    "cortex white matter ventricle spinal cord vertebral fracture bone joint knee hip shoulder wrist skin "
    "dermoscopy melanoma nevus blood smear leukocyte erythrocyte platelet neutrophil lymphocyte monocyte"
).split()


# ---- timing ----------------------------------------------------------------------------------
def median(values: list[float]) -> float:
    return float(statistics.median(values))


def timed(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def steady_rate(run_dir: Path, batch_size: int, skip_steps: int) -> float:
    """Samples/s of a finished `fit` run between its first logged step >= skip_steps and its last one.

    `metrics.jsonl` holds the cumulative samples/s at each logged step k; the elapsed time at k is
    k * batch / rate_k, so the rate between two logged steps leaves out start-up and the final save.
    """
    lines = [json.loads(x) for x in (Path(run_dir) / "metrics.jsonl").read_text().splitlines() if x.strip()]
    first = next(r for r in lines if r["step"] >= skip_steps)
    last = lines[-1]
    t_first = first["step"] * batch_size / first["samples_per_s"]
    t_last = last["step"] * batch_size / last["samples_per_s"]
    return (last["step"] - first["step"]) * batch_size / (t_last - t_first)


def window_seconds(run_dir: Path, batch_size: int, skip_steps: int) -> list[float]:
    """Seconds of each 5-step window of a finished `fit` run logged every 5 steps, after `skip_steps`
    (from metrics.jsonl's cumulative samples/s at each logged step k: the elapsed time at k is k * batch / rate_k)."""
    lines = [json.loads(x) for x in (Path(run_dir) / "metrics.jsonl").read_text().splitlines() if x.strip()]
    times = [(r["step"], r["step"] * batch_size / r["samples_per_s"]) for r in lines if r["step"] >= skip_steps]
    return [(t1 - t0) / (s1 - s0) * 5 for (s0, t0), (s1, t1) in zip(times, times[1:])]


def fastest_window(step_seconds: list[float], size: int = 5) -> float:
    """Seconds of the fastest run of `size` consecutive steps (disjoint windows, as `fit` logs them).

    Other work on a shared machine can only add time to a window, so the fastest one is the closest
    to the step's own cost (the reasoning behind `timeit`'s advice to read the minimum), while a mean
    or median over every step moves with the load.
    """
    windows = [sum(step_seconds[i:i + size]) for i in range(0, len(step_seconds) - size + 1, size)]
    if not windows:
        raise ValueError(f"fastest_window: {len(step_seconds)} steps, fewer than one window of {size}")
    return min(windows)


# ---- memory ----------------------------------------------------------------------------------
def rss_mib() -> dict[str, float]:
    """Resident memory of this process now (VmRSS, RssAnon, RssFile) and its peak (VmHWM), in MiB.

    RssFile counts pages of memory-mapped files (the page cache a memmap touches); the kernel can
    drop them at any time, so RssAnon is what the process really holds.
    """
    out = {}
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            key, _, rest = line.partition(":")
            if key in ("VmRSS", "RssAnon", "RssFile", "VmHWM"):
                out[key] = int(rest.split()[0]) / 1024
    except OSError:  # not Linux: the peak from getrusage only
        out["VmHWM"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return out


# ---- machine ---------------------------------------------------------------------------------
def machine_info() -> dict[str, str]:
    import torch

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    info = {"cpu": cpu, "cores": str(os.cpu_count()), "torch": torch.__version__,
            "threads": str(torch.get_num_threads()), "python": platform.python_version(),
            "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none"}
    return info


# ---- captions --------------------------------------------------------------------------------
def reference_captions() -> list[str]:
    """The captions of the paper authors' 8 reference samples (real PubMed Central captions)."""
    if not REFERENCE_META.is_file():
        return []
    return [json.loads(x)["txt"] for x in REFERENCE_META.read_text().splitlines() if x.strip()]


def synthetic_captions(n: int, rng: np.random.Generator, min_words: int = 10, max_words: int = 60) -> list[str]:
    """n captions of uniformly min..max words drawn from biomedical caption words."""
    lengths = rng.integers(min_words, max_words + 1, n)
    return [" ".join(rng.choice(CAPTION_WORDS, k)) + "." for k in lengths]


# ---- image-text data -------------------------------------------------------------------------
def _images(n: int, size: int, rng: np.random.Generator) -> list[np.ndarray]:
    """n small RGB images: 16 random bases with a moving square, cheap to make and all different."""
    bases = rng.integers(0, 255, (16, size, size, 3), dtype=np.uint8)
    out = []
    for i in range(n):
        img = bases[i % 16].copy()
        a = (i * 7) % max(1, size // 2)
        img[a:a + size // 4, a:a + size // 4] = (i * 37) % 255
        out.append(img)
    return out


def _encode(img: np.ndarray, ext: str) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format="JPEG" if ext == "jpg" else "PNG", **({"quality": 90} if ext == "jpg" else {}))
    return buf.getvalue()


def write_pairs_csv(root: Path, n: int, image_size: int = 32, ext: str = "png", seed: int = 0,
                    captions: list[str] | None = None) -> Path:
    """n image files under root/img plus root/pairs.csv (image, caption, sample_id); returns the CSV."""
    rng = np.random.default_rng(seed)
    captions = captions or synthetic_captions(n, rng, 5, 20)
    (root / "img").mkdir(parents=True, exist_ok=True)
    rows = []
    for i, img in enumerate(_images(n, image_size, rng)):
        name = f"img/{i:07d}.{ext}"
        (root / name).write_bytes(_encode(img, ext))
        rows.append({"image": name, "caption": captions[i % len(captions)], "sample_id": f"s{i:07d}"})
    path = root / "pairs.csv"
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["image", "caption", "sample_id"])
        w.writeheader()
        w.writerows(rows)
    return path


def write_shards(root: Path, n: int, image_size: int = 32, ext: str = "jpg", per_shard: int = 1000,
                 seed: int = 0, captions: list[str] | None = None) -> Path:
    """webdataset tar shards (KEY.jpg + KEY.txt) under root; returns the folder."""
    rng = np.random.default_rng(seed)
    captions = captions or synthetic_captions(n, rng, 5, 20)
    root.mkdir(parents=True, exist_ok=True)
    images = _images(n, image_size, rng)
    for s in range(0, n, per_shard):
        with tarfile.open(root / f"shard-{s // per_shard:05d}.tar", "w") as tf:
            for i in range(s, min(n, s + per_shard)):
                for member, data in ((f"{i:07d}.{ext}", _encode(images[i], ext)),
                                     (f"{i:07d}.txt", captions[i % len(captions)].encode())):
                    info = tarfile.TarInfo(member)
                    info.size = len(data)
                    tf.addfile(info, io.BytesIO(data))
    return root


# ---- models ----------------------------------------------------------------------------------
def build_bert_folder(folder: Path, words: list[str], hidden: int = 256, layers: int = 4, heads: int = 4,
                      intermediate: int = 1024, max_positions: int = 512, vocab_size: int = 0) -> Path:
    """A randomly initialised BERT with a WordPiece vocabulary, saved as a local HF model folder.

    The vocabulary holds `words`, single characters and `##` characters, padded with unused
    tokens up to `vocab_size` (BiomedBERT has 30522) so the embedding table has its real size.
    """
    import torch
    from transformers import BertConfig, BertModel, BertTokenizerFast

    folder.mkdir(parents=True, exist_ok=True)
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    seen = set(vocab)
    chars = "abcdefghijklmnopqrstuvwxyz0123456789.,;:()&-/%'"
    for tok in [w.lower() for w in words] + list(chars) + [f"##{c}" for c in chars]:
        if tok not in seen:
            seen.add(tok)
            vocab.append(tok)
    vocab += [f"[unused{i}]" for i in range(max(0, vocab_size - len(vocab)))]
    (folder / "vocab.txt").write_text("\n".join(vocab) + "\n")
    torch.manual_seed(0)
    config = BertConfig(vocab_size=len(vocab), hidden_size=hidden, num_hidden_layers=layers,
                        num_attention_heads=heads, intermediate_size=intermediate,
                        max_position_embeddings=max_positions)
    BertModel(config).save_pretrained(folder)
    BertTokenizerFast.from_pretrained(str(folder)).save_pretrained(folder)
    return folder


def caption_vocabulary(captions: list[str]) -> list[str]:
    """Whole words (split at spaces and punctuation as BERT's pre-tokenizer does) of some captions."""
    import re

    words: list[str] = []
    for c in captions:
        words += re.findall(r"[a-z0-9]+", c.lower())
    return sorted(set(words))


def set_threads() -> int:
    """Intra-op threads for a CPU benchmark: MMKD_BENCH_THREADS, default 1.

    One thread by default because on a small shared machine OpenMP worker threads that spin
    while other processes hold the cores make step times swing by 5-10x; ratios measured with
    one thread are stable. Set MMKD_BENCH_THREADS=0 to keep torch's own choice.
    """
    import torch

    n = int(os.environ.get("MMKD_BENCH_THREADS", "1"))
    if n > 0 and not torch.cuda.is_available():
        torch.set_num_threads(n)
    return torch.get_num_threads()


def print_header(title: str) -> None:
    info = machine_info()
    print(f"# {title}")
    print(f"# machine: {info['cpu']}, {info['cores']} cores, torch {info['torch']} ({info['threads']} threads), "
          f"gpu {info['gpu']}")


def transformer_flops(tokens: int, width: int, layers: int, mlp_ratio: float = 4.0) -> float:
    """Forward FLOPs of one sequence through a pre-/post-norm transformer encoder (2 FLOPs per MAC).

    Per layer and token: QKV and output projections 8 w^2, MLP 4 * mlp_ratio * w^2, attention
    scores and weighted sum 4 * tokens * w. Embeddings, norms and heads are left out (< 2 %).
    """
    per_layer = tokens * (8 * width ** 2 + 4 * mlp_ratio * width ** 2) + 4 * tokens ** 2 * width
    return float(layers * per_layer)


def steady_wait_fraction(run_dir: Path, batch_size: int, skip_steps: int) -> float:
    """Share of wall time spent waiting for data between the first logged step >= skip_steps and the last."""
    lines = [json.loads(x) for x in (Path(run_dir) / "metrics.jsonl").read_text().splitlines() if x.strip()]
    first = next(r for r in lines if r["step"] >= skip_steps)
    last = lines[-1]
    elapsed = [r["step"] * batch_size / r["samples_per_s"] for r in (first, last)]
    waited = [r["data_wait_fraction"] * e for r, e in zip((first, last), elapsed)]
    return (waited[1] - waited[0]) / (elapsed[1] - elapsed[0])
