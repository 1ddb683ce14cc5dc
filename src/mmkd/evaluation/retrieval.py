"""Cross-modal retrieval: image→text and text→image recall@1/5/10 on image-caption tables.

Legend: I unique images, M captions (M ≥ I when images have several captions), D embedding dim.

An image query is correct at k when any of its captions ranks in the top k; a caption query
when its own image ranks in the top k; a tie with a wrong candidate is never a free hit
(metrics.retrieval_hits). CIs resample images, each with all of its captions.
"""

from __future__ import annotations

KS = (1, 5, 10)


def run(model, entry, *, seed: int, cache, num_bootstrap: int) -> dict:
    from mmkd.evaluation.datasets import load_captions
    from mmkd.evaluation.metrics import retrieval_ci, retrieval_metrics

    split, data = load_captions(entry)
    image_feats_ID = cache.image_features(model, entry.name, split, data.images)
    text_feats_MD = cache.text_features(model, entry.name, split, data.captions)
    sim_IM = (image_feats_ID @ text_feats_MD.T).numpy()
    return {
        "metrics": retrieval_metrics(sim_IM, data.caption_image, KS),
        "ci": retrieval_ci(sim_IM, data.caption_image, KS, num_bootstrap, seed),
        "split_sizes": {split: len(data.images)},
        "details": {"split": split, "num_images": len(data.images), "num_captions": len(data.captions),
                    "captions_per_image": len(data.captions) / max(1, len(data.images))},
    }
