#!/usr/bin/env bash
# The GPU checks in one script, for a machine with one CUDA card:
#   bench     bench_gpu.py --profile: throughput and MFU of stage 1 and stage 2 with the paper's
#             student (ViT-B/16 + BERT-base, bf16, fused AdamW, SDPA), captions padded to the
#             longest, and where the step time goes;
#   full      the same with the paper's full 256-token context (the text-padding saving on a GPU);
#   extract   bench_gpu.py --stage extract (gpu_extract.py): images/s of each of the nine teachers at real size (published formats,
#             random weights) in bf16 autocast, all nine together, and bf16 vs fp32 cosine per teacher;
#   demo      the quick demo end to end on CUDA (extract, align, both stages, every evaluation);
#   align     `mmkd align --device cuda` against the CPU (tests/test_align.py -k gpu: the same weights to
#             float tolerance);
#   compile   bench_gpu.py --compile, stage 1 (torch.compile; the longest warm-up, so it runs last).
# Each part has its own time limit, so one slow part does not hide the others.
#
# Usage: bash bench/gpu_checks.sh [LOG_DIR [PART...]]   (default runs/gpu_checks, every part;
#        PYTHON picks the interpreter)
# The figures go into docs/PERFORMANCE.md with the card's name (first line of gpu.txt).
set -u
LOG=${1:-runs/gpu_checks}
shift $(($# > 0 ? 1 : 0))
PARTS=${*:-bench extract full demo align compile}
PY=${PYTHON:-python3}
mkdir -p "$LOG"
export PYTHONUNBUFFERED=1

part() {  # part NAME SECONDS COMMAND...: run with a limit, log to LOG/NAME.txt, report the time taken
    local name=$1 limit=$2
    shift 2
    local start=$SECONDS
    echo "=== $name (limit ${limit} s): $*"
    timeout "$limit" "$@" > "$LOG/$name.txt" 2>&1
    local rc=$?
    grep -E "^(RATIO|FIGURE|stage[12]:|student:|text attention|  parts|  device busy|overall|mmkd demo|report:|yes|NO|all [0-9]+ teachers)" \
        "$LOG/$name.txt" || tail -n 20 "$LOG/$name.txt"
    echo "=== $name: exit $rc after $((SECONDS - start)) s"
}

{
    nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv,noheader
    "$PY" -c "import torch, transformers, open_clip; print('torch', torch.__version__, 'cuda', torch.version.cuda, \
'| transformers', transformers.__version__, '| open_clip', open_clip.__version__, '|', torch.cuda.get_device_name(0))"
} 2>&1 | tee "$LOG/gpu.txt"

for p in $PARTS; do
    case $p in
        bench) part bench_gpu 200 "$PY" bench/bench_gpu.py --profile ;;
        extract) part bench_gpu_extract 300 "$PY" bench/bench_gpu.py --stage extract ;;
        full) part bench_gpu_full_context 130 "$PY" bench/bench_gpu.py --full-context ;;
        demo) part demo_quick 240 "$PY" -m mmkd demo --quick --out "${DEMO_OUT:-/tmp/mmkd-gpu-demo}" ;;
        align) part align_gpu 120 "$PY" -m pytest -q -p no:cacheprovider tests/test_align.py -k gpu -rs ;;
        compile) part bench_gpu_compile 300 "$PY" bench/bench_gpu.py --compile --stage 1 --steps 10 ;;
        *) echo "unknown part $p (bench, extract, full, demo, align, compile)"; exit 2 ;;
    esac
done
