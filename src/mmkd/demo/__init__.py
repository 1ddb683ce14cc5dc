"""The built-in end-to-end run (`mmkd demo`): it uses the library as a user would, and nothing in
the library imports it.

recipe    what each model of the demo sees (modalities, fractions, steps, stage-2 variants)
data      the demo's corpora (real-mini + synthetic) and the splits each model sees
teachers  the expert teachers, trained and saved in open_clip and transformers formats
steps     one function per pipeline step (pretrain, extract, align, distill, eval, report)
jobs      the step runner: reuse of finished steps, one log per step
table     the results table and its verdict
cli       the `mmkd demo` command
"""
