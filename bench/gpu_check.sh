#!/usr/bin/env bash
# The GPU figures of the standing GPU issue, in one call of at most 8 minutes on a machine the
# `device` tool lends; a summary printed last and in $OUT/summary.txt, each part's figures beside it
# in $OUT, every log and result JSON in $OUT/logs.tgz (the tool brings back at most 8 files from $OUT).
#     bash bench/gpu_wheels.sh                                  # here, first: .whl/ (~29 MB)
#     device run: command="bash bench/gpu_check.sh", carry=[".whl"], timeout_s=540
#     bash bench/gpu_check.sh --cpu-dry                         # here: the script itself, on the CPU
# Parts (PARTS picks some; each runs in its own time limit, cut to end by BUDGET_S, so that a slow one
# cannot eat the rest; a failed or timed-out part is reported and the next one runs):
#   pack     bench/pack_gpu.py: 8 LoRA runs packed, once per train.pack_product (grouped, batched, loop),
#            against the 8 one after another                               -> $OUT/pack.json
#   tier     `pytest -m gpu` (tests/gpu_tier.py: placement, out of memory, qlora, bf16, packs, goldens)
#                                                                          -> $OUT/gpu_tier.xml (junit)
#   mfu      bench/gpu.py compiled LoRA, kept-rows loss, bf16 adapters at 64k tokens a step (was 37.1%
#            MFU at 32k)                                                   -> $OUT/mfu.json
#   predict  bench/predict_gpu.py: predicted peak GPU memory (run/predict.py, cold) against the measured
#            one, for LoRA, DoRA, qlora, a bf16 base and a pack on a random-weight Qwen3-0.6B
#                                                                          -> $OUT/predict.txt
#   spread   bench/bf16_spread.py: how far bf16 moves the tier's runs from float32 on this GPU, the
#            figure its bounds are derived from                            -> $OUT/spread.json
#   pack_compile  bench/pack_gpu.py: the 8-run pack with train.compile=true (grouped products) against
#            the eager grouped pack, and its first step's compile time     -> summary; logs.tgz
# and, opt-in (measured before: bench/RESULTS.md §11):
#   compile_fp32  bench/gpu.py compiled LoRA, fp32 adapters under autocast at 32k tokens
#   adapters bench/gpu.py eager LoRA, kept-rows loss, bf16 vs fp32 adapters at 32k tokens
#   liger    bench/gpu.py eager LoRA, Liger Kernel's fused linear cross-entropy beside the kept-rows loss
#   gpu      bench/gpu.py eager: LoRA, DoRA and full, both LM-head losses: MFU
#   sweep    a 4-run sweep with runs_per_gpu=2: each result's GPU and peak GPU memory
#   qlora    lora vs qlora vs qlora8 runs of a random-weight Qwen3-0.6B (bench/gpu_model.py), and a
#            lora run with model.dtype=bfloat16: each result's memory record and loss curve
# PARTS="pack tier mfu predict spread pack_compile compile_fp32 adapters liger gpu sweep qlora" picks some, run in that order.
# --cpu-dry: every part of PARTS at smoke size on this machine's CPU with $PYTHON (tiny models, a step
# or two; the tier skips, saying why), into $OUT (default /tmp/gpu_check_dry): the same steps, limits,
# summary and files, so that the script is tested before a GPU call spends its minutes.
set -u
DRY=0
[ "${1:-}" = "--cpu-dry" ] && DRY=1
PY=${PYTHON:-python3}
if [ "$DRY" = 1 ]; then
    OUT=${OUT:-/tmp/gpu_check_dry}
else
    OUT=${OUT:-/tmp/gpu_check}
fi
LOG=${LOG:-/tmp/gpu_check_logs}  # the logs and results stores, packed into $OUT/logs.tgz at the end
BUDGET_S=${BUDGET_S:-450}  # every part ends by then (each step's limit is cut to fit): with the install and the packing, 8 minutes
PARTS=${PARTS:-"pack tier mfu predict spread pack_compile"}
rm -rf "$LOG"; mkdir -p "$OUT" "$LOG"
cd "$(dirname "$0")/.."
if [ "$DRY" = 0 ] && [ -d .whl ]; then
    $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
        > "$LOG/pip.txt" 2>&1 || { tail -5 "$LOG/pip.txt"; exit 1; }
    export PYTHONPATH=/tmp/site:$PWD/src:$PWD
else
    export PYTHONPATH=$PWD/src:$PWD${PYTHONPATH:+:$PYTHONPATH}
fi
export HF_HOME=${HF_HOME:-/tmp/hf} HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false PYTHONUNBUFFERED=1
{ date -u; nvidia-smi || echo "no nvidia-smi"
  $PY -c "import torch, transformers, peft, trl, datasets; print(torch.__version__, transformers.__version__, peft.__version__, trl.__version__, datasets.__version__, 'cuda', torch.cuda.is_available())"
  $PY -m pip list 2>/dev/null | grep -iE "^(torch|accelerate|tokenizers|huggingface|pyarrow|fsspec|numpy|pandas|regex|triton|bitsandbytes|pytest) "
  $PY -c "import lorasweep.run.lifecycle, lorasweep.sweep.grid; print('lorasweep imports')"; } > "$LOG/machine.txt" 2>&1
tail -3 "$LOG/machine.txt"
SUMMARY="$OUT/summary.txt"; : > "$SUMMARY"
[ "$DRY" = 1 ] && echo "== --cpu-dry: smoke sizes on the CPU; no figure here is a GPU's" | tee -a "$SUMMARY"
part() { case " $PARTS " in *" $1 "*) return 0;; esac; return 1; }
size() { if [ "$DRY" = 1 ]; then echo "$2"; else echo "$1"; fi; }  # size GPU_ARGS DRY_ARGS: the arguments for this mode
step() {  # step NAME SECONDS COMMAND...: run it with a time limit, its output to $LOG/NAME.txt
    local name=$1 limit=$2; shift 2
    local left=$((BUDGET_S - SECONDS - 15)) start=$SECONDS
    [ "$left" -lt "$limit" ] && limit=$left
    if [ "$limit" -lt 10 ]; then echo "== $name: skipped, out of time" | tee -a "$SUMMARY"; return 1; fi
    timeout -k 5 "$limit" "$@" > "$LOG/$name.txt" 2>&1
    local rc=$?
    local said="exit $rc"; [ "$rc" -eq 124 ] && said="TIMED OUT"
    echo "== $name: $said in $((SECONDS - start)) s (limit $limit s)" | tee -a "$SUMMARY"
    [ "$rc" -eq 0 ] || tail -4 "$LOG/$name.txt" | cut -c1-300 >> "$SUMMARY"
    return "$rc"
}
summarize() {  # each result in a results store: its status, GPU, memory record and train time
    $PY - "$1" >> "$SUMMARY" <<'PY'
import json, sys, pathlib
for f in sorted(pathlib.Path(sys.argv[1]).glob("*/result.json")):
    r = json.loads(f.read_text())
    print(f"  {r['slug']}: {r['status']} {r.get('reason', '')[:200]} on GPU {r['env'].get('cuda_visible_devices')} "
          f"({r['env'].get('device')}) | memory {r.get('memory')} | train {r.get('timing', {}).get('train_s')} s")
    curve = [(p["step"], p.get("train_loss"), p.get("loss")) for p in r.get("curve") or []]
    print(f"    curve (step, train loss, validation loss): {curve}")
PY
}
gpu_only() {  # a part that has no CPU smoke size: said, not run
    if [ "$DRY" = 1 ]; then echo "== $1: GPU only, not run in --cpu-dry" | tee -a "$SUMMARY"; return 1; fi
}

if part pack; then
    step pack 170 $PY bench/pack_gpu.py $(size "--steps 20 --batch 4 --seq 512" "--tiny --steps 1 --batch 1 --seq 8") \
        --no-processes --json "$OUT/pack.json"
    grep -sE "^(packed|sequential|tiny|Qwen3)" "$LOG/pack.txt" >> "$SUMMARY"
fi
if part tier; then
    step tier 200 $PY -m pytest -m gpu -q -rs -p no:cacheprovider --junitxml="$OUT/gpu_tier.xml" tests
    grep -sE "^(FAILED|ERROR|SKIPPED|[0-9]+ (passed|failed|skipped|deselected))|(passed|failed|skipped).* in [0-9.]+s" \
        "$LOG/tier.txt" | cut -c1-300 | tail -30 >> "$SUMMARY"
fi
if part mfu; then
    step mfu 150 $PY bench/gpu.py $(size "--compile --seq 2048 --tokens 65536 --steps 4 --warmup 2" \
        "--tiny --seq 16 --tokens 32 --steps 1 --warmup 1") --methods lora --loss kept --adapters bf16 --json "$OUT/mfu.json"
    grep -sE "^(measured|lora) " "$LOG/mfu.txt" >> "$SUMMARY"
fi
if part predict && gpu_only predict; then
    step model 60 $PY bench/gpu_model.py "$HF_HOME"
    step predict 180 $PY bench/predict_gpu.py "$LOG/predict"
    grep -sE "(predicted|median absolute error)" "$LOG/predict.txt" | tee "$OUT/predict.txt" >> "$SUMMARY"
fi
if part spread; then
    step spread 120 $PY bench/bf16_spread.py $(size "" "--parts golden --first 1") --json "$OUT/spread.json"
    grep -sE "^(bf16|largest)" "$LOG/spread.txt" >> "$SUMMARY"
fi
if part pack_compile; then
    step pack_compile 150 $PY bench/pack_gpu.py $(size "--steps 20 --batch 4 --seq 512" "--tiny --steps 1 --batch 1 --seq 8") \
        --products grouped-compiled,grouped --no-sequential --no-processes --json "$LOG/pack_compile.json"
    grep -sE "^(packed|grouped-compiled|tiny|Qwen3)" "$LOG/pack_compile.txt" >> "$SUMMARY"
fi
if part compile_fp32 && gpu_only compile_fp32; then
    step compile_fp32 150 $PY bench/gpu.py --compile --methods lora --loss kept --adapters fp32 \
        --seq 2048 --tokens 32768 --steps 4 --warmup 2 --json "$LOG/compile_fp32.json"
    grep -E "^lora " "$LOG/compile_fp32.txt" >> "$SUMMARY"
fi
if part adapters && gpu_only adapters; then
    step adapters 90 $PY bench/gpu.py --methods lora --loss kept --adapters bf16,fp32 \
        --seq 2048 --tokens 32768 --steps 4 --warmup 2 --json "$LOG/adapters.json"
    grep -E "^lora " "$LOG/adapters.txt" >> "$SUMMARY"
fi
if part liger && gpu_only liger; then
    step liger 90 $PY bench/gpu.py --methods lora --loss kept,liger --adapters bf16 \
        --seq 2048 --tokens 32768 --steps 4 --warmup 2 --json "$LOG/liger.json"
    grep -E "^(lora |\(--loss)" "$LOG/liger.txt" >> "$SUMMARY"
fi
if part gpu && gpu_only gpu; then
    step gpu 120 $PY bench/gpu.py --methods lora,dora,full --loss hf,kept --seq 2048 \
        --tokens 16384,32768 --steps 4 --warmup 2 --json "$LOG/gpu.json"
    grep -E "^(device|measured|lora|dora|full) " "$LOG/gpu.txt" >> "$SUMMARY"
fi
if part sweep && gpu_only sweep; then
    step sweep 70 $PY launch.py -m model=tiny-qwen3 task=wordnet_mcq lora.r=4,8 lora.proj=qkvo,qkvogud \
        train.max_steps=30 train.eval_steps=10 task.max_train=240 task.max_test=50 \
        hydra.launcher.runs_per_gpu=2 results_dir="$LOG/sweep" hydra.sweep.dir="$LOG/sweep_multirun"
    summarize "$LOG/sweep"
fi
if part qlora && gpu_only qlora; then
    step model 60 $PY bench/gpu_model.py "$HF_HOME"
    step qlora 120 $PY launch.py -m model=qwen3-0.6b task=wordnet_mcq method=lora,qlora,qlora8 \
        lora.proj=qkvogud lora.r=16 train.max_steps=20 train.eval_steps=5 task.max_train=160 task.max_test=50 \
        hydra.launcher.n_jobs=1 results_dir="$LOG/qlora" hydra.sweep.dir="$LOG/qlora_multirun"
    step bf16 60 $PY launch.py model=qwen3-0.6b task=wordnet_mcq method=lora model.dtype=bfloat16 \
        lora.proj=qkvogud lora.r=16 train.max_steps=20 train.eval_steps=5 task.max_train=160 task.max_test=50 \
        results_dir="$LOG/qlora"
    summarize "$LOG/qlora"
fi
tar czf "$OUT/logs.tgz" --exclude='*.safetensors' --exclude='*.bin' --exclude='*.pt' --exclude='*.pth' \
    -C "$(dirname "$LOG")" "$(basename "$LOG")"
echo "== total: $SECONDS s (budget $BUDGET_S s); in $OUT: $(cd "$OUT" && ls | tr '\n' ' ')" | tee -a "$SUMMARY"
cat "$SUMMARY"
