"""A random-weight Qwen3-0.6B in a local HF cache, for GPU checks on a machine without the hub.

    python bench/gpu_model.py /tmp/hf        # then HF_HOME=/tmp/hf python launch.py model=qwen3-0.6b ...

The device machines the `device` tool lends reach no hub, and `method=qlora` quantizes a checkpoint as
`from_pretrained` reads it (bitsandbytes), which a tiny random model built from its config never is.
This writes the shipped Qwen3-0.6B architecture (conf/model/configs/qwen3-0.6b.json) with seeded
random weights, and the tiny character-level Qwen3 tokenizer (its ids fit any vocabulary), where
`from_pretrained("Qwen/Qwen3-0.6B", local_files_only=True)` looks: the cache's snapshot layout.
Throughput and memory are those of the real model; its accuracies mean nothing.
"""
from __future__ import annotations

import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from lorasweep.model.loading import model_config  # noqa: E402
from lorasweep.model.tiny_tokenizer import build_tiny_tokenizer  # noqa: E402
from lorasweep.config.spec import ModelSpec  # noqa: E402

SPEC = ModelSpec(name="qwen3-0.6b", family="qwen3", source="hub", id="Qwen/Qwen3-0.6B",
                 config="configs/qwen3-0.6b.json")
REVISION = "0" * 40  # any commit-like name: refs/main points at it


def write(hf_home: Path) -> Path:
    from transformers import AutoModelForCausalLM

    repo = hf_home / "hub" / ("models--" + SPEC.id.replace("/", "--"))
    snapshot = repo / "snapshots" / REVISION
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(model_config(SPEC), dtype=torch.bfloat16)
    model.save_pretrained(snapshot)
    build_tiny_tokenizer(SPEC.family).save_pretrained(snapshot)
    (repo / "refs").mkdir(parents=True, exist_ok=True)
    (repo / "refs" / "main").write_text(REVISION)
    return snapshot


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    print(f"wrote {write(Path(sys.argv[1]))}")
