"""What a run will cost before it starts: its work (FLOPs, bytes) from what the plan knows, and that
work turned into seconds and peak memory for a machine (run/calibration.py says how fast this
machine does the work: from the store's finished runs, or a cold guess).

The work is counted from the architecture on the meta device and the task's token lengths
(tasks/lengths.py), not looked up:
- a training step's FLOPs: the forward's 2 x tokens x weights of every linear layer (and attention's
  4 x tokens x length x hidden per layer), the backward's as much again for the activations' gradients,
  plus the weights' gradients of what trains (every linear for method=full; each adapter's A and B
  otherwise); DoRA recomputes its base layer on the dropped-out input (dropout > 0) and takes the
  column norms of W + BA each step; a causal LM's head runs on the answer's rows only (run/lm_head);
  AdamW's update is charged by the trained parameters (memory-bound: a FLOP-equivalent per parameter);
- evaluations: the forward alone over the eval rows (each evaluation along training, the one before
  it) and the test rows, generation's decoding steps (exact match) at a memory-bound penalty;
- peak memory: the process's runtime (on a CPU: Python, torch, transformers, the tokenizer), the base
  weights as held (dtype; 4-bit for qlora), what trains with its gradient and AdamW's two moments,
  and the activations a step keeps for its backward (per token: every linear layer's output, the
  norms' inputs, each adapter's dropped-out input and rank-r output; for method=full every linear's
  input), or the load's if larger.
The constants below are rounded from this project's measurements; the calibration absorbs what a
machine does differently (its FLOP rate, its runtime's memory).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

from ..config.spec import QUANTIZED_METHODS, RunSpec
from ..tasks.lengths import TaskLengths

MB = 2**20
ADAM_FLOPS_PER_PARAM = 40      # AdamW's update moves ~40 bytes a trained parameter: at ~1 FLOP a byte
ADAPTER_ELEMENTWISE = 8        # LoRA's dropout, scale and add per adapted feature per token (memory-bound)
DECODE_PENALTY = 6             # a generated token's forward runs at a small batch: far below the matmul rate
SAVED_PER_HIDDEN = 6           # activations kept per token per layer per hidden unit (norms, residuals, attention)
LOAD_COPIES = 1.0              # safetensors are mapped: loading holds the weights once (smollm2-4l, measured)
DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}


@dataclass(frozen=True)
class Shape:
    """The architecture's costs per token, read off the plan's meta-device skeleton (run/plan.skeleton)."""

    linear_weights: int        # weights of every linear layer but the LM head: 2x that many FLOPs a token
    linear_outputs: int        # their output features: activations a step keeps
    head_weights: int          # the LM head (vocab x hidden; 0 for a classification head)
    hidden: int
    layers: int
    params: int                # every base parameter, with its head
    adapted_in: int = 0        # the adapted modules' input features, summed
    adapted_out: int = 0
    adapted_weights: int = 0   # their in x out, summed (DoRA's norm; DoRA's recomputed base layer)
    adapted: int = 0           # how many modules are adapted


@dataclass(frozen=True)
class Work:
    """A run's work, the same on every machine: what result.json records (`cost.work`) for calibration."""

    steps: int
    train_flops: float         # all training steps
    eval_flops: float          # every evaluation along training, the one before it
    test_flops: float          # the test sets, once
    weights_mb: float          # the base weights as held
    state_mb: float            # what trains, its gradient and AdamW's moments
    activations_mb: float      # a training step's
    eval_mb: float             # an evaluation's transient (logits of a batch)
    load_mb: float             # while loading: the checkpoint's tensors beside the model's
    device: str                # "cpu" or "cuda"

    def model_mb(self) -> float:
        """Peak memory beyond the process's runtime (a CPU's) or the GPU's context."""
        training = self.weights_mb + self.state_mb + max(self.activations_mb, self.eval_mb)
        return max(training, self.load_mb)

    def as_record(self) -> dict:
        return {k: (round(v, 1) if isinstance(v, float) else v) for k, v in self.__dict__.items()}


@dataclass(frozen=True)
class Cost:
    """A run's predicted cost on one machine, and how far to trust it."""

    train_s: float             # the training steps (evaluations along the way not counted, as timing.train_s)
    eval_s: float              # the evaluations along training (and the one before it)
    test_s: float              # the test sets, once
    load_s: float              # loading and adapting the model
    peak_mb: float             # RSS on a CPU; allocated accelerator memory on a GPU
    device: str
    basis: str                 # "cold" or "calibrated on N runs of <model> on this machine" ...
    time_error: float          # the relative error to expect (0.15: +-15%)
    memory_error: float
    work: Work = field(repr=False, default=None)  # type: ignore[assignment]
    setup_s: float = 0.0       # the rest: its data tokenized, its Trainer built, its adapter saved

    @property
    def total_s(self) -> float:
        """The whole run: load, setup, train, evaluations, test (not the interpreter's start)."""
        return self.load_s + self.setup_s + self.train_s + self.eval_s + self.test_s

    @property
    def training_s(self) -> float:
        """Training with its evaluations: what a run's progress (run/progress.py) measures its rate over."""
        return self.train_s + self.eval_s

    @property
    def memory_name(self) -> str:
        return "peak RSS" if self.device == "cpu" else "peak GPU memory"


def train_steps(rows: int, spec: RunSpec) -> int:
    """The optimizer steps the Trainer takes: max_steps, else epochs x ceil(rows / batch)."""
    t = spec.train
    if t.max_steps > 0:
        return t.max_steps
    return max(1, math.ceil(t.epochs * math.ceil(rows / max(1, t.batch_size))))


def work(spec: RunSpec, shape: Shape, lengths: TaskLengths, trainable: int, head: str, device: str) -> Work:
    """The run's work, from its spec, its model's shape and its data's token lengths."""
    t, method = spec.train, spec.method
    steps = 0 if method == "none" else train_steps(lengths.train.rows, spec)
    causal = head == "causal_lm"
    tokens = t.batch_size * lengths.train.padded(t.batch_size)          # a step's tokens, padded
    kept = t.batch_size * lengths.train.mean("kept") if causal else t.batch_size
    length = lengths.train.padded(t.batch_size)
    forward = 2 * tokens * shape.linear_weights + 4 * tokens * length * shape.hidden * shape.layers \
        + 2 * kept * shape.head_weights
    step = 2 * forward  # the backward: the activations' gradients
    if method == "full":
        step += forward  # the weights' gradients too
    elif shape.adapted:
        r = spec.lora.r
        step += 6 * tokens * r * (shape.adapted_in + shape.adapted_out)
        step += ADAPTER_ELEMENTWISE * tokens * (shape.adapted_in + shape.adapted_out)
        if method == "dora":
            if spec.lora.dropout > 0:  # peft's DoRA runs the base layer again on the dropped-out input
                step += 4 * tokens * shape.adapted_weights
            step += 3 * (2 * r + 4) * shape.adapted_weights  # W + BA, its column norms, forward and backward
    step += ADAM_FLOPS_PER_PARAM * trainable
    n_evals = 0 if method == "none" else 1 + steps // max(1, t.eval_steps)
    evals = n_evals * _forward_flops(shape, lengths.eval, t.eval_batch_size, causal, 0)
    test = _forward_flops(shape, lengths.test, t.eval_batch_size, causal, lengths.new_tokens)
    return Work(steps=steps, train_flops=steps * step, eval_flops=evals, test_flops=test,
                **_memory(spec, shape, lengths, trainable, tokens, length, kept, device, causal))


def _forward_flops(shape: Shape, split, batch: int, causal: bool, new_tokens: int) -> float:
    """An evaluation of `split`: the forward over its padded batches; for generation, each new token
    is a forward of one token a row, memory-bound (DECODE_PENALTY)."""
    tokens = split.rows * split.padded(batch)
    flops = 2 * tokens * shape.linear_weights + 2 * split.rows * shape.head_weights * (2 if causal else 0)
    flops += 2 * split.rows * new_tokens * (shape.linear_weights + shape.head_weights) * DECODE_PENALTY
    return flops


def _memory(spec: RunSpec, shape: Shape, lengths: TaskLengths, trainable: int, tokens: float, length: float,
            kept: float, device: str, causal: bool) -> dict:
    method, t = spec.method, spec.train
    dtype = DTYPE_BYTES.get(spec.model.dtype, 4)
    if method in QUANTIZED_METHODS:  # the linear layers packed (4 or 8 bits, with their scales), the rest as loaded
        bits = 4.5 if method == "qlora" else 8.5
        weights = shape.linear_weights * bits / 8 + (shape.params - shape.linear_weights) * dtype
    else:
        weights = shape.params * dtype
    state = trainable * (12 if method == "full" else 16)  # (the weight itself, for an adapter), gradient, 2 moments
    act = 2 if device == "cuda" else 4  # a GPU trains under bf16 autocast (run/loop.trainer_arguments)
    per_token = SAVED_PER_HIDDEN * shape.hidden * shape.layers + shape.linear_outputs
    if method == "full":
        per_token += shape.linear_weights // max(1, shape.hidden)  # ~ every linear's input, for its weight's gradient
    elif shape.adapted and method != "none":
        dropped = shape.adapted_in if spec.lora.dropout > 0 else 0
        per_token += dropped + spec.lora.r * shape.adapted + (shape.adapted_out if method == "dora" else 0)
    activations = tokens * per_token * act if method != "none" else 0.0
    vocab = shape.head_weights // max(1, shape.hidden)
    activations += 3 * kept * vocab * 4 if causal else 0  # the kept rows' logits, their softmax and gradient (fp32)
    if method == "dora":  # W + BA of the largest adapted module, held while its norm is taken
        activations += 2 * shape.adapted_weights / max(1, shape.adapted) * 4
    eval_tokens = t.eval_batch_size * max(lengths.eval.padded(t.eval_batch_size), lengths.test.padded(t.eval_batch_size))
    eval_mb = eval_tokens * shape.hidden * 8 * act + (t.eval_batch_size * vocab * 8 if causal else 0)
    return {"weights_mb": weights / MB, "state_mb": state / MB, "activations_mb": activations / MB,
            "eval_mb": eval_mb / MB, "load_mb": weights * LOAD_COPIES / MB, "device": device}
