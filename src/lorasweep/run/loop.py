"""The training loop: transformers' Trainer for classification and seq2seq (completion on an
encoder-decoder), trl's SFTTrainer for causal-LM SFT (mcq, chat, completion).

Both trainers evaluate with the task's own evaluator (accuracy with its standard error, the same
code as the final test evaluation) every `train.eval_steps`, which yields the run's curve.

A run stops at the first non-finite training loss (TrainOutcome.diverged): nothing after it could
be worth evaluating, and the Trainer itself would hide it (logging_nan_inf_filter logs the average
of the finite losses instead).
"""
from __future__ import annotations

import json
import math
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping

import torch
from transformers import PrinterCallback, Trainer, TrainerCallback, TrainingArguments
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

from .. import compat
from ..config.checks import pack_product, save_steps, step_sleep_s
from ..config.spec import TrainSpec
from ..console import say
from ..errors import DataError
from ..tasks.metrics import headline
from ..tasks.task import TrainingData
from .compile_check import check_compile
from .progress import eta_seconds, versus_prediction
from .progress_file import ProgressFile
from .store import write_json_atomically
from .tracking import Tracker

Evaluator = Callable[[torch.nn.Module], dict]
Reporter = Callable[[int, dict], bool]  # (step, eval metrics) -> stop now? (a sweeper's pruner)


@dataclass(frozen=True)
class LoopOptions:
    """Loop settings that do not change what a run computes (so they are not in its run key)."""

    save_steps: int = 0         # checkpoint every N steps into the run's trainer/ folder (0: never)
    step_sleep_s: float = 0.0   # pause after each step: a tiny run watched, or stopped, mid-training
    compile: bool = False       # train.compile: torch.compile what trains (run/compile_check.py); same run
    pack_product: str = "auto"  # train.pack_product: how a pack's layers apply its adapters (model/adapter_pack)

    @classmethod
    def from_config(cls, train_cfg: Mapping[str, Any]) -> "LoopOptions":
        """train.save_steps: null checkpoints every eval_steps inside a SLURM job (a requeued run
        resumes) and never elsewhere; 0 never; N every N steps. train.step_sleep_s slows steps.
        train.compile: checked here, before any weight is read (ConfigError)."""
        save = save_steps(train_cfg)
        if save is None:
            save = int(train_cfg.get("eval_steps") or 50) if os.environ.get("SLURM_JOB_ID") else 0
        return cls(save_steps=int(save), step_sleep_s=step_sleep_s(train_cfg),
                   compile=check_compile(train_cfg.get("compile", False)), pack_product=pack_product(train_cfg))


@dataclass(frozen=True)
class Divergence:
    """Where the training loss stopped being a number: `step` is the optimizer step (1-based) whose
    loss was `loss` (nan, inf or -inf); the last finite loss before it, when this process saw one."""

    step: int
    loss: float
    last_finite_step: int | None = None
    last_finite_loss: float | None = None

    @property
    def reason(self) -> str:
        before = (f"last finite loss {self.last_finite_loss:.6g} at step {self.last_finite_step}"
                  if self.last_finite_step is not None else "no finite loss before it")
        return f"the training loss became {self.loss} at step {self.step} ({before})"


class _Diverged(Exception):
    """Raised out of Trainer.train at the first non-finite loss (caught in train())."""

    def __init__(self, divergence: Divergence):
        super().__init__(divergence.reason)
        self.divergence = divergence


class _TrainedAlready(Exception):
    """Raised out of Trainer.train when the checkpoint it resumes from is the run's last step."""


class _StopIfTrained(TrainerCallback):
    """Resuming from the last step's checkpoint (the run was stopped after training: in its test
    evaluation or its save), the Trainer would train a step past max_steps (it checks the count after
    a step only): training ends before it, the checkpoint's weights loaded."""

    def on_train_begin(self, args, state, control, **kwargs):
        if 0 < state.max_steps <= state.global_step:
            raise _TrainedAlready()


@dataclass
class TrainOutcome:
    curve: list[dict] = field(default_factory=list)
    steps: int = 0
    train_seconds: float = 0.0    # optimisation only: evaluations along the way are not counted
    eval_seconds: float = 0.0
    examples: int = 0
    final_train_loss: float | None = None
    pruned_at: int | None = None  # the step at which the reporter stopped the run
    resumed_from_step: int | None = None  # the checkpoint this run continued from (after a requeue)
    diverged: Divergence | None = None    # the training loss became NaN or infinite: training stopped there
    compiled: dict[str, int] | None = None  # train.compile: the graphs torch.compile made and its graph breaks


class _TaskEvaluation:
    """Mixin for a Trainer: evaluate() runs the task's evaluator and records a curve point."""

    task_evaluate: Evaluator
    outcome: TrainOutcome
    reporter: Reporter | None = None
    _last_finite: tuple[int, float] | None = None  # (step, loss) of the last finite training loss

    def training_step(self, model, inputs, *args, **kwargs):
        """The Trainer's step, then the divergence check on its loss: every micro-batch, whatever
        logging_steps is. A callback cannot do this exactly: on_step_end does not see the loss and
        on_log sees it every logging_steps only, after the Trainer's logging_nan_inf_filter has
        replaced a NaN by the mean of the finite losses. The check costs one device sync per step,
        which the Trainer already pays for its own isnan(loss) test (that filter). Raising here,
        before the optimizer step, leaves the Trainer's loop at once: no update, log or evaluation
        follows the bad loss."""
        loss = super().training_step(model, inputs, *args, **kwargs)
        value = float(loss)
        if self.args.world_size > 1:  # data parallel: every rank stops at the same step, or the others
            # would wait forever in the next step's gradient all-reduce; the mean is the global batch's loss
            value = float(self.accelerator.reduce(loss.detach().reshape(1), reduction="mean"))
        step = self.state.global_step + 1  # the optimizer step this micro-batch belongs to
        if not math.isfinite(value):
            last = self._last_finite
            raise _Diverged(Divergence(step, value, *(last or (None, None))))
        self._last_finite = (step, value)
        return loss

    def evaluate(self, eval_dataset=None, ignore_keys=None, metric_key_prefix="eval"):
        start = time.perf_counter()
        metrics = self.task_evaluate(self.model)
        self.outcome.eval_seconds += time.perf_counter() - start
        losses = [h["loss"] for h in self.state.log_history if "loss" in h]
        self.outcome.curve.append({"step": self.state.global_step, "epoch": self.state.epoch or 0.0,
                                   "train_loss": losses[-1] if losses else None, **metrics})
        logs = {f"{metric_key_prefix}_{k}": v for k, v in metrics.items()}
        self.log(logs)
        self.control = self.callback_handler.on_evaluate(self.args, self.state, self.control, logs)
        if self.reporter and self.state.global_step and self.reporter(self.state.global_step, metrics):
            self.outcome.pruned_at = self.state.global_step
            self.control.should_training_stop = True
        return logs


class TaskTrainer(_TaskEvaluation, Trainer):
    """transformers' Trainer with the task's evaluation: classification, and seq2seq (the model's own loss)."""


def _sft_trainer_class():
    """trl (and datasets, wandb through it) imported only by runs that use it: ~0.5 s off a classification run."""
    from trl import SFTTrainer

    from . import lm_head

    class _SFTTrainer(_TaskEvaluation, SFTTrainer):
        """trl's SFT, with the training loss from the LM head's rows that carry loss only (run/lm_head.py).

        Elsewhere (evaluation, `full_logits`, a loss other than trl's plain nll) trl's own loss, except
        with trained injected tokens on a tied output layer: trl's fused LM head multiplies by
        lm_head.weight directly, which would skip peft's trained token rows (and fails on peft's
        wrapper), so the loss then comes from the model's own forward (labels already masked)."""

        plain_loss = False
        full_logits = False  # True: every position through the head, as trl does (bench/lm_head.py's "before")

        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            if model.training and not return_outputs and not self.full_logits and self._plain_nll():
                return self._kept_rows_loss(model, inputs, num_items_in_batch)
            if not self.plain_loss:
                return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
            keep = {k: v for k, v in inputs.items() if k in ("input_ids", "attention_mask", "labels", "position_ids")}
            return Trainer.compute_loss(self, model, keep, return_outputs, num_items_in_batch)

        def _compiled_body(self, model):
            """train.compile: the decoder this loss calls, compiled once. The Trainer's torch_compile
            compiles the model's forward, which this loss goes around (lm_head.backbone); evaluation
            and generation stay eager (the evaluator's shapes vary: no recompiles)."""
            if not self.args.torch_compile:
                return None
            if getattr(self, "_body", None) is None:
                self._body = torch.compile(lm_head.backbone(model))  # shares the weights: nothing to save twice
            return self._body

        def _plain_nll(self) -> bool:
            """trl's default loss (the only one lorasweep configures): no other loss to reproduce. Not
            data-parallel: the kept rows' loss calls the decoder around the model's forward, and DDP
            must see every training forward to reduce the gradients; trl's loss goes through it."""
            return (self.args.loss_type == "nll" and self.label_smoother is None and lm_head.plain_head(self.model)
                    and self.compute_loss_func is None and not self.aux_loss_enabled and self.args.world_size == 1)

        def _kept_rows_loss(self, model, inputs, num_items_in_batch):
            """trl's training loss and the metrics it logs (entropy, mean_token_accuracy, num_tokens).
            Under the Trainer's mixed precision (bf16 on a GPU): accelerate puts it around the model's
            forward, which this loss goes around (it calls the decoder), so it is entered here."""
            with self.accelerator.autocast():
                out = lm_head.kept_rows_loss(model, inputs, num_items_in_batch, body=self._compiled_body(model))
            total = lambda t: self.accelerator.gather_for_metrics(t).sum()
            n, metrics = total(out.n), compat.sft_train_metrics(self)
            metrics["entropy"].append((total(out.entropy_sum) / n).item() if n > 0 else 0.0)
            metrics["mean_token_accuracy"].append((total(out.correct) / n).item() if n > 0 else 0.0)
            metrics["num_tokens"] = [compat.count_sft_tokens(self, total(inputs["attention_mask"].sum()).item())]
            # like trl and Trainer: num_items_in_batch counts every rank's tokens, and DDP averages gradients
            if self.args.average_tokens_across_devices and num_items_in_batch is not None:
                return out.loss * (self.accelerator.num_processes // self.get_tp_size())
            return out.loss

    return _SFTTrainer


def sft_trainer(model, tokenizer, data: TrainingData, spec: TrainSpec, common: dict):
    """The SFT trainer of a causal-LM run; `common`: the Trainer arguments (trainer_arguments)."""
    # SFTConfig defaults to bf16 and gradient checkpointing: both wrong on a CPU (2x slower,
    # and a reloaded adapter differs), so they are set explicitly.
    from trl import SFTConfig

    args = SFTConfig(**common, max_length=spec.max_length, gradient_checkpointing=False,
                     packing=False, completion_only_loss=True)
    trainer = _sft_trainer_class()(model=model, args=args, train_dataset=data.train,
                                   eval_dataset=data.eval, processing_class=tokenizer)
    head = model.get_output_embeddings()
    trainer.plain_loss = head is not None and not isinstance(head, torch.nn.Linear)  # peft's token wrapper
    return trainer


class ProgressPrinter(TrainerCallback):
    """One line per log: step, loss, examples/s and ETA; eval lines with accuracy ± SE. Forwards to the tracker.
    The evaluation before any update (the curve's step-0 point) says `before training`, not `step 0/0`:
    the Trainer knows its number of steps only once training begins."""

    def __init__(self, tracker: Tracker, batch_size: int, predicted_s: float | None = None):
        self.tracker, self.batch_size, self.start = tracker, batch_size, time.perf_counter()
        self.predicted_s = predicted_s  # training's, evaluations included: the ETA is compared with it
        self.first_step = 0  # a resumed run's rate counts the steps of this process only
        self.training = False

    def on_train_begin(self, args, state, control, **kwargs):
        self.start = time.perf_counter()
        self.first_step = state.global_step
        self.training = True

    def on_log(self, args, state, control, logs=None, **kwargs):
        logs = logs or {}
        self.tracker.log({k: v for k, v in logs.items() if isinstance(v, (int, float))}, state.global_step)
        step, total = state.global_step, state.max_steps
        if "eval_n" in logs:
            metrics = {k.removeprefix("eval_"): v for k, v in logs.items() if k.startswith("eval_")}
            loss = f"  loss {logs['eval_loss']:.3f}" if "eval_accuracy" in logs else ""
            where = f"step {step:>5}/{total}" if self.training else "before training"
            say(f"  eval  {where}  {headline(metrics)}{loss}")
        elif "loss" in logs and step:
            elapsed = time.perf_counter() - self.start
            done = max(1, step - self.first_step)
            rate = done * self.batch_size / elapsed
            eta = eta_seconds(elapsed, done, total - step) or 0.0
            versus = versus_prediction(elapsed, eta, self.predicted_s) if self.first_step == 0 else ""
            say(f"  train step {step:>5}/{total}  loss {logs['loss']:.4f}  {rate:.1f} ex/s  ETA {eta:.0f}s"
                + (f"  ({versus})" if versus else ""))


class _Checkpoints(TrainerCallback):
    """Keeps the curve so far in the checkpoints' folder, so a resumed run's curve starts where training
    did. Written at each evaluation, which the Trainer runs before it saves that step's checkpoint:
    a checkpoint never lacks the points before it, however the process is killed. (Written in
    on_save, after the Trainer had saved and rotated away the checkpoint before, a kill in between
    left a checkpoint without a curve.) A resumed run keeps the points up to its checkpoint's step."""

    def __init__(self, outcome: TrainOutcome, workdir: Path):
        self.outcome, self.workdir = outcome, workdir

    def on_evaluate(self, args, state, control, **kwargs):
        if state.is_world_process_zero:  # data-parallel ranks share rank 0's folder
            write_json_atomically(self.workdir / CURVE_FILE, self.outcome.curve)


class _SlowSteps(TrainerCallback):
    """Sleeps after each step (train.step_sleep_s): a tiny run watched, or stopped, mid-training."""

    def __init__(self, seconds: float):
        self.seconds = seconds

    def on_step_end(self, args, state, control, **kwargs):
        time.sleep(self.seconds)


CURVE_FILE = "lorasweep_curve.json"


def curve_until(step: int, *files: Path) -> list[dict]:
    """The curve points up to `step` from the first of `files` there is (later ones were evaluated
    after the checkpoint the run resumes from: it evaluates them again)."""
    for path in files:
        if path.exists():
            return [point for point in json.loads(path.read_text()) if point["step"] <= step]
    return []


def last_complete_checkpoint(workdir: Path) -> str | None:
    """The newest checkpoint that was saved to the end, or None (complete_checkpoints)."""
    found = complete_checkpoints(workdir)
    return str(found[0]) if found else None


def complete_checkpoints(workdir: Path) -> list[Path]:
    """The checkpoints in `workdir` that were saved to the end, newest first.

    A job signalled (time limit, preemption) while the Trainer was saving leaves a checkpoint folder
    without its trainer_state.json, which the Trainer writes last; a full disk or a kill while it
    writes that file leaves it empty or cut short, and the Trainer fails to read it at every resume.
    Such a checkpoint is removed (an unreadable one said), and the one before it (kept until the new
    one is complete) is resumed from instead."""
    if not workdir.is_dir():
        return []
    found = sorted((p for p in workdir.glob(f"{PREFIX_CHECKPOINT_DIR}-*") if p.name.split("-")[-1].isdigit()),
                   key=lambda p: int(p.name.split("-")[-1]), reverse=True)
    complete = []
    for folder in found:
        state = folder / "trainer_state.json"
        try:
            json.loads(state.read_text())
            complete.append(folder)
            continue
        except FileNotFoundError:
            pass
        except (OSError, ValueError) as e:
            say(f"  {state} cannot be read ({type(e).__name__}: {e}): its save was cut short, checkpoint discarded")
        shutil.rmtree(folder, ignore_errors=True)
    return complete


def train(model, tokenizer, data: TrainingData, evaluator: Evaluator, spec: TrainSpec, *, head: str,
          workdir: Path, tracker: Tracker, reporter: Reporter | None = None,
          loop: LoopOptions = LoopOptions(), progress: Path | None = None,
          predicted_s: float | None = None) -> TrainOutcome:
    """Train `model` in place and return its curve and timing. head: the plan's (run/model_facts.task_head).

    `reporter` sees every evaluation along training; when it answers True the run stops there.
    A non-finite training loss stops training at once: `outcome.diverged` says where.
    `loop.save_steps` > 0 checkpoints into `workdir` every that many steps (the last one kept), and
    a checkpoint found there at the start is resumed from: a run requeued after a time limit or a
    preemption continues instead of starting over (from the last step's checkpoint, kept until the
    run's result is written, it trains nothing more). `progress`: the run's progress.json, kept up
    to date while it trains (run/progress.py). `predicted_s`: training's predicted seconds, evaluations
    included (run/predict.py), which the progress line and file compare the measured rate with.
    """
    outcome = TrainOutcome()
    trainer = make_trainer(model, tokenizer, data, spec, head, workdir, loop)
    trainer.task_evaluate, trainer.outcome, trainer.reporter = evaluator, outcome, reporter
    trainer.remove_callback(PrinterCallback)  # its raw dicts are replaced by ProgressPrinter's lines
    trainer.add_callback(ProgressPrinter(tracker, spec.batch_size, predicted_s))
    if progress is not None:
        trainer.add_callback(ProgressFile(progress, predicted_s=predicted_s))
    if loop.save_steps > 0:
        trainer.add_callback(_Checkpoints(outcome, workdir))
    if loop.step_sleep_s > 0:
        trainer.add_callback(_SlowSteps(loop.step_sleep_s))
    counted_before = None
    if loop.compile:
        compat.traceable_dora_weight()  # DoRA layers traced whole, as in a pack: no graph break in peft's DoRA
        counted_before = compile_counts()
    last = last_complete_checkpoint(workdir) if loop.save_steps > 0 else None
    if last:
        outcome.resumed_from_step = int(Path(last).name.split("-")[-1])
        outcome.curve = curve_until(outcome.resumed_from_step, workdir / CURVE_FILE,
                                     Path(last) / CURVE_FILE)  # the latter: a checkpoint of an earlier version
        say(f"  resuming from step {outcome.resumed_from_step} ({last})")
        trainer.add_callback(_StopIfTrained())
    else:
        trainer.evaluate()  # the curve's step-0 point: the model before any update
    outcome.eval_seconds = 0.0
    before_evals = time.perf_counter()
    try:
        out = trainer.train(resume_from_checkpoint=last)
        steps, outcome.final_train_loss = out.global_step, out.training_loss
    except _TrainedAlready:
        steps = trainer.state.global_step  # no step trained here: no training loss of this attempt
    except _Diverged as e:
        outcome.diverged = e.divergence
        steps = trainer.state.global_step  # the optimizer steps completed before the bad one
        say(f"  {e.divergence.reason}: training stopped")
    wall = time.perf_counter() - before_evals
    if counted_before is not None:
        outcome.compiled = {k: n - counted_before[k] for k, n in compile_counts().items()}
    outcome.train_seconds = wall - outcome.eval_seconds
    outcome.steps = steps
    outcome.examples = steps * spec.batch_size
    return outcome


def compile_counts() -> dict[str, int]:
    """What torch.compile has made in this process so far (dynamo counts as it traces): graphs, and
    graph breaks (each splits a forward into more graphs, run eagerly between)."""
    from torch._dynamo.utils import counters

    return {"graphs": counters["stats"]["unique_graphs"], "graph_breaks": sum(counters["graph_break"].values())}


def make_trainer(model, tokenizer, data: TrainingData, spec: TrainSpec, head: str, workdir: Path,
                 loop: LoopOptions = LoopOptions()) -> Trainer:
    """The run's Trainer (head: the plan's, run/model_facts.task_head): transformers' for classification and
    seq2seq, trl's SFTTrainer for a causal LM, each with the task's evaluation (_TaskEvaluation). A pack
    builds its runs' with this too, for their data order and optimizer settings (run/pack_loop.py)."""
    common = {**trainer_arguments(spec, workdir, loop.save_steps), "torch_compile": loop.compile}
    if getattr(model, "peft_config", None):
        # data-parallel: what a peft model trains (adapters, a head, token rows) is all on the forward
        # path, so DDP need not traverse the autograd graph each step looking for unused parameters
        # (the Trainer's default, which warns so); full fine-tuning keeps the default
        common["ddp_find_unused_parameters"] = False
    if head != "causal_lm":
        # a classification loss is a mean over its examples, a seq2seq one (t5's) a mean over its label
        # tokens, whatever num_items_in_batch says: with average_tokens_across_devices (on by default)
        # the Trainer would scale each rank's mean by the number of ranks (meant for token sums),
        # doubling the loss on 2 GPUs; DDP's average of the ranks' means is the global batch's mean
        # (classification: exactly, equal shares; seq2seq: each rank's tokens weighted alike)
        args = TrainingArguments(**common, average_tokens_across_devices=False)
        trainer = TaskTrainer(model=model, args=args, train_dataset=data.train, eval_dataset=data.eval,
                              data_collator=data.collator, processing_class=tokenizer)
    else:
        trainer = sft_trainer(model, tokenizer, data, spec, common)
    if len(trainer.train_dataset) == 0:  # trl drops rows whose completion was cut off entirely
        raise DataError(f"no training example fits train.max_length={spec.max_length} tokens with its "
                        f"answer: raise train.max_length")
    return trainer


def trainer_arguments(spec: TrainSpec, workdir: Path, save_steps: int = 0) -> dict:
    """The TrainingArguments (as a dict) of a run's Trainer."""
    cuda = torch.cuda.is_available()
    # train.batch_size is the run's global batch: data-parallel ranks (executors/data_parallel, which
    # set WORLD_SIZE) take an equal share each, so a run takes the same steps on 1 or N GPUs
    ranks = int(os.environ.get("WORLD_SIZE") or 1)
    return dict(
        output_dir=str(workdir), per_device_train_batch_size=spec.batch_size // ranks,
        per_device_eval_batch_size=spec.eval_batch_size, learning_rate=spec.lr,
        num_train_epochs=spec.epochs, max_steps=spec.max_steps, weight_decay=spec.weight_decay,
        warmup_steps=spec.warmup_ratio,  # transformers 5: a float below 1 is a ratio of all steps
        eval_strategy="steps", eval_steps=spec.eval_steps,
        logging_steps=max(1, spec.eval_steps // 5),
        save_strategy="steps" if save_steps > 0 else "no", save_steps=max(1, save_steps), save_total_limit=1,
        seed=spec.seed, data_seed=spec.seed, use_cpu=not cuda,
        bf16=cuda and torch.cuda.is_bf16_supported(), fp16=False,  # never bf16 autocast on a CPU
        report_to="none", disable_tqdm=True, dataloader_num_workers=0)
