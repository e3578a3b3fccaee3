"""One run's lifecycle: spec -> (skip if done) -> data -> modules -> model + method -> train -> evaluate -> result.

Everything that can be wrong with a config or a data file fails before a weight is read. A run
that fails after that still leaves a result (status failed, with the reason) and its traceback.
"""
from __future__ import annotations

import sys
import time
import traceback
from pathlib import Path
from typing import Any, Mapping

import torch

from . import methods, models, projections, results, tasks
from .spec import RunSpec, from_config
from .tracking import check_tracking, make_tracker
from .training import train


def run_from_config(cfg: Mapping[str, Any]) -> dict[str, Any]:
    """Validate a composed config and run it; returns the result dict (also written to disk)."""
    spec = from_config(cfg)
    tracking = dict(cfg.get("tracking") or {})
    check_tracking(tracking)
    budget = (cfg.get("budget") or {}).get("max_trainable")
    return execute(spec, Path(cfg.get("results_dir", "results")), tracking, budget)


def execute(spec: RunSpec, results_dir: Path, tracking: Mapping[str, Any] | None = None,
            max_trainable: int | None = None) -> dict[str, Any]:
    folder = results.run_dir(results_dir, spec.slug, spec.run_key)
    previous = results.read_result(folder)
    if previous and previous.get("status") == "done":
        _say(f"{spec.slug}: already done ({folder}), not trained again")
        return previous
    t_start = time.perf_counter()
    task = tasks.load_task(spec.task)  # data errors surface here, before any weight is read
    targets = _resolve_targets(spec, task)
    base = {"run_key": spec.run_key, "slug": spec.slug, "config": spec.defining(),
            "env": results.env_info()}
    try:
        return _train_and_evaluate(spec, task, targets, folder, base, tracking or {}, max_trainable, t_start)
    except Exception as e:
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "traceback.txt").write_text(traceback.format_exc())
        results.write_result(folder, {**base, "status": "failed", "reason": f"{type(e).__name__}: {e}",
                                      "timing": {"total_s": time.perf_counter() - t_start}})
        raise


def _resolve_targets(spec: RunSpec, task: tasks.Task) -> list[str]:
    """The module names the projection code adapts, from a meta-device skeleton (no weights)."""
    if spec.method not in methods.ADAPTER_METHODS:
        return []
    skeleton = models.build_on_meta(spec.model, task.head, task.num_labels)
    return projections.resolve_modules(skeleton, spec.model.family, spec.lora.proj, skeleton.config)


def _train_and_evaluate(spec, task, targets, folder, base, tracking, max_trainable, t_start):
    torch.manual_seed(spec.train.seed)
    t0 = time.perf_counter()
    model, tokenizer = models.load_model(spec.model, task.head, task.num_labels)
    model = methods.prepare(model, spec, task.head, targets)
    load_s = time.perf_counter() - t0
    trainable, total = methods.count_parameters(model)
    adapted = methods.adapted_modules(model)
    if spec.method in methods.ADAPTER_METHODS and sorted(adapted) != sorted(targets):
        raise RuntimeError(f"peft adapted {len(adapted)} modules, the projection code promised "
                           f"{len(targets)}: {sorted(set(adapted) ^ set(targets))[:5]}")
    params = {"trainable": trainable, "total": total, "trainable_pct": 100.0 * trainable / total,
              "predicted": None, "adapted_modules": adapted, "n_adapted_modules": len(adapted)}
    base = {**base, "params": params}
    if max_trainable is not None and trainable > max_trainable:
        reason = f"{trainable:,} trainable parameters exceed the budget of {max_trainable:,}"
        _say(f"{spec.slug}: skipped, {reason}")
        return results.write_result(folder, {**base, "status": "skipped_budget", "reason": reason})

    _say(f"{spec.slug}: {trainable:,} trainable of {total:,} parameters ({params['trainable_pct']:.2f}%), "
         f"{len(adapted)} adapted modules; run key {spec.run_key}")
    tracker = make_tracker(tracking, folder, spec.slug, base["config"])
    ok = False
    try:
        outcome = None
        if spec.method != "none":
            train_data, eval_data, collator = tasks.training_data(task, tokenizer, spec.train)
            outcome = train(model, tokenizer, spec.task.kind, train_data, eval_data,
                            tasks.evaluator(task, tokenizer, task.eval, spec.train), spec.train,
                            folder / "trainer", tracker, collator)
            _remove_if_empty(folder / "trainer")  # save_strategy=no: the Trainer's folder stays empty
        t1 = time.perf_counter()
        test = tasks.evaluator(task, tokenizer, task.test, spec.train)(model)
        eval_s = time.perf_counter() - t1
        artifacts = _save(model, spec, folder)
        result = {**base, "status": "done", "reason": "",
                  "metrics": {"test": test},
                  "objective": {"name": "test.accuracy", "value": test["accuracy"], "direction": "maximize"},
                  "curve": outcome.curve if outcome else [],
                  "timing": _timing(load_s, outcome, eval_s, t_start),
                  "memory": results.peak_memory(), "artifacts": artifacts}
        result = results.write_result(folder, result)
        tracker.summary({f"test_{k}": v for k, v in test.items()})
        ok = True
    finally:
        tracker.finish(ok)
    _say(f"{spec.slug}: test accuracy {test['accuracy']:.3f} ± {test['accuracy_se']:.3f} (n={test['n']}) | "
         f"{trainable:,} trainable params | {result['timing']['total_s']:.0f}s | {folder / results.RESULT_FILE}")
    return result


def _save(model, spec: RunSpec, folder: Path) -> dict[str, Any]:
    """The adapter in PEFT format (lora/dora) or the whole model (full); nothing for none."""
    if spec.method == "none":
        return {}
    target = folder / ("adapter" if spec.method in methods.ADAPTER_METHODS else "model")
    model.save_pretrained(target)
    # the path is relative to the run's folder, so a results store can be moved or copied whole
    return {"kind": target.name, "path": target.name, "size_bytes": results.folder_size(target)}


def _timing(load_s: float, outcome, eval_s: float, t_start: float) -> dict[str, float]:
    train_s = outcome.train_seconds if outcome else 0.0
    examples = outcome.examples if outcome else 0
    return {"load_s": round(load_s, 3), "train_s": round(train_s, 3),
            "train_eval_s": round(outcome.eval_seconds, 3) if outcome else 0.0,
            "eval_s": round(eval_s, 3), "total_s": round(time.perf_counter() - t_start, 3),
            "steps": outcome.steps if outcome else 0,
            "train_examples_per_s": round(examples / train_s, 2) if train_s else None}


def _remove_if_empty(path: Path) -> None:
    if path.is_dir() and not any(path.iterdir()):
        path.rmdir()


def _say(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)
