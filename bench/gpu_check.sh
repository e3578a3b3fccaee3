#!/usr/bin/env bash
# The GPU acceptance checks of issues 14 (packed sweeps) and 15 (GPU machines), in one call on a
# machine the `device` tool lends; figures and logs under $OUT, a summary printed last.
#     bash bench/gpu_wheels.sh                                  # here, first: .whl/ (~28 MB)
#     device run: command="bash bench/gpu_check.sh", carry=[".whl"], timeout_s=580
# Parts, in order (a failed part is reported and the next one runs): bench/gpu.py (LoRA, DoRA and
# full on the Qwen3-0.6B architecture, bf16, r=16 qkvogud, both LM-head losses: MFU), bench/pack_gpu.py
# (8 LoRA runs packed vs one after another vs 8 processes), a 4-run sweep with runs_per_gpu=2 (each
# result's GPU and peak GPU memory), and lora vs qlora vs qlora8 runs of a random-weight Qwen3-0.6B
# (bench/gpu_model.py; each result's memory record). PARTS="gpu pack sweep qlora" picks some.
set -u
OUT=${OUT:-/tmp/gpu_check}
PARTS=${PARTS:-"gpu pack sweep qlora"}
mkdir -p "$OUT"
cd "$(dirname "$0")/.."
if [ -d .whl ]; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
        > "$OUT/pip.txt" 2>&1 || { tail -5 "$OUT/pip.txt"; exit 1; }
    export PYTHONPATH=/tmp/site:$PWD/src
else
    export PYTHONPATH=$PWD/src
fi
export HF_HOME=/tmp/hf HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
{ date -u; nvidia-smi; python3 -c "import torch, transformers, peft; print(torch.__version__, transformers.__version__, peft.__version__)"; } > "$OUT/machine.txt" 2>&1
SUMMARY="$OUT/summary.txt"; : > "$SUMMARY"
part() { case " $PARTS " in *" $1 "*) return 0;; esac; return 1; }
step() {  # step NAME SECONDS COMMAND...: run it with a time limit, its output to $OUT/NAME.txt
    local name=$1 limit=$2; shift 2
    local start=$SECONDS
    timeout "$limit" "$@" > "$OUT/$name.txt" 2>&1
    local rc=$?
    echo "== $name: exit $rc in $((SECONDS - start)) s" >> "$SUMMARY"
}
summarize() {  # each result in a results store: its status, GPU, memory record and train time
    python3 - "$1" >> "$SUMMARY" <<'PY'
import json, sys, pathlib
for f in sorted(pathlib.Path(sys.argv[1]).glob("*/result.json")):
    r = json.loads(f.read_text())
    print(f"  {r['slug']}: {r['status']} {r.get('reason', '')[:200]} on GPU {r['env'].get('cuda_visible_devices')} "
          f"({r['env'].get('device')}) | memory {r.get('memory')} | train {r.get('timing', {}).get('train_s')} s")
PY
}

part gpu && step gpu 200 python3 bench/gpu.py --methods lora,dora,full --loss hf,kept --seq 2048 \
    --tokens 16384,32768 --steps 6 --warmup 2 --json "$OUT/gpu.json" \
    && grep -E "^(device|measured|lora|dora|full) " "$OUT/gpu.txt" >> "$SUMMARY"
part pack && step pack 150 python3 bench/pack_gpu.py --steps 20 --batch 4 --seq 512 \
    && tail -6 "$OUT/pack.txt" >> "$SUMMARY"
if part sweep; then
    step sweep 150 python3 launch.py -m model=tiny-qwen3 task=wordnet_mcq lora.r=4,8 lora.proj=qkvo,qkvogud \
        train.max_steps=30 train.eval_steps=10 task.max_train=240 task.max_test=50 \
        hydra.launcher.runs_per_gpu=2 results_dir="$OUT/sweep" hydra.sweep.dir="$OUT/sweep_multirun"
    summarize "$OUT/sweep"
fi
if part qlora; then
    step model 120 python3 bench/gpu_model.py "$HF_HOME"
    step qlora 200 python3 launch.py -m model=qwen3-0.6b task=wordnet_mcq method=lora,qlora,qlora8 \
        lora.proj=qkvogud lora.r=16 train.max_steps=20 train.eval_steps=20 task.max_train=160 task.max_test=50 \
        hydra.launcher.n_jobs=1 results_dir="$OUT/qlora" hydra.sweep.dir="$OUT/qlora_multirun"
    summarize "$OUT/qlora"
fi
cat "$SUMMARY"
