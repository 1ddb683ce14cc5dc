"""`mmkd synth`: write the synthetic multi-modality corpus (training pairs + evaluation sets + catalog)."""

from __future__ import annotations

import argparse

DESCRIPTION = """\
Write a synthetic biomedical corpus: procedurally drawn chest CT, brain MRI, histopathology and
dermoscopy images (four classes each: normal and three findings that differ in shape, number,
texture, size and position), captioned from what was drawn.

Output (see `python -c "import mmkd.synth.corpus as s; print(s.__doc__)"` for the full layout):
  DIR/train/pairs.csv           training pairs: image, caption, sample_id, modality, label
  DIR/train/shards/*.tar        the same pairs as webdataset shards
  DIR/eval/...                  held-out sets for zero-shot, linear probe, retrieval, VQA, slides
  DIR/catalog.yaml              the dataset catalog for `mmkd eval --datasets DIR/catalog.yaml`

The same --seed and sizes give byte-identical files; rerunning on a finished folder with the
same arguments reuses it.

With --real it writes the shipped real images instead (chest X-ray, breast ultrasound, fundus,
blood cells; see mmkd/assets/real_mini/README.md) as a captioned corpus in the same layout —
captions made from class names — with evaluation sets on the official test splits.

examples:
  mmkd synth --out data/synth
  mmkd synth --out data/real --real
  mmkd synth --out /tmp/synth-quick --quick            # a few hundred images, for tests
  mmkd synth --out data/synth64 --size 64 --train-per-class 1000
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", required=True, metavar="DIR",
                        help="folder to write the corpus into (new or empty, or a finished corpus to reuse)")
    parser.add_argument("--seed", type=int, default=0, help="random seed; everything is deterministic in it (default 0)")
    parser.add_argument("--size", type=int, default=32,
                        help="image side in pixels, 16 to 512 (default 32, what the tiny students use)")
    parser.add_argument("--train-per-class", type=int, default=None, metavar="N",
                        help="training pairs per class of each modality (default 300; 24 with --quick)")
    parser.add_argument("--quick", action="store_true",
                        help="a small corpus (a few hundred images) for tests and quick demos")
    parser.add_argument("--difficulty", type=float, default=None, metavar="D",
                        help="0 to 1: how faint the findings are and how noisy the images (default 0.25); "
                             "0 draws findings at full contrast, 1 at half contrast with three times the noise")
    parser.add_argument("--workers", type=int, default=None,
                        help="processes that draw images (default: up to 4 CPUs)")
    parser.add_argument("--real", action="store_true",
                        help="write the real-mini corpus (shipped real images, captions from class names) instead")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace a corpus in --out that was made with other arguments")
    parser.add_argument("--no-progress", action="store_true", help="do not show progress bars")


def run(args: argparse.Namespace) -> int:
    import sys

    from mmkd.synth.corpus import check_args, generate

    if args.real:
        from mmkd.synth.real_corpus import write_real_corpus

        check_args(args.size, args.train_per_class, args.seed, args.workers)
        if args.size != 32 or args.difficulty is not None:
            print("mmkd synth: warning: --size and --difficulty apply to synthetic images only; ignored with --real",
                  file=sys.stderr)
        corpus = write_real_corpus(args.out, seed=args.seed, quick=args.quick, max_train_per_class=args.train_per_class,
                                   overwrite=args.overwrite, progress=not args.no_progress)
        counts = corpus.manifest["counts"]
        print(f"real-mini corpus in {corpus.root}: {counts['train_pairs']} training pairs (captions made from class "
              f"names), {len(corpus.manifest['datasets'])} evaluation datasets")
        print(f"  training pairs: {corpus.pairs_csv}\n  evaluation catalog: {corpus.catalog}")
        return 0
    corpus = generate(args.out, seed=args.seed, size=args.size, train_per_class=args.train_per_class,
                      quick=args.quick, difficulty=args.difficulty, workers=args.workers, overwrite=args.overwrite,
                      progress=not args.no_progress)
    counts = corpus.manifest["counts"]
    print(f"synthetic corpus in {corpus.root}: {counts['train_pairs']} training pairs, {counts['images']} images, "
          f"{counts['slides']} slides")
    print(f"  training pairs: {corpus.pairs_csv}  (shards: {corpus.root / 'train' / 'shards'})")
    print(f"  evaluation catalog: {corpus.catalog}  ({len(counts['datasets'])} datasets)")
    return 0
