"""Several runs' adapters on one frozen base, each applied to its own rows of the batch (a pack).

The layout of mLoRA/ASPEN, on peft's own layers and adapter format: the pack's model is one peft
model holding one adapter per run ("default" for the first, "run1", "run2", ... for the others), each
with its own rank, alpha, projections, dropout, DoRA magnitudes and classification head (peft's
modules_to_save copy). A batch is the runs' batches stacked on the batch axis, run i on a block of
rows. Each adapted layer runs its base GEMM once over every row, then adds each run's low-rank term
(or applies its DoRA, through peft's own variant code) to that run's rows only; a run that does not
adapt a layer leaves its rows as the base computed them. Each run's head scores its own rows.

No layer of the models packed here mixes rows (attention stays within a sequence, norms within a
token), so a run's outputs, its loss and its gradients are those it has alone, up to the float
rounding of the larger GEMMs (tests/test_pack.py measures it). peft refuses mixed-adapter batches
in training and with DoRA (its `adapter_names`): this forward is peft's `lora.Linear.forward` for
one adapter, applied per block of rows.

On a GPU a pack's runs are small batches (that is why they pack), and a loop over K adapters in each
adapted layer launches K small kernels per operation. There, the layers whose runs all use plain
LoRA on blocks of equal size apply every adapter at once (`_batched_lora`): each adapter's A and B
zero-padded to the largest rank and stacked, then two batched products, block i's rows through
adapter i only. Padding adds exact zeros, so each row's term and each adapter's gradient are the
loop's up to the products' summation order, and a run's non-finite weights reach its own rows only
(a diverging run leaves the pack; the others go on). A CPU keeps the loop (`BATCHED_DEVICES`): it
is compute-bound there (bench/RESULTS.md), where padding would only add arithmetic.
"""
from __future__ import annotations

import contextlib
import shutil
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Iterator, Sequence

import torch
from peft import PeftModel, get_peft_model_state_dict, set_peft_model_state_dict
from peft.tuners.lora import LoraLayer
from peft.tuners.lora import Linear as LoraLinear
from peft.utils.other import ModulesToSaveWrapper
from torch import nn

from ..compat import cast_lora_input

FIRST = "default"  # peft's name for the adapter a model is built with: the pack's first run
BATCHED_DEVICES = {"cuda"}  # where plain-LoRA layers apply all adapters in batched products (see above)
# The ways a layer can apply a pack's adapters, by name. FORCED_PATH (None: each device's way, above)
# makes every layer take one where its blocks allow it (tests and benches compare them on one device).
PATHS = ("loop", "batched")
FORCED_PATH: str | None = None


@dataclass(frozen=True)
class Block:
    """Rows [start, stop) of a packed batch belong to `adapter`'s run; stop None: to the batch's end."""

    adapter: str
    start: int
    stop: int | None

    @property
    def rows(self) -> slice:
        return slice(self.start, self.stop)


def adapter_name(i: int) -> str:
    """The adapter of the pack's i-th run."""
    return FIRST if i == 0 else f"run{i}"


class PackedModel:
    """A peft model holding several runs' adapters, whose forward applies each to its own rows:
    call the model inside `with pack.blocks(...)`."""

    def __init__(self, model: PeftModel, adapters: Sequence[str]):
        self.model, self.adapters = model, list(adapters)
        self._blocks: list[Block] | None = None
        self._stacking: dict[tuple, tuple[torch.Tensor, torch.Tensor, int]] = {}  # stacking()'s cache
        for module in model.modules():
            if isinstance(module, LoraLinear):
                module.forward = partial(_lora_forward, module, self)
            elif isinstance(module, ModulesToSaveWrapper):
                module.forward = partial(_head_forward, module, self)
            elif isinstance(module, LoraLayer):  # an embedding, a convolution: not packed (yet)
                raise NotImplementedError(f"a pack cannot hold LoRA on {type(module).__name__} layers")
        for name, p in model.named_parameters():  # peft trains the active adapter only: here, every one
            if self.owner(name) is not None:
                p.requires_grad_(True)

    @contextlib.contextmanager
    def blocks(self, blocks: Sequence[Block]) -> Iterator[None]:
        """Forward passes inside this apply each block's adapter to its rows."""
        saved, self._blocks = self._blocks, list(blocks)
        try:
            yield
        finally:
            self._blocks = saved

    def alone(self, adapter: str) -> contextlib.AbstractContextManager[None]:
        """Forward passes inside this are the run of `adapter` alone, on every row of whatever batch
        comes (an evaluator's varying batches, generate's cached steps)."""
        return self.blocks([Block(adapter, 0, None)])

    def current(self) -> list[Block]:
        if self._blocks is None:
            raise RuntimeError("a packed model runs inside `with pack.blocks(...)`: which rows are whose")
        return self._blocks

    def rows_of(self, t: torch.Tensor) -> list[torch.Tensor]:
        """`t`'s rows of each block, in block order. Blocks that tile the batch are split off in one
        op, whose backward is one concatenation; a slice per block would cost a zero-filled gradient
        of the whole batch per block in the backward (K^2 memory traffic: 15% of a 9-run step)."""
        blocks = self.current()
        if len(blocks) == 1 and blocks[0].start == 0 and blocks[0].stop is None:
            return [t]
        sizes = self._tile_sizes(len(t))
        return list(t.split(sizes)) if sizes else [t[b.rows] for b in blocks]

    def equal_tiles(self, n_rows: int) -> bool:
        """Whether the current blocks are 2 or more of one size that tile a batch of n_rows in order
        (what `_batched_lora` needs): a pack's steps, not an evaluation alone."""
        sizes = self._tile_sizes(n_rows)
        return sizes is not None and len(sizes) > 1 and len(set(sizes)) == 1

    def _tile_sizes(self, n_rows: int) -> list[int] | None:
        """The current blocks' sizes when they tile a batch of n_rows in order (the first starts at 0,
        each stops where the next starts, the last at n_rows or open-ended), else None."""
        blocks = self.current()
        stops = [n_rows if b.stop is None else b.stop for b in blocks]
        if blocks[0].start == 0 and stops[-1] == n_rows and all(a == b.start for a, b in zip(stops, blocks[1:])):
            return [stop - b.start for stop, b in zip(stops, blocks)]
        return None

    def stacking(self, layer: LoraLinear, blocks: list[Block], names: set[str], device: torch.device
                 ) -> tuple[torch.Tensor, torch.Tensor, int]:
        """For `_batched_lora`: where the rank rows of each block's adapter among `names` go in the
        stack (block i's at i * width), each block's scaling in float32 (0 for a block of another
        adapter), and width, the largest rank. Built once per layout."""
        ranks = [layer.lora_A[b.adapter].weight.shape[0] if b.adapter in names else 0 for b in blocks]
        scales = [layer.scaling[b.adapter] if b.adapter in names else 0.0 for b in blocks]
        key = (tuple(ranks), tuple(scales), device)
        if key not in self._stacking:
            width = max(ranks)
            index = [i * width + j for i, r in enumerate(ranks) for j in range(r)]
            self._stacking[key] = (torch.tensor(index, device=device),
                                   torch.tensor(scales, device=device, dtype=torch.float32), width)
        return self._stacking[key]

    def owner(self, parameter: str) -> str | None:
        """The adapter a parameter of the model belongs to (None: the frozen base)."""
        parts = parameter.split(".")
        for marker in ("lora_A", "lora_B", "lora_magnitude_vector", "modules_to_save"):
            if marker in parts:
                i = parts.index(marker) + 1
                return parts[i] if i < len(parts) and parts[i] in self.adapters else None
        return None

    def named_parameters_of(self, adapter: str) -> list[tuple[str, nn.Parameter]]:
        """The trainable parameters of one run, named as the model names them."""
        return [(n, p) for n, p in self.model.named_parameters() if self.owner(n) == adapter]

    def save_adapter(self, adapter: str, target: Path) -> None:
        """One run's adapter in PEFT format, as its run alone saves it (save_pretrained)."""
        staging = target.with_name(target.name + ".pack-tmp")
        shutil.rmtree(staging, ignore_errors=True)
        self.model.save_pretrained(staging, selected_adapters=[adapter], save_embedding_layers=False)
        saved = staging if adapter == FIRST else staging / adapter  # peft files other adapters under their name
        shutil.rmtree(target, ignore_errors=True)
        saved.rename(target)
        shutil.rmtree(staging, ignore_errors=True)


def pack_models(first: PeftModel, others: Iterator[PeftModel]) -> PackedModel:
    """The pack of `first` (built as its run alone, it becomes the pack's model) and each of `others`
    (each built as its run alone, then dropped): every adapter starts from its own run's initial
    weights, so the seed-dependent initialisation (LoRA A, a new classification head) is the run's own."""
    names = [FIRST]
    for i, other in enumerate(others, start=1):
        name = adapter_name(i)
        first.add_adapter(name, other.peft_config[FIRST])
        config = first.peft_config[name]  # peft adds the task's heads to modules_to_save again: once is what alone saves
        if config.modules_to_save:
            config.modules_to_save = list(dict.fromkeys(config.modules_to_save))
        state = get_peft_model_state_dict(other)
        set_peft_model_state_dict(first, state, adapter_name=name)
        _check_loaded(first, name, state)
        names.append(name)
        del other
    return PackedModel(first, names)


def _check_loaded(model: PeftModel, name: str, state: dict[str, torch.Tensor]) -> None:
    """Every tensor of the run's initial adapter landed in its copy: a mismatch would train a different run."""
    loaded = get_peft_model_state_dict(model, adapter_name=name)
    if loaded.keys() != state.keys() or any(not torch.equal(loaded[k], state[k]) for k in state):
        raise RuntimeError(f"the pack's adapter {name} differs from its run's initial adapter: "
                           f"{sorted(set(loaded) ^ set(state))[:4] or 'values differ'}")


def _lora_forward(layer: LoraLinear, pack: PackedModel, x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
    """peft's lora.Linear.forward with one adapter a block of rows: one base GEMM over all rows."""
    result = layer.base_layer(x, *args, **kwargs)
    dtype = result.dtype
    blocks = pack.current()
    batched = x.device.type in BATCHED_DEVICES if FORCED_PATH is None else FORCED_PATH == "batched"
    if batched and not layer.disable_adapters and pack.equal_tiles(len(x)):
        return _batched_forward(layer, pack, blocks, x, result).to(dtype)
    parts = []
    for block, part, rows in zip(blocks, pack.rows_of(result), pack.rows_of(x)):
        name = block.adapter
        if name in layer.lora_A and not layer.disable_adapters:
            if name in layer.lora_variant:
                part = _dora(layer, name, rows, part)
            else:
                rows = cast_lora_input(layer, rows, layer.lora_A[name].weight.dtype)
                part = part + layer.lora_B[name](layer.lora_A[name](layer.lora_dropout[name](rows))) * layer.scaling[name]
        parts.append(part)
    return (parts[0] if len(parts) == 1 else torch.cat(parts)).to(dtype)


def _batched_forward(layer: LoraLinear, pack: PackedModel, blocks: list[Block], x: torch.Tensor,
                     result: torch.Tensor) -> torch.Tensor:
    """`_lora_forward` on K equal blocks: the plain-LoRA runs' terms at once (`_batched_lora`), then
    each DoRA run's on its rows through peft's own code, as the loop does."""
    plain = {b.adapter for b in blocks if b.adapter in layer.lora_A and b.adapter not in layer.lora_variant}
    if plain:
        result = _batched_lora(layer, pack, blocks, x, result, plain)
    dora = [i for i, b in enumerate(blocks) if b.adapter in layer.lora_variant]
    if not dora:
        return result
    parts, rows = pack.rows_of(result), pack.rows_of(x)
    for i in dora:
        parts[i] = _dora(layer, blocks[i].adapter, rows[i], parts[i])
    return torch.cat(parts)


def _dora(layer: LoraLinear, name: str, rows: torch.Tensor, part: torch.Tensor) -> torch.Tensor:
    """A DoRA run's output on its rows (`part`: the base's output there), through peft's own code."""
    rows = cast_lora_input(layer, rows, layer.lora_A[name].weight.dtype)
    return layer.lora_variant[name].forward(layer, active_adapter=name, x=rows, result=part)


def _batched_lora(layer: LoraLinear, pack: PackedModel, blocks: list[Block], x: torch.Tensor,
                  result: torch.Tensor, names: set[str]) -> torch.Tensor:
    """The plain-LoRA terms of the adapters `names` in two batched products: block i's rows through
    its adapter's A and B (zero-padded to the largest rank; a block of another adapter gets zeros),
    times its scaling, added to the base's output."""
    present = [b.adapter for b in blocks if b.adapter in names]
    if all(isinstance(layer.lora_dropout[n], nn.Identity) for n in present):
        dropped = x
    else:  # each run's own dropout on its rows, in block order
        dropped = torch.cat([layer.lora_dropout[b.adapter](rows) if b.adapter in names else rows
                             for b, rows in zip(blocks, pack.rows_of(x))])
    a_weights = [layer.lora_A[n].weight for n in present]  # each (rank, in)
    dropped = cast_lora_input(layer, dropped, a_weights[0].dtype)
    index, scale, width = pack.stacking(layer, blocks, names, x.device)
    k = len(blocks)
    # (K * width, in) and (K * width, out): block i's adapter's rows at i * width, the rest zeros
    a = a_weights[0].new_zeros(k * width, dropped.shape[-1]).index_copy(0, index, torch.cat(a_weights))
    b_rows = torch.cat([layer.lora_B[n].weight.t() for n in present])
    b = b_rows.new_zeros(k * width, b_rows.shape[-1]).index_copy(0, index, b_rows)
    low = torch.bmm(dropped.reshape(k, -1, dropped.shape[-1]), a.view(k, width, -1).transpose(1, 2))
    out = torch.bmm(low, b.view(k, width, -1))
    out = (out * scale.view(k, 1, 1)).to(out.dtype)  # as the loop's `* scaling`: float32 math, out's dtype
    return result + out.view(result.shape)


def _head_forward(wrapper: ModulesToSaveWrapper, pack: PackedModel, x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
    """Each run's own copy of a trained module (its classification head) on its rows."""
    parts = [wrapper.modules_to_save[b.adapter](rows, *args, **kwargs) for b, rows in zip(pack.current(), pack.rows_of(x))]
    return parts[0] if len(parts) == 1 else torch.cat(parts)
