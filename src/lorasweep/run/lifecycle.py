"""One run's lifecycle: plan -> (skip if done) -> model + method -> data -> train -> evaluate -> result.

    run_config(cfg)            what `python launch.py` and every sweep worker call
      plan_run(cfg)            run/plan.py: validated spec, modules, exact count; no weight read
      run_planned(plan, ...)   below: load, adapt, train (run/loop.py), evaluate, save, result.json

Everything that can be wrong with a config or a data file, and a results_dir that cannot be written,
fails before a weight is read. A run that fails after that still leaves a result (status failed,
with the reason) and its traceback, as far as the store still takes them: a write the store refuses
(a full disk) is raised as a StoreError naming the path and the cause. A run whose training loss
becomes NaN or infinite is not a failure but a result: status diverged, with the step, the last
finite loss and its curve so far; it is not tested, saved or trained again (the same config
diverges again: a run is deterministic in its seed). A run that runs out of accelerator memory is
failed with a reason that names the device and the settings that drive memory (AcceleratorMemoryError),
and its memory is given back before the error leaves (run/memory.py): the next run in the same worker
does not inherit it. A run whose worker process is killed under it cannot record itself: its driver
does (record_worker_death, status failed with the signal). The records themselves: run/records.py.
"""
from __future__ import annotations

import shutil
import time
from pathlib import Path
from typing import Any, Callable, Mapping

import torch

from ..config.spec import RunSpec
from ..console import say
from ..errors import ModelUnavailableError, RunClaimedError, UnreadableResultError
from ..model import loading, methods, tokens
from ..model import params as params_of
from ..tasks import task as tasks
from ..tasks.metrics import headline
from . import memory, store
from .claims import Claim
from .loop import LoopOptions, Reporter, train
from .plan import Plan, plan_run
from .preflight import preflight
from .progress import PROGRESS_FILE
from .records import (TRAINER_DIR, base_record, diverged_result, done_result, pruned_result, record_failure, record_over_budget,
                      saving_weights, still_ours, store_write, timing_record)
from .tracking import make_tracker


# What trains a claimed run in place of this process's own load-and-train: (plan, folder) -> its result.
# A worker given several GPUs passes its data-parallel ranks' (executors/data_parallel).
TrainFn = Callable[[Plan, Path], dict]


def run_config(cfg: Mapping[str, Any], reporter: Reporter | None = None, *, triaged: bool = False,
               trainer: TrainFn | None = None) -> dict[str, Any]:
    """Validate a composed config and run it; returns the result dict (also written to disk).
    `triaged`: a sweep driver has already told the user what the store holds for this run.
    `trainer`: trains the run once it is claimed, instead of this process (see TrainFn)."""
    results_dir = preflight(cfg, in_sweep=triaged)  # the config's values, its tracker, an unwritable store
    plan = plan_run(cfg)  # data, model and projection errors surface here, before any weight is read
    return run_planned(plan, results_dir, tracking=dict(cfg.get("tracking") or {}), reporter=reporter,
                       loop=LoopOptions.from_config(cfg.get("train") or {}), triaged=triaged, trainer=trainer)


def run_planned(plan: Plan, results_dir: Path, *, tracking: Mapping[str, Any] | None = None,
                reporter: Reporter | None = None, loop: LoopOptions = LoopOptions(),
                triaged: bool = False, trainer: TrainFn | None = None) -> dict[str, Any]:
    """The lifecycle of a planned run, in this process (or `trainer`'s); its result lands in `results_dir`.
    RunClaimedError: another process is training this run now (lorasweep.run.claims)."""
    folder = plan.folder(results_dir)
    previous = finished_result(plan, folder, triaged, say_unreadable=not triaged)
    if previous:
        return previous
    if plan.over_budget:
        return record_over_budget(plan, results_dir)
    with Claim(folder):
        # it may have finished elsewhere between the look above (or the driver's) and our claim
        return (finished_result(plan, folder, triaged, say_unreadable=False)
                or (trainer(plan, folder) if trainer else load_and_train(plan, folder, tracking, reporter, loop)))


def finished_result(plan: Plan, folder: Path, triaged: bool, say_unreadable: bool) -> dict[str, Any] | None:
    """The run's stored result if it is finished (never trained again), else None; an unreadable
    result.json is none (it is trained again, and overwritten). In a sweep's worker (`triaged`: its
    driver saw no finished result) a finished one was written by another process since: that raises
    RunClaimedError, and the driver reports the run as trained elsewhere, not trained by its worker."""
    try:
        previous = store.read_result(folder)
    except UnreadableResultError as e:
        if say_unreadable:
            say(f"{plan.spec.slug}: {e}, training it again")
        return None
    if not (previous and previous.get("status") in store.FINISHED):
        return None
    if triaged:
        raise RunClaimedError(folder, "another process, which has just finished it")
    say(f"{plan.spec.slug}: already {previous['status']} ({folder}), not trained again")
    return previous


def load_and_train(plan: Plan, folder: Path, tracking: Mapping[str, Any] | None, reporter: Reporter | None,
                    loop: LoopOptions, workdir: Path | None = None) -> dict[str, Any]:
    """Load, train, evaluate and save into `folder`; the Trainer's checkpoints go to `workdir` (default
    folder/trainer: a data-parallel rank other than 0 writes into a scratch folder but resumes from
    rank 0's checkpoints)."""
    spec = plan.spec
    t_start = time.perf_counter()
    base = base_record(plan)
    torch.manual_seed(spec.train.seed)  # before loading: a new classification head's init follows the seed
    model, tokenizer, notes = _load(plan, folder, base, t_start)
    try:
        return _train_and_evaluate(plan, model, tokenizer, folder, base, tracking or {}, t_start, reporter, loop,
                                   notes, workdir)
    except Exception as e:
        oom = memory.out_of_memory(e)  # out of accelerator memory: one line, and its memory given back below
        # the store refused a write (a full disk): one line too
        failure = memory.failure(oom, model, spec.method) if oom else store.storage_error(e, folder)
        record_failure(folder, base, failure or e, t_start)
        if oom is None:
            if failure is not None and failure is not e:
                raise failure from e
            raise
        del oom
    # Out of accelerator memory: raised from here, outside the except block, so that nothing holds the
    # torch error or its traceback, whose frames hold the model, the Trainer and its optimizer. With
    # the model let go of too, release() gives their memory back: the next run of this worker gets it.
    del model
    memory.release()
    raise failure


def _load(plan: Plan, folder: Path, base: dict, t_start: float):
    """The run's model, tokenizer and load notes. A model that cannot be had (no hub, no cache) is the
    environment's problem, said once to the user, not a failed run to keep; any other failure (a weights
    file cut short, one that does not fit in the accelerator's memory) is the run's, recorded as a
    training one is (below), with its traceback.txt."""
    spec = plan.spec
    try:
        return loading.load_with_notes(spec.model, plan.head, plan.task.num_labels,
                                       quantization=methods.quantization_config(spec.method), labels=plan.task.labels)
    except ModelUnavailableError:
        raise
    except Exception as e:
        oom = memory.out_of_memory(e)
        if oom is None:
            record_failure(folder, base, e, t_start)
            raise
        failure = memory.loading_failure(oom, spec.method)
        record_failure(folder, base, failure, t_start)
        del oom
    memory.release()  # outside the except block: the error's frames, which held the weights, are gone
    raise failure


def _train_and_evaluate(plan: Plan, model, tokenizer, folder: Path, base: dict, tracking: Mapping[str, Any],
                        t_start: float, reporter: Reporter | None, loop: LoopOptions,
                        notes: loading.LoadNotes = loading.LoadNotes(), workdir: Path | None = None):
    workdir = workdir or folder / TRAINER_DIR
    spec, task = plan.spec, plan.task
    token_ids = tokens.inject(model, tokenizer, spec.tokens.new, spec.tokens.init, spec.train.seed)
    if token_ids != plan.token_ids:
        raise RuntimeError(f"injected tokens got ids {token_ids}, the plan counted {plan.token_ids}")
    model = methods.prepare(model, spec, plan.head, list(plan.targets), token_ids)
    initial = methods.save_initial(model, spec, folder)  # pissa: needed to convert the trained adapter
    load_s = time.perf_counter() - t_start
    params = checked_params(model, plan)
    base = {**base, "params": params}
    auto = f" (r={spec.lora.r}, the largest within the budget)" if plan.auto_rank else ""
    say(f"{spec.slug}: {params['trainable']:,} trainable of {params['total']:,} parameters "
         f"({params['trainable_pct']:.2f}%){auto}, {params['n_adapted_modules']} adapted modules; "
         f"run key {spec.run_key}")
    if plan.covers:
        say(f"{spec.slug}: lora.proj=all adapts {plan.covers}")
    for line in new_weight_notes(plan, notes):
        say(f"{spec.slug}: {line}")
    tracker = make_tracker(tracking, folder, spec.slug, base["config"])
    ok, final = False, {}
    try:
        outcome, prediction = None, None
        if spec.method != "none":
            prediction = _prediction(plan, folder, tokenizer)
            outcome = train(model, tokenizer, tasks.training_data(task, tokenizer, spec.train, plan.head),
                            tasks.evaluator(task, tokenizer, task.eval, spec.train, plan.head), spec.train,
                            head=plan.head, workdir=workdir, tracker=tracker,
                            reporter=reporter, loop=loop, progress=folder / PROGRESS_FILE,
                            predicted_s=prediction.training_s if prediction else None)
            if outcome.resumed_from_step is not None:
                base = {**base, "resumed_from_step": outcome.resumed_from_step}
            if outcome.pruned_at is not None:
                result = pruned_result(folder, base, outcome, load_s, t_start)
                ok = True
                return result
            if outcome.diverged is not None:
                result = diverged_result(folder, base, outcome, load_s, t_start)
                ok = True  # a result, not a failure
                return result
        t1 = time.perf_counter()
        test = tasks.evaluator(task, tokenizer, task.test, spec.train, plan.head)(model)
        # more test sets (the Qwen3 tutorial reports two MCQ sets, each with its SE)
        more = {name: tasks.evaluator(task, tokenizer, rows, spec.train, plan.head)(model)
                for name, rows in task.tests.items()}
        eval_s = time.perf_counter() - t1
        artifacts = _save(model, tokenizer if token_ids else None, spec, folder, initial)
        result = done_result(folder, base, task, test, more, outcome, timing_record(load_s, outcome, eval_s, t_start),
                             store.weights_memory(model, spec.method, plan.base_total), artifacts,
                             cost_record(plan, tokenizer, prediction))
        final = {f"test_{k}": v for k, v in test.items()}
        ok = True
    finally:
        if ok:  # checkpoints serve a resume only; until the result is written, a kill resumes from them
            shutil.rmtree(folder / TRAINER_DIR, ignore_errors=True)
        close_tracker(tracker, final, ok, spec.slug)
    for name, m in more.items():
        say(f"{spec.slug}: test set {name}: {headline(m)}")
    say(f"{spec.slug}: test {headline(test)} | "
        f"{params['trainable']:,} trainable params | {result['timing']['total_s']:.0f}s | {folder / store.RESULT_FILE}")
    return result


def _prediction(plan: Plan, folder: Path, tokenizer):
    """The run's predicted cost on this machine (run/predict.py, calibrated on the store's finished
    runs), or None: its training_s (evaluations included) is what the progress line and file compare
    the measured rate with, its work what the result records. A look: a prediction that fails costs
    the run nothing."""
    from .calibration import machine_fingerprint
    from .predict import Target, predict

    cuda = torch.cuda.is_available()
    target = Target("cuda" if cuda else "cpu", machine_fingerprint(torch.cuda.get_device_name(0) if cuda else None),
                    torch.get_num_threads())
    try:
        return predict(plan, folder.parent, target, tokenizer)
    except Exception:
        return None


def cost_record(plan: Plan, tokenizer, prediction=None, lengths=None) -> dict[str, Any] | None:
    """The run's work as run/cost counts it, for result.json (`cost.work`): what calibrates the next
    predictions on this machine (run/calibration). `prediction`: the run's predicted cost, whose work
    it is, or `lengths`: its task's token lengths (either counted once: the count tokenizes every row
    of the task). A look: a count that fails costs the run nothing."""
    from .predict import work

    try:
        counted = prediction.work if prediction is not None else work(
            plan, "cuda" if torch.cuda.is_available() else "cpu", tokenizer, lengths)
        return {"work": counted.as_record()}
    except Exception:
        return None


def close_tracker(tracker, final: Mapping[str, Any], ok: bool, slug: str) -> None:
    """Send the tracker the test metrics (`final`, if any) and end its run. Its failure here (a server
    answering 503, a full disk under its files) is said and goes no further: the run's result is
    written already and stands, and a run that failed keeps its own error."""
    try:
        if final:
            tracker.summary(final)
        tracker.finish(ok)
    except Exception as e:
        say(f"{slug}: the tracker failed to end its run ({type(e).__name__}: {e}); the run's result stands")


def new_weight_notes(plan: Plan, notes: loading.LoadNotes) -> list[str]:
    """What the checkpoint did not have, said once in place of transformers' load report: a
    classification head is new by design (a line on whether it trains), anything else is unusual."""
    heads = [n for n in notes.new if n.split(".")[0] in params_of.SEQ_CLS_HEADS]
    others = [n for n in notes.new if n not in heads]
    lines = []
    if heads:
        method = plan.spec.method
        fate = ("not trained (method=none evaluates the base model under this random head)" if method == "none"
                else "trained with the rest of the model" if method == "full" else "trained with the adapters")
        size = sum(notes.new[n] for n in heads)
        lines.append(f"the classification head ({plan.task.num_labels} labels, {size:,} parameters) is new: "
                     f"it starts at random (seed {plan.spec.train.seed}) and is {fate}")
    if others:
        lines.append(f"{len(others)} weights are not in the checkpoint and start at random: {_few(others)}")
    if notes.layers_left_out:
        kept = plan.spec.model.layers
        lines.append(f"the model keeps the first {kept} of the checkpoint's {kept + notes.layers_left_out} layers "
                     f"(model.layers={kept}): the top {notes.layers_left_out} are not loaded")
    if notes.unused:
        lines.append(f"{len(notes.unused)} weights of the checkpoint are not used by this model: {_few(notes.unused)}")
    return lines


def _few(names, shown: int = 4) -> str:
    names = list(names)
    return ", ".join(names[:shown]) + (f" and {len(names) - shown} more" if len(names) > shown else "")


def checked_params(model, plan: Plan) -> dict[str, Any]:
    """peft's count of the built model, checked against the plan's: a difference is a bug, not a warning."""
    trainable, total = methods.count_parameters(model)
    adapted = methods.adapted_modules(model)
    if trainable != plan.predicted:
        raise RuntimeError(f"trainable parameters: predicted {plan.predicted:,} before loading, the built "
                           f"model has {trainable:,}; the budget arithmetic in lorasweep.model.params is wrong here")
    if sorted(adapted) != sorted(plan.targets):
        raise RuntimeError(f"peft adapted {len(adapted)} modules, the projection code promised "
                           f"{len(plan.targets)}: {sorted(set(adapted) ^ set(plan.targets))[:5]}")
    return {"trainable": trainable, "total": total, "trainable_pct": 100.0 * trainable / total,
            "predicted": plan.predicted, "adapted_modules": adapted, "n_adapted_modules": len(adapted)}


def _save(model, tokenizer, spec: RunSpec, folder: Path, initial: Path | None) -> dict[str, Any]:
    """The adapter in PEFT format (adapter methods) or the whole model (full); nothing for none.
    With injected tokens the tokenizer is saved beside it: the new ids are part of the model."""
    if spec.method == "none":
        return {}
    still_ours(folder)
    adapter = spec.method in methods.ADAPTER_METHODS
    target = folder / ("adapter" if adapter else "model")
    with saving_weights(target, "adapter_model.safetensors" if adapter else "model.safetensors"):
        if adapter:
            methods.save_adapter(model, spec, target, initial)
        else:
            model.save_pretrained(target)
    with store_write(target):
        if tokenizer is not None:
            tokenizer.save_pretrained(target)
    # the path is relative to the run's folder, so a results store can be moved or copied whole
    return {"kind": target.name, "path": target.name, "size_bytes": store.folder_size(target)}
