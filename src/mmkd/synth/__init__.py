"""Built-in corpora for the demo and the tests: procedural biomedical images with captions,
evaluation sets for all six task types, and the shipped real images (`mmkd/assets/real_mini`)
as a captioned corpus in the same layout.

findings      the modalities, their findings and the `Planted` record of one image
draw          drawing primitives; radiology, pathology: the renderers of each modality
render        one image at a time, deterministic in its key
text, vqa     captions, zero-shot templates and VQA questions from what was planted
slides        whole-slide cohorts (MIL diagnosis and survival)
corpus        `generate`: the whole synthetic corpus on disk
real_corpus   the real-mini images as a corpus in the same layout
splits        which pairs each model of the demo sees
io            file writers (PNG, CSV, JSONL, shards, catalogs)
cli           the `mmkd synth` command
"""
