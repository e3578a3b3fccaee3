"""The training loop of a pack: its runs step together over one frozen base, each as it would alone.

Each run keeps what the Trainer of its run alone would give it (run/loop.py builds that Trainer here
too, and never trains it): its data order (the Trainer's seeded sampler and collator), its optimizer
(the Trainer's class and settings: AdamW, its lr and weight decay, no decay on biases and norms) and
schedule (warmup, linear decay over its steps), gradient clipping at max_grad_norm over its own
parameters, its logged loss (the mean over each logging window) and its curve (the task's evaluator
every eval_steps, at the last step and before the first).

A step stacks the runs' batches (model/adapter_pack: each run on its own rows), runs one forward (through
torch.compile with train.compile=true: run/pack_compile.py) and one backward of the sum of the runs' losses (each its own mean: the gradient of a run's parameters is
that of its loss alone), then clips and steps each run's optimizer. The loss is the task's, as the
run's Trainer computes it alone: cross-entropy over a run's rows for classification; for causal-LM
SFT (mcq, chat, completion) trl's loss from the LM head on the tokens that carry loss (run/lm_head.py),
over the token count the run's own Trainer takes from its batch. A run whose loss is NaN or
infinite leaves the pack at that step, unstepped (its result: diverged, as alone); the others go on.

Checkpoints (train.save_steps, run/pack_checkpoints.py): each run's in its own folder, in its run
alone's Trainer format, after the step's log and evaluation as the Trainer saves; a pack resumed
from them goes on as if never stopped (its data position: each run's loader at its epoch, the
batches of that epoch before the step skipped; its random stream, which only dropout draws from, as
saved: with dropout too it ends as the pack never stopped).

Dropout: each run's dropout masks are drawn from the one random stream of the pack, over its rows
padded to the pack's longest batch, so they are not the masks its run alone draws; with dropout 0
(LoRA's and the base model's) a run trains exactly as alone (tests/test_pack.py).
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from functools import partial
from types import SimpleNamespace
from typing import Callable, Sequence

import torch
import torch.nn.functional as F
from transformers import Trainer, get_scheduler, set_seed

from ..config.spec import TrainSpec
from ..console import say
from ..model.adapter_pack import Block, PackedModel
from ..tasks.metrics import headline
from . import pack_checkpoints as checkpoints
from .loop import Divergence, Reporter, TrainOutcome
from .progress_file import ProgressFile
from .tracking import Tracker

PackEvaluator = Callable[[Sequence[str]], list[dict]]  # adapters -> each one's metrics, in that order
# (pack, the stacked batch on the device, each run's rows, each live run and its own batch) -> each run's loss
PackLoss = Callable[[PackedModel, dict, list[Block], list[tuple["Member", dict]]], list[torch.Tensor]]


@dataclass
class Member:
    """One run of a pack as the loop trains it."""

    adapter: str
    label: str                 # how the console names it (its slug)
    spec: TrainSpec
    trainer: Trainer           # its run alone's Trainer: data order and optimizer settings, never trained
    progress: ProgressFile | None = None
    reporter: Reporter | None = None
    tracker: Tracker = field(default_factory=Tracker)  # its own tracker run: its logged losses and evaluations
    outcome: TrainOutcome = field(default_factory=TrainOutcome)
    optimizer: torch.optim.Optimizer | None = None
    scheduler: object = None
    params: list = field(default_factory=list)
    lr: float = 0.0  # the learning rate of its last step
    window: tuple[float, int] = (0.0, 0)  # summed loss and steps since the last log (the Trainer's tr_loss)
    total_loss: float = 0.0
    loss_from_step: int = 0  # the step total_loss counts from (resumed from a run alone's checkpoint: its step)
    last_finite: tuple[int, float] | None = None
    logs: list[dict] = field(default_factory=list)  # the losses logged so far (the curve's train_loss)
    active: bool = True  # False once it left the pack (diverged, pruned): its outcome final then


def train_pack(pack: PackedModel, members: list[Member], evaluate: PackEvaluator, losses_of: PackLoss,
               step_sleep_s: float = 0.0, on_leave: Callable[[Member], None] | None = None,
               save_steps: int = 0, resume_step: int = 0) -> None:
    """Train every member's adapter in `pack` in place; each member's `outcome` holds its curve and
    timing, `diverged` or `pruned_at` where it stopped early. `losses_of`: the task's loss
    (classification_losses, sft_losses). `on_leave(member)`: called at once, its outcome final, for
    a member that leaves the pack early (its result is written then: an interrupted pack keeps it).
    `step_sleep_s`: a pause after each step (train.step_sleep_s: a tiny pack watched, or stopped,
    while it trains). `save_steps` > 0: every member's checkpoint every that many steps and at the
    last; `resume_step` > 0: every member goes on from its checkpoint of that step
    (pack_checkpoints.resume_groups)."""
    args = members[0].trainer.args
    loaders = [m.trainer.get_train_dataloader() for m in members]
    per_epoch = {len(loader) for loader in loaders}
    if len(per_epoch) != 1:
        raise ValueError(f"a pack's runs must have as many batches an epoch, not {sorted(per_epoch)}")
    steps_per_epoch = per_epoch.pop()
    max_steps = args.max_steps if args.max_steps > 0 else math.ceil(args.num_train_epochs * steps_per_epoch)
    epochs = math.ceil(max_steps / steps_per_epoch)
    for m in members:
        _optimizer(pack, m, max_steps)
    state = SimpleNamespace(global_step=resume_step, max_steps=max_steps, steps_per_epoch=steps_per_epoch,
                            pad_id=members[0].trainer.processing_class.pad_token_id or 0, first_step=resume_step)
    if resume_step:
        for m in members:
            _resume(pack, m, resume_step)
        say(f"  resuming the pack from step {resume_step} ({checkpoints.workdir(members[0]).parent.name} ...)")

    def leave(m: Member) -> None:  # at once, as it stops (diverged, pruned): its outcome final, on_leave told
        _close(m, state, start)
        if on_leave:
            on_leave(m)

    if not resume_step:
        _evaluate(pack, members, evaluate, state, training=False, save_steps=save_steps)  # the curve's step-0 point
    for m in members:
        m.outcome.eval_seconds = 0.0
        if m.progress:
            m.progress.on_train_begin(None, state, None)
    set_seed(args.seed)  # as Trainer.train does
    if resume_step:
        checkpoints.restore_rng(members[0], resume_step)  # as the Trainer resumes: after its seed
    start = time.perf_counter()
    for epoch in range(resume_step // steps_per_epoch, epochs):
        iterators = [_epoch(loader, epoch) for loader in loaders]
        done_before = resume_step - epoch * steps_per_epoch if epoch == resume_step // steps_per_epoch else 0
        for _ in range(done_before):  # this epoch's batches before the checkpoint, as the Trainer skips them
            _batches(iterators)
        for _ in range(steps_per_epoch - done_before):
            batches = _batches(iterators)  # every run's data moves on, as alone, even one that left
            live = [(m, b) for m, b in zip(members, batches) if m.active]
            if not live or state.global_step >= max_steps:
                break
            _step(pack, live, state.global_step + 1, args.max_grad_norm, state.pad_id, losses_of, leave)
            state.global_step += 1
            _log_and_evaluate(pack, members, evaluate, state, args, start, leave, save_steps)
            if save_steps > 0 and (state.global_step % save_steps == 0 or state.global_step >= max_steps):
                checkpoints.save(pack, [m for m in members if m.active], state, args, save_steps)
            if step_sleep_s > 0:
                time.sleep(step_sleep_s)
    for m in members:
        if m.active:  # one that left was closed as it left
            m.outcome.steps = state.global_step
            _close(m, state, start)


def _close(m: Member, state, start: float) -> None:
    """The member's outcome made final: its steps (set where it stopped), examples, training time
    (evaluations not counted) and mean training loss."""
    m.outcome.examples = m.outcome.steps * m.spec.batch_size
    m.outcome.train_seconds = time.perf_counter() - start - m.outcome.eval_seconds
    if m.outcome.diverged is None:
        m.outcome.final_train_loss = m.total_loss / max(1, m.outcome.steps - m.loss_from_step)
    if m.progress:
        m.progress.on_train_end(None, state, None)


def _batches(iterators) -> list[dict]:
    """The next batch of each run. A loader's iterator draws a seed from the global random stream as
    it starts an epoch: kept off it, that stream (the dropout masks) does not depend on how many runs'
    loaders start an epoch, nor where (a resumed pack may hold fewer runs, and starts mid-epoch)."""
    with torch.random.fork_rng(devices=[]):
        return [next(it) for it in iterators]


def _resume(pack: PackedModel, m: Member, step: int) -> None:
    """The member as its checkpoint of `step` left it (its optimizer and schedule created already)."""
    back = checkpoints.restore(pack, m, step)
    m.logs, m.window, m.total_loss, m.loss_from_step = back.logs, back.window, back.total_loss, back.loss_from_step
    m.last_finite, m.outcome.curve, m.outcome.resumed_from_step = back.last_finite, back.curve, step


def _epoch(loader, epoch: int):
    """The loader's batches for this epoch, seeded as the Trainer seeds them (set_epoch)."""
    if hasattr(loader, "set_epoch"):
        loader.set_epoch(epoch)
    inner = getattr(getattr(loader, "batch_sampler", None), "batch_sampler", None)
    if hasattr(inner, "set_epoch"):
        inner.set_epoch(epoch)
    return iter(loader)


def _optimizer(pack: PackedModel, m: Member, max_steps: int) -> None:
    """The optimizer and schedule the run's Trainer would create, over the run's own parameters."""
    args = m.trainer.args
    named = pack.named_parameters_of(m.adapter)
    decay = set(m.trainer.get_decay_parameter_names(pack.model))
    groups = [{"params": [p for n, p in named if n in decay], "weight_decay": args.weight_decay},
              {"params": [p for n, p in named if n not in decay], "weight_decay": 0.0}]
    cls, kwargs = Trainer.get_optimizer_cls_and_kwargs(args, pack.model)
    m.params = [p for _, p in named]
    m.optimizer = cls(groups, **kwargs)
    m.scheduler = get_scheduler(args.lr_scheduler_type, m.optimizer,
                                num_warmup_steps=args.get_warmup_steps(max_steps), num_training_steps=max_steps)


def stack(batches: Sequence[dict], pad_id: int) -> tuple[dict, list[int]]:
    """The runs' batches as one: stacked on the batch axis, each padded on the right to the longest
    (padding is masked out: a row's outputs do not change); returns it and each batch's row count."""
    width = max(b["input_ids"].shape[1] for b in batches)
    fill = {"input_ids": pad_id, "labels": -100}  # attention_mask, token_type_ids: 0
    stacked = {}
    for key in batches[0]:
        parts = [b[key] for b in batches]
        if parts[0].dim() == 2:
            parts = [F.pad(p, (0, width - p.shape[1]), value=fill.get(key, 0)) for p in parts]
        stacked[key] = torch.cat(parts)
    return stacked, [len(b["input_ids"]) for b in batches]


def _step(pack: PackedModel, live: list[tuple[Member, dict]], step: int, max_grad_norm: float, pad_id: int,
          losses_of: PackLoss, leave: Callable[[Member], None]) -> None:
    """One optimizer step of every live run: one forward and backward, then each run's own update."""
    model = pack.model
    device = next(model.parameters()).device
    batch, sizes = stack([b for _, b in live], pad_id)
    blocks, start = [], 0
    for (m, _), n in zip(live, sizes):
        blocks.append(Block(m.adapter, start, start + n))
        start += n
    model.train()
    # the mixed precision of the runs' Trainers (bf16 on a GPU), which accelerate would put around
    # the model's forward in Trainer.train; the pack never calls that
    with live[0][0].trainer.accelerator.autocast():
        losses = losses_of(pack, {k: v.to(device) for k, v in batch.items()}, blocks, live)
    torch.stack(losses).sum().backward()
    for (m, _), loss in zip(live, losses):
        value = float(loss.detach())
        if not math.isfinite(value):  # it leaves the pack before its update, as alone
            m.outcome.diverged = Divergence(step, value, *(m.last_finite or (None, None)))
            m.outcome.steps, m.active = step - 1, False
            say(f"  {m.label}: {m.outcome.diverged.reason}: it leaves the pack; the others go on")
            m.optimizer.zero_grad(set_to_none=True)
            leave(m)
            continue
        m.last_finite = (step, value)
        m.window = (m.window[0] + value, m.window[1] + 1)
        m.total_loss += value
        if max_grad_norm and max_grad_norm > 0:
            torch.nn.utils.clip_grad_norm_(m.params, max_grad_norm)
        m.optimizer.step()
        m.lr = m.scheduler.get_last_lr()[0]  # the rate of this step, which the Trainer logs
        m.scheduler.step()
        m.optimizer.zero_grad(set_to_none=True)


def classification_losses(pack: PackedModel, batch: dict, blocks: list[Block], live) -> list[torch.Tensor]:
    """Each run's own mean loss, as the model computes it alone (cross-entropy over its rows)."""
    labels = batch.pop("labels")
    with pack.blocks(blocks):
        logits = _stepping(pack, pack.model)(**batch).logits
    return [F.cross_entropy(logits[b.rows].view(-1, logits.shape[-1]).float(), labels[b.rows].view(-1))
            for b in blocks]


def sft_losses(pack: PackedModel, batch: dict, blocks: list[Block], live) -> list[torch.Tensor]:
    """Each run's causal-LM SFT loss as its SFTTrainer computes it alone (run/loop.py: the LM head on
    the tokens that carry loss, over the count of those tokens the Trainer takes from the run's own
    batch), from one decoder pass over every run's rows."""
    from . import lm_head  # imports trl: classification packs do without it

    labels = batch.pop("labels")
    with pack.blocks(blocks):
        body = lm_head.backbone(pack.model)
        hidden = lm_head.decoder_states(pack.model, batch, body=_stepping(pack, body))
    sizes = [b.stop - b.start for b in blocks]
    losses = []
    for (m, own), states, rows in zip(live, hidden.split(sizes), labels.split(sizes)):
        _, n_items = m.trainer.get_batch_samples(iter([own]), 1, hidden.device)
        losses.append(lm_head.head_loss(pack.model, states, rows, n_items).loss)
    return losses


def _stepping(pack: PackedModel, module: torch.nn.Module) -> Callable:
    """`module` as a pack's training step calls it: compiled where the pack is (train.compile)."""
    return module if pack.compiled is None else partial(pack.compiled, module)


def _log_and_evaluate(pack, members: list[Member], evaluate: PackEvaluator, state, args, start: float,
                      leave: Callable[[Member], None], save_steps: int) -> None:
    """What the Trainer does after a step (transformers' DefaultFlowCallback): log the loss every
    logging_steps (not at the last step: a window cut short is never logged), evaluate every
    eval_steps and at the last step."""
    step, live = state.global_step, [m for m in members if m.active]
    if step % args.logging_steps == 0:
        for m in live:
            total, n = m.window
            if n:
                m.logs.append({"loss": total / n, "step": step})
                m.window = (0.0, 0)
                m.tracker.log({"loss": total / n, "learning_rate": m.lr, "epoch": step / state.steps_per_epoch}, step)
                if m.progress:
                    m.progress.on_log(None, state, None, logs={"loss": total / n})
        elapsed = time.perf_counter() - start
        losses = [m.logs[-1]["loss"] for m in live if m.logs]
        done = step - state.first_step  # this process's steps: a resumed pack's rate counts its own
        rate = done * sum(m.spec.batch_size for m in live) / elapsed
        eta = (state.max_steps - step) * elapsed / done
        if losses:
            say(f"  pack step {step:>5}/{state.max_steps}  {len(live)} runs, loss {min(losses):.4f}-{max(losses):.4f}  "
                f"{rate:.1f} ex/s  ETA {eta:.0f}s")
    if step % args.eval_steps == 0 or step >= state.max_steps:
        _evaluate(pack, live, evaluate, state, training=True, leave=leave, save_steps=save_steps)
    for m in live:
        if m.progress and m.active:  # one pruned just now has ended its progress
            m.progress.on_step_end(None, state, None)


def _evaluate(pack, members: list[Member], evaluate: PackEvaluator, state, training: bool,
              leave: Callable[[Member], None] | None = None, save_steps: int = 0) -> None:
    """Every member's evaluation at this step, in one pass of the pack; each a point of its curve
    (kept beside its checkpoints when it has some: a checkpoint never lacks the points before it)."""
    t0 = time.perf_counter()
    results = evaluate([m.adapter for m in members])
    seconds = time.perf_counter() - t0
    step = state.global_step
    for m, metrics in zip(members, results):
        m.outcome.eval_seconds += seconds
        m.outcome.curve.append({"step": step, "epoch": step / state.steps_per_epoch,
                                "train_loss": m.logs[-1]["loss"] if m.logs else None, **metrics})
        where = f"step {step:>5}/{state.max_steps}" if training else "before training"
        say(f"  eval  {where}  {m.label}: {headline(metrics)}")
        if save_steps > 0:
            checkpoints.write_curve(m)
        m.tracker.log({**{f"eval_{k}": v for k, v in metrics.items() if isinstance(v, (int, float))},
                       "epoch": step / state.steps_per_epoch}, step)
        if m.progress:
            m.progress.on_evaluate(None, state, None, metrics={f"eval_{k}": v for k, v in metrics.items()})
        if m.reporter and step and m.reporter(step, metrics):
            m.outcome.pruned_at, m.outcome.steps, m.active = step, step, False
            leave(m)

