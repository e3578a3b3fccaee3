"""A pack's lifecycle: several compatible runs trained at once in this process, over one frozen base.

    run_pack(cfgs)   what a sweep worker calls for a pack (lorasweep.sweep.packs groups them)

Each run is what it would be alone (run/lifecycle.py), except that the load and the training are
shared: it is planned, checked against its budget and the store, claimed, built alone (its own
seeded initialisation, its exact parameter count), then its adapter joins the pack's model
(model/adapter_pack.py) and all train together (run/pack_loop.py; with train.compile=true each step's
forward compiled, run/pack_compile.py). Each writes its own result.json, with `pack: {id, size, runs,
product}` added (and `compile` when compiled), its own PEFT adapter and, with tracking on, its own tracker
run; a run that diverges or is pruned leaves the pack with that result, written as it leaves, while
the others go on. A pack that fails records each run still in it as failed (with the shared
traceback), and that error is its outcome (run_pack returns it, not raises it): the runs that left
before, or that another process trains, keep theirs; an interrupted pack writes no result for the
runs still training (the same command trains them).

With train.save_steps (by default every eval_steps inside a SLURM job) each run's checkpoints go to
its own folder, as alone (run/pack_checkpoints.py): a requeued or killed pack goes on from them, its
runs together from the step they share (a run alone from its own), and each run's go once its
result is written.
"""
from __future__ import annotations

import contextlib
import hashlib
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

import torch

from ..console import say
from ..errors import RunClaimedError, UnreadableResultError
from ..model import loading, methods
from ..model.adapter_pack import Block, PackedModel, adapter_name, pack_models
from ..tasks import classification
from ..tasks import task as tasks
from ..tasks.metrics import headline
from . import memory, store
from .claims import Claim
from .lifecycle import (checked_params, close_tracker, cost_record, finished_result, load_and_train,
                        new_weight_notes)
from .loop import LoopOptions, make_trainer
from .pack_checkpoints import held_steps, resume_groups
from .pack_compile import PackCompile
from .pack_loop import Member, classification_losses, sft_losses, train_pack
from .plan import Plan, plan_run
from .predict import task_lengths_of
from .progress import PROGRESS_FILE
from .progress_file import ProgressFile
from .records import (TRAINER_DIR, base_record, diverged_result, done_result, pruned_result, record_failure, record_over_budget,
                      saving_weights, still_ours, timing_record)
from .tracking import Tracker, make_tracker


def run_pack(cfgs: Sequence[Mapping[str, Any]], reporters: Sequence | None = None) -> list[dict[str, Any] | Exception]:
    """Train the runs of `cfgs` as one pack; returns each one's outcome, in their order: its result
    (as run_config returns it), {"claimed_by": who, "run_key"} for a run another process trains now,
    or the exception it failed with, recorded as alone (the pack's own failure for each run still in
    it; the AcceleratorMemoryError of a run out of memory even alone: _train_or_split). A run that
    left the pack before it failed keeps its result. `reporters`: each run's pruning reporter."""
    plans = [plan_run(cfg) for cfg in cfgs]
    dirs = [store.store_dir(cfg) for cfg in cfgs]
    for d in dict.fromkeys(dirs):
        store.check_still_writable(d)  # its driver found it writable: a refusal now is the store's fault
    reporters = list(reporters or [None] * len(cfgs))
    trackings = [dict(cfg.get("tracking") or {}) for cfg in cfgs]
    out: list[dict[str, Any] | None] = [None] * len(cfgs)
    keys = {plan.spec.run_key for plan in plans}
    with contextlib.ExitStack() as claims:
        todo = []
        for i, (plan, results_dir) in enumerate(zip(plans, dirs)):
            folder = plan.folder(results_dir)
            out[i] = _left_before(folder, keys)
            if out[i] is not None:
                continue
            try:
                finished_result(plan, folder, triaged=True, say_unreadable=False)  # finished since triage: raises
                if plan.over_budget:
                    out[i] = record_over_budget(plan, results_dir)
                    continue
                claims.enter_context(Claim(folder))
                finished_result(plan, folder, triaged=True, say_unreadable=False)  # and since our look
            except RunClaimedError as e:
                out[i] = _claimed(e, plan)
                continue
            todo.append(i)
        if todo:
            results = _train_or_split([plans[i] for i in todo], [plans[i].folder(dirs[i]) for i in todo],
                                      [reporters[i] for i in todo], [trackings[i] for i in todo],
                                      LoopOptions.from_config(cfgs[todo[0]].get("train") or {}))
            for i, result in zip(todo, results):
                out[i] = result
    return out  # type: ignore[return-value]


def _left_before(folder: Path, keys: set[str]) -> dict[str, Any] | None:
    """The result of a run that left a pack of these runs (diverged, pruned) in an earlier attempt of
    this pack (a requeued SLURM job runs it again), or None: that run stays as it ended."""
    try:
        previous = store.read_result(folder)
    except UnreadableResultError:
        return None
    runs = (previous or {}).get("pack", {}).get("runs")
    if runs and set(runs) <= keys and previous["status"] in ("diverged", "pruned"):
        say(f"{previous['slug']}: {previous['status']} in an earlier attempt of this pack ({folder}), not trained again")
        return previous
    return None


@dataclass
class _OutOfMemory:
    """A pack that ran out of accelerator memory (memory.ran_out's words); `done`: the results its
    runs wrote before (pruned, diverged), None for each run still to train."""

    reason: str
    done: list[dict[str, Any] | None]


def _train_or_split(plans: list[Plan], folders: list[Path], reporters: list, trackings: list,
                    loop: LoopOptions) -> list[dict[str, Any] | Exception]:
    """Each run's result, or the exception it failed with (recorded): the runs trained as one pack,
    or one run as it trains alone. A pack that runs out of accelerator memory is trained again as two
    packs of half its size, down to runs alone: a pack too large for its GPU costs time, not its runs.
    A run that runs out of memory alone is recorded failed (run/lifecycle.py), its outcome is that
    AcceleratorMemoryError (the sweep says it as it says a run alone's), and the runs beside it go on."""
    if len(plans) == 1:
        try:
            return [load_and_train(plans[0], folders[0], trackings[0], reporters[0], loop)]
        except Exception as e:  # recorded as alone (out of memory: its memory given back)
            return [e]
    groups = resume_groups([held_steps(f / TRAINER_DIR) for f in folders]) if loop.save_steps > 0 else [(0, [])]
    if len(groups) > 1:  # runs whose checkpoints are of different steps go on apart
        say(f"{pack_id([p.spec.run_key for p in plans])}: its runs' checkpoints are of different steps; they go on as "
            + ", ".join(f"{len(g)} from step {step}" for step, g in groups))
        results: list = [None] * len(plans)
        for _, group in groups:
            for i, result in zip(group, _train_or_split([plans[i] for i in group], [folders[i] for i in group],
                                                        [reporters[i] for i in group], [trackings[i] for i in group],
                                                        loop)):
                results[i] = result
        return results
    out = _train_pack(plans, folders, reporters, trackings, loop, groups[0][0])
    if not isinstance(out, _OutOfMemory):
        return out
    memory.release()  # _train_pack has returned: nothing references its model any more
    results, left = list(out.done), [i for i, r in enumerate(out.done) if r is None]
    halves = [left[:(len(left) + 1) // 2], left[(len(left) + 1) // 2:]]
    say(f"{pack_id([p.spec.run_key for p in plans])}: {out.reason} with {len(plans)} runs; {len(left)} train again, "
        + " and ".join(f"{len(h)} {'alone' if len(h) == 1 else 'in a pack'}" for h in halves if h))
    for half in halves:
        if half:
            for i, result in zip(half, _train_or_split([plans[i] for i in half], [folders[i] for i in half],
                                                       [reporters[i] for i in half], [trackings[i] for i in half],
                                                       loop)):
                results[i] = result
    return results  # type: ignore[return-value]


def pack_id(run_keys: Sequence[str]) -> str:
    """A pack's name: the same runs make the same pack."""
    return "pack-" + hashlib.sha1(" ".join(sorted(run_keys)).encode()).hexdigest()[:8]


def _train_pack(plans: list[Plan], folders: list[Path], reporters: list, trackings: list, loop: LoopOptions,
                resume_step: int = 0) -> list[dict[str, Any] | Exception] | _OutOfMemory:
    """Build, train, test and save the pack of `plans` (claimed, none finished); each run's result, or
    the exception that failed the pack for each run still in it (recorded failed, with its traceback;
    the runs that left the pack keep their results), or _OutOfMemory with nothing recorded for the
    runs still to train (returned, not raised: once this frame is gone nothing holds the pack's
    model). `resume_step` > 0: every run goes on from its checkpoint of that step. `trackings`: each
    run's tracking config; each run is its own tracker run, ended as its result is written (as alone:
    with its test metrics), or failed with the pack."""
    t_start = time.perf_counter()
    keys = [p.spec.run_key for p in plans]
    info = {"id": pack_id(keys), "size": len(plans), "runs": keys}
    resumed = {"resumed_from_step": resume_step} if resume_step else {}
    bases = [{**base_record(p), "pack": info, **resumed} for p in plans]
    say(f"{info['id']}: {len(plans)} runs trained together over one {plans[0].spec.model.name}: "
        + ", ".join(p.spec.slug for p in plans))
    done: list[dict[str, Any] | Exception | None] = [None] * len(plans)
    pack, members = None, []
    try:
        first, tokenizer = _build_alone(plans[0])
        params = [checked_params(first, plans[0])]

        def others():
            for plan in plans[1:]:
                model, _ = _build_alone(plan)
                params.append(checked_params(model, plan))
                yield model

        pack = pack_models(first, others(), loop.pack_product)
        info["product"] = pack.took  # kept up to date by its steps: each run's result says the way they took
        if loop.compile:
            pack.compiled = PackCompile(pack)
            info["compile"] = pack.compiled.record  # kept up to date too: what its steps compiled
        load_s = time.perf_counter() - t_start
        members = [_member(pack, plan, i, folder, reporter, tokenizer)
                   for i, (plan, folder, reporter) in enumerate(zip(plans, folders, reporters))]
        for m, plan, p, tracking, folder, base in zip(members, plans, params, trackings, folders, bases):
            m.tracker = make_tracker(tracking, folder, plan.spec.slug, base["config"])
            say(f"{plan.spec.slug}: {p['trainable']:,} trainable of {p['total']:,} parameters "
                f"({p['trainable_pct']:.2f}%), {p['n_adapted_modules']} adapted modules; run key {plan.spec.run_key}")
        task = plans[0].task
        losses = classification_losses if task.spec.kind == "classification" else sft_losses

        def left(m: Member) -> None:  # written as it leaves: an interrupted pack keeps it
            i = members.index(m)
            base = {**bases[i], "params": params[i]}
            try:  # each writer first checks that the run is still ours (records.still_ours)
                if m.outcome.pruned_at is not None:
                    done[i] = pruned_result(folders[i], base, m.outcome, load_s, t_start)
                else:
                    done[i] = diverged_result(folders[i], base, m.outcome, load_s, t_start)
            except RunClaimedError as e:
                done[i] = _claimed(e, plans[i])
                return
            _end_tracker(m, {}, True)
            shutil.rmtree(folders[i] / TRAINER_DIR, ignore_errors=True)

        evaluate = _evaluator(pack, task, tokenizer, task.eval, plans[0].spec.train, plans[0].head)
        train_pack(pack, members, evaluate, losses, loop.step_sleep_s, on_leave=left, save_steps=loop.save_steps,
                   resume_step=resume_step)
        finishing = [i for i, result in enumerate(done) if result is None]
        _finish(pack, plans, members, bases, params, folders, finishing, done, tokenizer, load_s, t_start)
    except Exception as e:
        oom = memory.out_of_memory(e)
        if oom is not None:
            return _OutOfMemory(memory.ran_out(oom, getattr(pack, "model", None)), done)
        for i, (folder, base) in enumerate(zip(folders, bases)):
            if done[i] is None:  # still in the pack: it fails with it
                if pack is not None:  # a model that could not be built is not a run to keep failed (as alone)
                    record_failure(folder, base, e, t_start)
                done[i] = e
    finally:
        for m in members:  # those still running: failed, out of memory, interrupted (as alone)
            _end_tracker(m, {}, False)
    return done  # type: ignore[return-value]


def _end_tracker(m: Member, final: Mapping[str, Any], ok: bool) -> None:
    """End the run's tracker run (with `final`, its test metrics), once (lifecycle.close_tracker)."""
    close_tracker(m.tracker, final, ok, m.label)
    m.tracker = Tracker()


def _claimed(error: RunClaimedError, plan: Plan) -> dict[str, Any]:
    """The outcome of a run another process has claimed (before the pack could, or by taking the
    claim over while the pack stalled: records.still_ours): that process's result stands; the
    driver waits for it."""
    return {"claimed_by": error.holder, "run_key": plan.spec.run_key}


def _build_alone(plan: Plan):
    """The run's model as its run alone builds it: seeded, loaded, its method applied."""
    spec = plan.spec
    torch.manual_seed(spec.train.seed)  # a new classification head's init follows the seed, as alone
    model, tokenizer, notes = loading.load_with_notes(spec.model, plan.head, plan.task.num_labels,
                                                      labels=plan.task.labels)
    for line in new_weight_notes(plan, notes):
        say(f"{spec.slug}: {line}")
    return methods.prepare(model, spec, plan.head, list(plan.targets)), tokenizer


def _member(pack: PackedModel, plan: Plan, i: int, folder: Path, reporter, tokenizer) -> Member:
    """The run's place in the loop, with the Trainer its run alone would build (never trained)."""
    spec = plan.spec
    data = tasks.training_data(plan.task, tokenizer, spec.train, plan.head)
    trainer = make_trainer(pack.model, tokenizer, data, spec.train, plan.head, folder / TRAINER_DIR)
    if plan.task.spec.kind != "classification":
        from . import lm_head  # imports trl: classification packs do without it

        if trainer.plain_loss or not lm_head.plain_head(pack.model):
            raise NotImplementedError(f"{spec.model.name}: a pack computes the SFT loss on a plain LM head "
                                      f"only; train these runs with hydra.launcher.pack=false")
    return Member(adapter_name(i), spec.slug, spec.train, trainer, ProgressFile(folder / PROGRESS_FILE), reporter)


def _evaluator(pack: PackedModel, task, tokenizer, rows, train, head: str):
    """adapters -> each one's metrics on `rows`. Classification: one forward of the pack a batch,
    each run on its copy of the batch; causal-LM tasks: the task's evaluator, once a run (scoring and
    generating batches of their own shapes)."""
    if task.spec.kind != "classification":
        alone = tasks.evaluator(task, tokenizer, rows, train, head)

        def evaluate_each(adapters):
            results = []
            for adapter in adapters:
                with pack.alone(adapter):
                    results.append(alone(pack.model))
            return results
        return evaluate_each

    encoded = classification.encode(rows, tokenizer, task.label_ids, train.max_length)
    on_cpu = next(pack.model.parameters()).device.type == "cpu"

    def evaluate(adapters):
        # On a CPU a forward of every run's eval_batch_size rows at once makes tensors over glibc's mmap
        # threshold, mapped and faulted in afresh each forward. 9 runs of the embedded default on its 1,000
        # test rows (2 cores): 38.7-41.0 s at 64 rows a run (576 a forward), 24-31 s at 2 to 16 a run, 46 s
        # at 1, 24-25 s for the runs alone (bench/pack_eval.py). So there the runs share one
        # eval_batch_size, at least 8 rows each; an accelerator takes each run's whole batch at once
        rows_each = train.eval_batch_size
        if on_cpu:
            rows_each = min(rows_each, max(8, rows_each // len(adapters)))

        def forward(batch):
            n = len(batch["input_ids"])
            stacked = {k: v.repeat(len(adapters), *([1] * (v.dim() - 1))) for k, v in batch.items()}
            with pack.blocks([Block(a, j * n, (j + 1) * n) for j, a in enumerate(adapters)]):
                return list(pack.model(**stacked).logits.split(n))
        return classification.evaluate_many(forward, pack.model, tokenizer, encoded, rows_each)

    return evaluate


def _task_lengths(plan: Plan, tokenizer):
    """The pack's task's token lengths, counted once for all its runs' `cost.work` records (one task, one
    max_length, one tokenizer); None where they cannot be counted (each record then counts, and fails, alone)."""
    try:
        return task_lengths_of(plan, tokenizer)
    except Exception:
        return None


def _finish(pack, plans, members, bases, params, folders, finishing, done, tokenizer, load_s, t_start) -> None:
    """Test every run that trained to its end, save its adapter, write its result."""
    if not finishing:
        return
    task = plans[0].task
    t1 = time.perf_counter()
    adapters = [members[i].adapter for i in finishing]
    tests = _evaluator(pack, task, tokenizer, task.test, plans[0].spec.train, plans[0].head)(adapters)
    more = {name: _evaluator(pack, task, tokenizer, rows, plans[0].spec.train, plans[0].head)(adapters)
            for name, rows in task.tests.items()}
    eval_s = time.perf_counter() - t1
    lengths = _task_lengths(plans[0], tokenizer)
    for j, i in enumerate(finishing):
        m, folder, plan = members[i], folders[i], plans[i]
        try:
            still_ours(folder)
        except RunClaimedError as e:
            done[i] = _claimed(e, plan)
            continue
        target = folder / "adapter"
        with saving_weights(target, "adapter_model.safetensors"):  # a full disk stops the sweep, as alone
            pack.save_adapter(m.adapter, target)
            methods.save_labels(pack.model, target)
        artifacts = {"kind": "adapter", "path": "adapter", "size_bytes": store.folder_size(target)}
        done[i] = done_result(folder, {**bases[i], "params": params[i]}, task, tests[j],
                              {name: results[j] for name, results in more.items()},
                              m.outcome, timing_record(load_s, m.outcome, eval_s, t_start),
                              store.weights_memory(pack.model, plan.spec.method, plan.base_total), artifacts,
                              cost_record(plan, tokenizer, lengths=lengths))
        _end_tracker(m, {f"test_{k}": v for k, v in tests[j].items()}, True)
        shutil.rmtree(folder / TRAINER_DIR, ignore_errors=True)  # its result is written: checkpoints serve no more
        say(f"{plan.spec.slug}: test {headline(tests[j])} | {params[i]['trainable']:,} trainable params | "
            f"{done[i]['timing']['total_s']:.0f}s (in {bases[i]['pack']['id']}) | {folder / store.RESULT_FILE}")
