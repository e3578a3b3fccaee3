#!/usr/bin/env bash
# The GPU acceptance checks of issues 14 (packed sweeps) and 15 (GPU machines), in one call on a
# machine the `device` tool lends; a summary printed last and in $OUT/summary.txt, every log and
# result JSON in $OUT/logs.tgz (the tool brings back at most 8 files from $OUT).
#     bash bench/gpu_wheels.sh                                  # here, first: .whl/ (~29 MB)
#     device run: command="bash bench/gpu_check.sh", carry=[".whl"], timeout_s=600
# Parts (a failed part is reported and the next one runs; each is cut to end by BUDGET_S), in the
# order of what is still open after the H200 call of 2026-11-30 (bench/RESULTS.md §11):
#   pack     bench/pack_gpu.py: 8 LoRA runs packed (adapters in grouped products, batched ones, one by one)
#            vs one after another vs 8 processes
#   compile  bench/gpu.py compiled LoRA, kept-rows loss: bf16 adapters at 64k tokens a step (was
#            37.1% MFU at 32k), then fp32 adapters under autocast at 32k (model.dtype=bfloat16's way;
#            each compile took over 70 s there)
#   adapters bench/gpu.py eager LoRA, kept-rows loss, bf16 vs fp32 adapters at 32k tokens
#   liger    (opt-in: PARTS="... liger") bench/gpu.py eager LoRA, Liger Kernel's fused linear
#            cross-entropy beside the kept-rows loss at 32k tokens: the LM-head loss not yet timed
# and, measured on 2026-11-30 (PARTS names them to run them again):
#   gpu      bench/gpu.py eager: LoRA, DoRA and full on the Qwen3-0.6B architecture, bf16, r=16
#            qkvogud, both LM-head losses: MFU
#   sweep    a 4-run sweep with runs_per_gpu=2: each result's GPU and peak GPU memory
#   qlora    lora vs qlora vs qlora8 runs of a random-weight Qwen3-0.6B (bench/gpu_model.py), and a
#            lora run with model.dtype=bfloat16: each result's memory record and loss curve
# PARTS="pack compile adapters liger gpu sweep qlora" picks some, run in that order.
set -u
OUT=${OUT:-/tmp/gpu_check}
LOG=/tmp/gpu_check_logs  # the logs and results stores, packed into $OUT/logs.tgz at the end
BUDGET_S=${BUDGET_S:-570}  # every part ends by then (each step's limit is cut to fit), so the logs get packed
PARTS=${PARTS:-"pack compile adapters"}
mkdir -p "$OUT" "$LOG"
cd "$(dirname "$0")/.."
if [ -d .whl ]; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
        > "$LOG/pip.txt" 2>&1 || { tail -5 "$LOG/pip.txt"; exit 1; }
    export PYTHONPATH=/tmp/site:$PWD/src
else
    export PYTHONPATH=$PWD/src
fi
export HF_HOME=/tmp/hf HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false PYTHONUNBUFFERED=1
{ date -u; nvidia-smi; python3 -c "import torch, transformers, peft, trl, datasets; print(torch.__version__, transformers.__version__, peft.__version__, trl.__version__, datasets.__version__)"
  python3 -m pip list 2>/dev/null | grep -iE "^(torch|accelerate|tokenizers|huggingface|pyarrow|fsspec|numpy|pandas|regex|triton) "
  python3 -c "import lorasweep.run.lifecycle, lorasweep.sweep.grid; print('lorasweep imports')"; } > "$LOG/machine.txt" 2>&1
tail -3 "$LOG/machine.txt"
SUMMARY="$OUT/summary.txt"; : > "$SUMMARY"
part() { case " $PARTS " in *" $1 "*) return 0;; esac; return 1; }
step() {  # step NAME SECONDS COMMAND...: run it with a time limit, its output to $LOG/NAME.txt
    local name=$1 limit=$2; shift 2
    local left=$((BUDGET_S - SECONDS - 15)) start=$SECONDS
    [ "$left" -lt "$limit" ] && limit=$left
    if [ "$limit" -lt 10 ]; then echo "== $name: skipped, out of time" | tee -a "$SUMMARY"; return 1; fi
    timeout "$limit" "$@" > "$LOG/$name.txt" 2>&1
    local rc=$?
    echo "== $name: exit $rc in $((SECONDS - start)) s (limit $limit s)" | tee -a "$SUMMARY"
    [ "$rc" -eq 0 ] || tail -4 "$LOG/$name.txt" | cut -c1-300 >> "$SUMMARY"
}
summarize() {  # each result in a results store: its status, GPU, memory record and train time
    python3 - "$1" >> "$SUMMARY" <<'PY'
import json, sys, pathlib
for f in sorted(pathlib.Path(sys.argv[1]).glob("*/result.json")):
    r = json.loads(f.read_text())
    print(f"  {r['slug']}: {r['status']} {r.get('reason', '')[:200]} on GPU {r['env'].get('cuda_visible_devices')} "
          f"({r['env'].get('device')}) | memory {r.get('memory')} | train {r.get('timing', {}).get('train_s')} s")
    curve = [(p["step"], p.get("train_loss"), p.get("loss")) for p in r.get("curve") or []]
    print(f"    curve (step, train loss, validation loss): {curve}")
PY
}

part pack && step pack 130 python3 bench/pack_gpu.py --steps 20 --batch 4 --seq 512
part pack && tail -8 "$LOG/pack.txt" >> "$SUMMARY"
part compile && step compile 150 python3 bench/gpu.py --compile --methods lora --loss kept --adapters bf16 \
    --seq 2048 --tokens 65536 --steps 4 --warmup 2 --json "$LOG/compile.json"
part compile && grep -E "^(measured|lora) " "$LOG/compile.txt" >> "$SUMMARY"
part compile && step compile_fp32 150 python3 bench/gpu.py --compile --methods lora --loss kept --adapters fp32 \
    --seq 2048 --tokens 32768 --steps 4 --warmup 2 --json "$LOG/compile_fp32.json"
part compile && grep -E "^lora " "$LOG/compile_fp32.txt" >> "$SUMMARY"
part adapters && step adapters 90 python3 bench/gpu.py --methods lora --loss kept --adapters bf16,fp32 \
    --seq 2048 --tokens 32768 --steps 4 --warmup 2 --json "$LOG/adapters.json"
part adapters && grep -E "^lora " "$LOG/adapters.txt" >> "$SUMMARY"
part liger && step liger 90 python3 bench/gpu.py --methods lora --loss kept,liger --adapters bf16 \
    --seq 2048 --tokens 32768 --steps 4 --warmup 2 --json "$LOG/liger.json"
part liger && grep -E "^(lora |\(--loss)" "$LOG/liger.txt" >> "$SUMMARY"
part gpu && step gpu 120 python3 bench/gpu.py --methods lora,dora,full --loss hf,kept --seq 2048 \
    --tokens 16384,32768 --steps 4 --warmup 2 --json "$LOG/gpu.json"
part gpu && grep -E "^(device|measured|lora|dora|full) " "$LOG/gpu.txt" >> "$SUMMARY"
if part sweep; then
    step sweep 70 python3 launch.py -m model=tiny-qwen3 task=wordnet_mcq lora.r=4,8 lora.proj=qkvo,qkvogud \
        train.max_steps=30 train.eval_steps=10 task.max_train=240 task.max_test=50 \
        hydra.launcher.runs_per_gpu=2 results_dir="$LOG/sweep" hydra.sweep.dir="$LOG/sweep_multirun"
    summarize "$LOG/sweep"
fi
if part qlora; then
    step model 60 python3 bench/gpu_model.py "$HF_HOME"
    step qlora 120 python3 launch.py -m model=qwen3-0.6b task=wordnet_mcq method=lora,qlora,qlora8 \
        lora.proj=qkvogud lora.r=16 train.max_steps=20 train.eval_steps=5 task.max_train=160 task.max_test=50 \
        hydra.launcher.n_jobs=1 results_dir="$LOG/qlora" hydra.sweep.dir="$LOG/qlora_multirun"
    step bf16 60 python3 launch.py model=qwen3-0.6b task=wordnet_mcq method=lora model.dtype=bfloat16 \
        lora.proj=qkvogud lora.r=16 train.max_steps=20 train.eval_steps=5 task.max_train=160 task.max_test=50 \
        results_dir="$LOG/qlora"
    summarize "$LOG/qlora"
fi
tar czf "$OUT/logs.tgz" --exclude='*.safetensors' --exclude='*.bin' --exclude='*.pt' --exclude='*.pth' \
    -C "$(dirname "$LOG")" "$(basename "$LOG")"
cat "$SUMMARY"
