"""After a sweep: merge a run's adapter into its base model, or load several runs' adapters on one base.

`merge(RUN_DIR)` (the command `python -m lorasweep.export RUN_DIR --merge [--out DIR]`)
writes a standalone model (safetensors + config) and its tokenizer to DIR (default RUN_DIR/merged):
`AutoModelFor...from_pretrained(DIR)` needs neither peft nor lorasweep. From Python,
`load_adapters([run_a, run_b])` puts both runs' adapters on one base model; `set_adapter(name)`
switches between them (the tutorials' one-base, many-adapters serving).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from ..config.spec import ADAPTER_METHODS, ModelSpec, TaskSpec, task_from_defining
from ..errors import ExportError, UnreadableResultError
from ..model import loading, tokens
from ..tasks import task as tasks
from . import store
from .model_facts import task_head


@dataclass(frozen=True)
class RunArtifact:
    folder: Path
    slug: str
    method: str
    model: ModelSpec
    task: TaskSpec
    adapter: Path
    tokens: dict        # the run's token injection ({} without): re-done on the base before loading
    seed: int


def read_run(folder: str | Path) -> RunArtifact:
    """The finished adapter run in `folder`, or an ExportError saying why it is not one."""
    folder = Path(folder)
    try:
        result = store.read_result(folder)
    except UnreadableResultError as e:
        raise ExportError(f"{e}: not a finished run to export") from None
    if result is None:
        runs = sorted(found.parent for found in folder.glob(f"*/{store.RESULT_FILE}"))
        if runs:  # the results store itself
            raise ExportError(f"{folder}: a results store of {len(runs)} run{'s' * (len(runs) != 1)}, not a run: "
                              f"pass one run's folder, e.g. {runs[0]}")
        raise ExportError(f"{folder}: no readable {store.RESULT_FILE}; pass a run's folder from the results store")
    if result.get("status") != "done":
        raise ExportError(f"{folder}: the run is {result.get('status')!r}, not done: nothing to export")
    cfg, method = result["config"], result["config"]["method"]
    if method not in ADAPTER_METHODS:
        where = f"its whole model is already saved in {folder / 'model'}" if method == "full" else "nothing was trained"
        raise ExportError(f"{folder}: method {method!r} has no adapter to merge ({where}); "
                          f"export works on {', '.join(ADAPTER_METHODS)} runs")
    artifacts = result.get("artifacts") or {}
    adapter = folder / artifacts.get("path", "adapter")
    if not (adapter / "adapter_config.json").is_file():
        raise ExportError(f"{folder}: the adapter folder {adapter} is missing")
    return RunArtifact(folder=folder, slug=result.get("slug", folder.name), method=method,
                       model=ModelSpec(**cfg["model"]), task=task_from_defining(cfg["task"]), adapter=adapter,
                       tokens=cfg.get("tokens") or {}, seed=int(cfg["train"].get("seed", 0)))


def _base(run: RunArtifact):
    task = tasks.load_task(run.task)  # classification: the number of labels sizes the head
    model, tokenizer = loading.load_model(run.model, task_head(run.model, run.task.kind), task.num_labels,
                                          labels=task.labels)
    if run.tokens:  # the same ids and (deterministic) initial rows as in the run
        tokens.inject(model, tokenizer, tuple(run.tokens["new"]), run.tokens["init"], run.seed)
    return model, tokenizer


def load_adapted(folder: str | Path):
    """(the run's base model with its adapter, tokenizer): the model as it was evaluated."""
    from peft import PeftModel

    run = read_run(folder)
    base, tokenizer = _base(run)
    return PeftModel.from_pretrained(base, run.adapter), tokenizer


EXPORT_RECORD = "lorasweep_export.json"  # in every merged export: which run it is


def merge(folder: str | Path, out: str | Path | None = None) -> Path:
    """Merge the run's adapter into its base weights and save model + tokenizer; returns the folder."""
    run = read_run(folder)
    target = Path(out) if out else run.folder / "merged"
    check_export_target(target)  # before the model loads
    model, tokenizer = load_adapted(folder)
    merged = model.merge_and_unload()  # W + (alpha/r) B A (DoRA: with its magnitudes) in place
    merged.save_pretrained(target)
    tokenizer.save_pretrained(target)
    store.write_json_atomically(target / EXPORT_RECORD, {
        "run": run.slug, "method": run.method, "adapter": str(run.adapter.resolve())})
    return target


def check_export_target(target: Path) -> None:
    """A merged model is saved into a new or empty folder, or over an earlier export (which it replaces);
    never into a folder of other files, whose config.json and weights it would overwrite (a base model's,
    a project's)."""
    if target.exists() and not target.is_dir():
        raise ExportError(f"--out {target} is a file: give a new or empty folder for the merged model")
    if not target.is_dir() or (target / EXPORT_RECORD).is_file():
        return
    held = sorted(p.name for p in target.iterdir())
    if held:
        more = f", ... ({len(held)} in all)" if len(held) > 3 else ""
        raise ExportError(f"--out {target} holds other files ({', '.join(held[:3])}{more}), which the merged model "
                          f"would overwrite: give a new or empty folder, or an earlier export's")


def load_adapters(folders: Sequence[str | Path]):
    """One base model carrying the adapters of several runs of that base, named by run slug + key.

    Returns (PeftModel with the first adapter active, tokenizer, adapter names in order)."""
    from peft import PeftModel

    runs = [read_run(f) for f in folders]
    if not runs:
        raise ExportError("load_adapters needs at least one run folder")
    first = runs[0]
    for run in runs[1:]:
        if run.tokens != first.tokens:
            raise ExportError(f"{run.folder}: its injected tokens differ from {first.folder}'s; adapters share one base")
        if run.model != first.model or task_head(run.model, run.task.kind) != task_head(first.model, first.task.kind):
            raise ExportError(f"{run.folder}: its base model ({run.model.name}, {run.task.kind}) differs from "
                              f"{first.folder} ({first.model.name}, {first.task.kind}); adapters share one base")
    base, tokenizer = _base(first)
    names = [run.folder.name for run in runs]
    model = PeftModel.from_pretrained(base, first.adapter, adapter_name=names[0])
    for name, run in zip(names[1:], runs[1:]):
        model.load_adapter(run.adapter, adapter_name=name)
    model.set_adapter(names[0])
    return model, tokenizer, names
