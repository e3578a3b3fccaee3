#!/usr/bin/env bash
# Here, before a GPU call: the wheels the device image lacks, into .whl/ (git-ignored through
# .git/info/exclude), for bench/gpu_check.sh to install there. The image has torch, accelerate,
# numpy, pandas, psutil and safetensors; lorasweep's pinned transformers, peft and trl travel, with
# Hydra, submitit, optuna, datasets and gguf, and Liger Kernel (0.9 MB, pure Python on the image's
# Triton: bench/gpu.py --loss liger). bitsandbytes (method=qlora) travels with only the
# CUDA 13 libraries the image's torch (cu130) loads: its wheel holds every CUDA version's (41 MB,
# over the call's 64 MiB with the rest).
#     bash bench/gpu_wheels.sh && du -sh .whl     # ~29 MB
set -euo pipefail
cd "$(dirname "$0")/.."
grep -qx '/.whl/' .git/info/exclude 2>/dev/null || echo /.whl/ >> .git/info/exclude
rm -rf .whl && mkdir .whl
PLATFORMS=(--python-version 3.12 --implementation cp --only-binary=:all: --no-deps)
for n in 28 27 24 17; do PLATFORMS+=(--platform "manylinux_2_${n}_x86_64"); done
PLATFORMS+=(--platform manylinux2014_x86_64 --platform manylinux1_x86_64)
python3 -m pip download -q "${PLATFORMS[@]}" -d .whl \
    transformers==5.23.0 peft==0.21.2 trl==1.16.0 datasets==5.2.0 hydra-core==1.3.8 omegaconf==2.3.1 \
    submitit==1.5.4 optuna==5.0.0 alembic==1.20.1 sqlalchemy==2.1.9 colorlog==6.12.0 mako==1.4.3 \
    dill==0.4.1 multiprocess==0.70.19 gguf==0.19.0 bitsandbytes==0.50.2 liger-kernel==0.8.5
python3 -m pip wheel -q --no-deps -w .whl antlr4-python3-runtime==4.9.3  # Hydra's parser: an sdist only
python3 - <<'PY'
import glob, zipfile, os
(src,) = glob.glob(".whl/bitsandbytes-*.whl")
keep = lambda name: not (name.endswith(".so") and "cuda13" not in name)  # the CUDA 13 builds only
tmp = src + ".tmp"
with zipfile.ZipFile(src) as zin, zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED) as zout:
    for item in zin.infolist():
        if not keep(item.filename):
            continue
        data = zin.read(item.filename)
        if item.filename.endswith("RECORD"):  # drop the removed files' lines, so the record stays true
            data = b"\n".join(l for l in data.split(b"\n") if keep(l.split(b",")[0].decode()))
        zout.writestr(item, data)
os.replace(tmp, src)
PY
du -sh .whl
