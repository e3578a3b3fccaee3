"""A pack's checkpoints: each run's in its own folder, in the format of its run alone's Trainer.

Every `train.save_steps` steps and at the last step (as the Trainer saves), a pack writes for each
run still in it `<run folder>/trainer/checkpoint-<step>/`: its adapter (PEFT format), optimizer.pt,
scheduler.pt, rng_state.pth (the pack's one random stream: the dropout masks) and, last, the
trainer_state.json that marks the checkpoint complete (its step, its logged losses); beside them
lorasweep_pack.json holds what the Trainer does not keep (the loss sums behind the logged and final
training loss, the last finite loss), so that a resumed pack ends with the results of one never
stopped. Being the Trainer's format, a run goes on from it alone too (a pack split after running
out of memory, the same sweep run again with pack=false), and a pack goes on from a run alone's.

A run's checkpoint before is deleted only once every run's new one is complete: a pack killed while
it saves leaves each of its runs the step before, where it resumes together (resume_groups). The
curve lives beside the checkpoints (loop.CURVE_FILE), written at each evaluation, as alone.
"""
from __future__ import annotations

import json
import random
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from peft import get_peft_model_state_dict, set_peft_model_state_dict
from safetensors.torch import load_file
from transformers import TrainerControl, TrainerState
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

from ..model.adapter_pack import PackedModel
from .loop import CURVE_FILE, complete_checkpoints, curve_until
from .store import write_json_atomically

Member = Any  # a run of the pack as its loop trains it (run/pack_loop.Member, which imports this module)

# the Trainer's file names (transformers.trainer), which a run alone resumes from
OPTIMIZER, SCHEDULER, RNG, STATE = "optimizer.pt", "scheduler.pt", "rng_state.pth", "trainer_state.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
PACK_STATE = "lorasweep_pack.json"  # ours: what the Trainer does not keep


def workdir(m: Member) -> Path:
    """Where the member's checkpoints go: its Trainer's output_dir, <run folder>/trainer, as alone."""
    return Path(m.trainer.args.output_dir)


def _step_of(folder: Path) -> int:
    return int(folder.name.split("-")[-1])


def held_steps(workdir: Path) -> list[int]:
    """The steps of the run's complete checkpoints, newest first (an incomplete one is removed)."""
    return [_step_of(folder) for folder in complete_checkpoints(workdir)]


def resume_groups(held: Sequence[Sequence[int]]) -> list[tuple[int, list[int]]]:
    """The runs of a pack (each with the steps of its complete checkpoints: held_steps) by the step
    they go on from together: [(step, [run indices])], 0 for runs trained from the start. A pack's
    runs hold the same step, or the one before too after a kill while the pack saved: they go on
    together from the newest step that most of them hold. Runs that do not hold it (a run trained
    elsewhere before, one with no checkpoint beside runs with one) are grouped the same way apart."""
    left = list(range(len(held)))
    groups = []
    while left:
        steps = {s for i in left for s in (held[i] or [0])}
        joining = {s: [i for i in left if s in (held[i] or [0])] for s in steps}
        step = max(steps, key=lambda s: (len(joining[s]), s))
        groups.append((step, joining[step]))
        left = [i for i in left if i not in joining[step]]
    return groups


@dataclass
class Resumed:
    """What a member takes back from its checkpoint, beyond its weights, optimizer and schedule."""

    logs: list[dict]                        # the losses logged so far
    window: tuple[float, int]               # summed loss and steps since the last log
    total_loss: float
    loss_from_step: int                     # the step the total counts from (a run alone's checkpoint: its step)
    last_finite: tuple[int, float] | None
    curve: list[dict]


def restore(pack: PackedModel, m: Member, step: int) -> Resumed:
    """Load the member's checkpoint of `step` into its adapter, optimizer and schedule (created
    already) and return the rest of its state there. Newer checkpoints (written by a pack that was
    killed before all its runs had theirs) are removed: the step is trained again."""
    folder = workdir(m) / f"{PREFIX_CHECKPOINT_DIR}-{step}"
    for newer in (p for p in workdir(m).glob(f"{PREFIX_CHECKPOINT_DIR}-*") if p.name.split("-")[-1].isdigit()):
        if _step_of(newer) > step:
            shutil.rmtree(newer, ignore_errors=True)
    device = next(pack.model.parameters()).device
    state = load_file(folder / ADAPTER_WEIGHTS, device=str(device))
    set_peft_model_state_dict(pack.model, state, adapter_name=m.adapter)
    loaded = get_peft_model_state_dict(pack.model, adapter_name=m.adapter)
    if loaded.keys() != state.keys() or any(not torch.equal(loaded[k], state[k].to(loaded[k].dtype)) for k in state):
        raise RuntimeError(f"{folder} does not hold {m.label}'s adapter: "
                           f"{sorted(set(loaded) ^ set(state))[:4] or 'values differ'}")
    m.optimizer.load_state_dict(torch.load(folder / OPTIMIZER, map_location=device, weights_only=True))
    m.scheduler.load_state_dict(torch.load(folder / SCHEDULER, weights_only=True))
    trainer_state = json.loads((folder / STATE).read_text())
    logs = [{"loss": h["loss"], "step": h["step"]} for h in trainer_state["log_history"] if "loss" in h]
    curve = curve_until(step, workdir(m) / CURVE_FILE, folder / CURVE_FILE)
    sums = folder / PACK_STATE
    if not sums.exists():  # a run alone's checkpoint: its training loss counts the steps from here (as alone)
        return Resumed(logs, (0.0, 0), 0.0, step, None, curve)
    kept = json.loads(sums.read_text())
    last = kept["last_finite"]
    return Resumed(logs, tuple(kept["window"]), kept["total_loss"], kept["loss_from_step"],
                   tuple(last) if last else None, curve)


def restore_rng(m: Member, step: int) -> None:
    """The pack's random stream as it was at `step` (saved with every member's checkpoint)."""
    from transformers.trainer_pt_utils import safe_globals  # numpy's state, loaded with weights_only

    with safe_globals():
        states = torch.load(workdir(m) / f"{PREFIX_CHECKPOINT_DIR}-{step}" / RNG, weights_only=True)
    random.setstate(states["python"])
    np.random.set_state(states["numpy"])
    torch.random.set_rng_state(states["cpu"])
    if torch.cuda.is_available() and "cuda" in states:
        torch.cuda.random.set_rng_state(states["cuda"])


def write_curve(m: Member) -> None:
    """The member's curve so far beside its checkpoints (at each evaluation, before a save)."""
    write_json_atomically(workdir(m) / CURVE_FILE, m.outcome.curve)


def save(pack: PackedModel, members: Sequence[Member], state, args, save_steps: int) -> None:
    """Each member's checkpoint at state.global_step; then, all of them complete, each one's older ones
    removed (the Trainer's save_total_limit=1)."""
    step = state.global_step
    rng = {"python": random.getstate(), "numpy": np.random.get_state(), "cpu": torch.random.get_rng_state()}
    if torch.cuda.is_available():
        rng["cuda"] = torch.cuda.random.get_rng_state()
    for m in members:
        folder = workdir(m) / f"{PREFIX_CHECKPOINT_DIR}-{step}"
        pack.save_adapter(m.adapter, folder)
        torch.save(m.optimizer.state_dict(), folder / OPTIMIZER)
        torch.save(m.scheduler.state_dict(), folder / SCHEDULER)
        torch.save(rng, folder / RNG)
        write_json_atomically(folder / PACK_STATE, {"window": list(m.window), "total_loss": m.total_loss,
                                                    "loss_from_step": m.loss_from_step,
                                                    "last_finite": list(m.last_finite) if m.last_finite else None})
        epoch = lambda s: s / state.steps_per_epoch
        trainer_state = TrainerState(
            epoch=epoch(step), global_step=step, max_steps=state.max_steps, logging_steps=args.logging_steps,
            eval_steps=args.eval_steps, save_steps=save_steps, train_batch_size=args.per_device_train_batch_size,
            num_train_epochs=-(-state.max_steps // state.steps_per_epoch),
            log_history=[{**log, "epoch": epoch(log["step"])} for log in m.logs],
            stateful_callbacks=[TrainerControl(should_save=True, should_training_stop=step >= state.max_steps)])
        trainer_state.save_to_json(str(folder / STATE))  # last: the checkpoint is complete
    for m in members:
        for older in complete_checkpoints(workdir(m)):
            if _step_of(older) < step:
                shutil.rmtree(older, ignore_errors=True)
