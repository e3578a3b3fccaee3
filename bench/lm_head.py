"""Benchmark 8: an SFT training step with the LM head on the kept rows only, against every position.

    python bench/lm_head.py [--steps 4] [--model smollm2-135m] [--batch 8]

The run's own SFT trainer (model=smollm2-135m, task=wordnet_mcq, LoRA r=8 qkvo) and its first
`--steps` training batches. On each batch, one after the other: trl's fused head over every position
(what a trainer's full_logits=True trains with, the "before") and lorasweep's kept rows (the "after"),
each a forward and a backward of the loss, from the same weights and the same dropout seed (no
optimizer step, so both sides see one model). Interleaved, so that a change in the machine's load
hits both sides alike. One untimed step of each first (allocations, first-call costs).
"""
from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

from _proc import ROOT, row

sys.path.insert(0, str(ROOT / "src"))  # run from anywhere, installed or not
from lorasweep.model import loading, methods  # noqa: E402
from lorasweep.run.loop import trainer_arguments, sft_trainer  # noqa: E402
from lorasweep.run.plan import plan_run  # noqa: E402
from lorasweep.tasks import task as tasks  # noqa: E402


def compose(overrides: list[str]) -> dict:
    from hydra import compose as hydra_compose, initialize_config_dir
    from omegaconf import OmegaConf

    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        return OmegaConf.to_container(hydra_compose(config_name="config", overrides=overrides), resolve=True)


def step(trainer, model, batch, full: bool, seed: int) -> tuple[float, float]:
    """One forward and backward of the training loss: (seconds, loss)."""
    trainer.full_logits = full
    model.zero_grad(set_to_none=True)
    torch.manual_seed(seed)  # lora dropout draws the same masks on both sides
    start = time.perf_counter()
    loss = trainer.compute_loss(model, dict(batch), num_items_in_batch=(batch["labels"][:, 1:] != -100).sum())
    loss.backward()
    return time.perf_counter() - start, loss.item()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--batch", type=int, default=8)
    args = ap.parse_args()
    plan = plan_run(compose([f"model={args.model}", "task=wordnet_mcq", f"train.batch_size={args.batch}"]))
    spec, task = plan.spec, plan.task
    torch.manual_seed(0)
    model, tok, _ = loading.load_with_notes(spec.model, plan.head, task.num_labels)
    model = methods.prepare(model, spec, plan.head, list(plan.targets), [])
    with tempfile.TemporaryDirectory() as tmp:
        trainer = sft_trainer(model, tok, tasks.training_data(task, tok, spec.train, plan.head), spec.train,
                              trainer_arguments(spec.train, Path(tmp)))
        loader = iter(trainer.get_train_dataloader())
        batches = [next(loader) for _ in range(args.steps + 1)]
    model.train()
    step(trainer, model, batches[0], True, 0), step(trainer, model, batches[0], False, 0)  # untimed
    times: dict[bool, list[float]] = {True: [], False: []}
    losses: dict[bool, list[float]] = {True: [], False: []}
    for i, batch in enumerate(batches[1:], start=1):
        for full in (True, False):
            seconds, loss = step(trainer, model, batch, full, i)
            times[full].append(seconds)
            losses[full].append(loss)
    shape = batches[1]["input_ids"].shape
    kept = [int((b["labels"][:, 1:] != -100).sum()) for b in batches[1:]]
    print(f"{args.model}, wordnet_mcq, LoRA r={spec.lora.r} {spec.lora.proj}, {args.steps} steps of batch "
          f"{args.batch} (first batch {tuple(shape)}; loss-carrying tokens per batch {kept}), "
          f"vocab {model.get_output_embeddings().weight.shape[0]:,}; forward + backward, seconds per step, "
          f"torch threads {torch.get_num_threads()}")
    widths = (26, 10, 10, 60)
    print(row("", "median s", "mean s", "losses of the steps", widths=widths))
    for full, name in ((True, "full logits (trl)"), (False, "kept rows (lorasweep)")):
        print(row(name, f"{statistics.median(times[full]):.3f}", f"{statistics.mean(times[full]):.3f}",
                  " ".join(f"{x:.6f}" for x in losses[full]), widths=widths))
    ratio = statistics.median(times[True]) / statistics.median(times[False])
    worst = max(abs(a - b) / abs(b) for a, b in zip(losses[False], losses[True]))
    print(f"speed-up (median full / median kept): {ratio:.2f}x; largest relative loss difference {worst:.2e}")


if __name__ == "__main__":
    main()
