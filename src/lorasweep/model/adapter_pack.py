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

How a layer applies its runs' adapters in a pack's steps (the blocks tile the batch) is the pack's
`product` (train.pack_product): "grouped", one grouped A product and one grouped B product over every
run's rows (model/pack_products.grouped_lora, DoRA included); "batched", two batched products over
blocks of equal size (plain LoRA; DoRA per block); "loop", peft's forward once per block. "auto"
takes grouped where torch has a grouped kernel for the products' dtype, else batched
(pack_products.auto_product). A layer that cannot take the way asked (grouped_mm's strides, a LoRA
bias; batched: unequal blocks) loops; `PackedModel.took` counts the adapted layers per way their
pack steps took (each run's result says it).
"""
from __future__ import annotations

import contextlib
import shutil
from dataclasses import dataclass
from pathlib import Path
from types import MethodType
from typing import Any, Callable, Iterator, Sequence

import torch
from peft import PeftModel, get_peft_model_state_dict, set_peft_model_state_dict
from peft.tuners.lora import LoraLayer
from peft.tuners.lora import Linear as LoraLinear
from peft.utils.other import ModulesToSaveWrapper
from torch import nn

from ..compat import cast_lora_input
from ..config.checks import PACK_PRODUCTS
from .pack_products import (Layouts, auto_product, batched_lora, groupable, grouped_lora, peft_dora,
                            product_dtype)

PACK = "lorasweep_pack"  # the attribute of each packed layer that holds its PackedModel
FIRST = "default"  # peft's name for the adapter a model is built with: the pack's first run
PRODUCTS = PACK_PRODUCTS  # train.pack_product: how a pack's layers apply the adapters


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

    def __init__(self, model: PeftModel, adapters: Sequence[str], product: str = "auto"):
        if product not in PRODUCTS:
            raise ValueError(f"pack product {product!r}: valid are {', '.join(PRODUCTS)}")
        self.model, self.adapters, self.product = model, list(adapters), product
        self._blocks: list[Block] | None = None
        self.layouts = Layouts()  # the stacked adapters' layouts (model/pack_products), built once each
        self.took: dict[str, int] = {}  # adapted layers per way their last pack step took (kept up to date)
        self._ways: dict[int, str] = {}  # id(layer) -> that way
        # train.compile: what a pack's step calls its model through (run/pack_compile.PackCompile); None: eager
        self.compiled: Callable[..., Any] | None = None
        # each layer's forward reads this pack from the layer (PACK), as a bound method, not a partial
        # holding the pack: torch.compile's guards would pin that partial, and a later pack in this
        # process (the same shapes) would compile anew, up to dynamo's limit of 8 graphs a function
        for module in model.modules():
            if isinstance(module, LoraLinear):
                setattr(module, PACK, self)
                module.forward = MethodType(_lora_forward, module)
            elif isinstance(module, ModulesToSaveWrapper):
                setattr(module, PACK, self)
                module.forward = MethodType(_head_forward, module)
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
        sizes = self.tile_sizes(len(t))
        return list(t.split(sizes)) if sizes else [t[b.rows] for b in blocks]

    def tile_sizes(self, n_rows: int) -> list[int] | None:
        """The current blocks' sizes when they tile a batch of n_rows in order (the first starts at 0,
        each stops where the next starts, the last at n_rows or open-ended), else None."""
        blocks = self.current()
        stops = [n_rows if b.stop is None else b.stop for b in blocks]
        if blocks[0].start == 0 and stops[-1] == n_rows and all(a == b.start for a, b in zip(stops, blocks[1:])):
            return [stop - b.start for stop, b in zip(stops, blocks)]
        return None

    def way(self, layer: LoraLinear, x: torch.Tensor) -> str:
        """How `layer` applies the current blocks' adapters to `x`: "grouped", "batched" or "loop"
        (the module's docstring). Recorded in `took` when the blocks tile the batch (a pack's step),
        except while torch.compile traces (a write there would be replayed at every call of the
        graph): a compiled step records its layers' ways before it runs (record_ways)."""
        way = self._choose(layer, len(x), x.device)
        if way is not None and not torch.compiler.is_compiling():
            self._record(layer, way)
        return way or "loop"

    def record_ways(self, n_rows: int, device: torch.device) -> None:
        """Record in `took` the way each adapted layer applies the current blocks' adapters to a batch
        of n_rows (a compiled step's, inside its autocast: the products' dtype follows it)."""
        for module in self.model.modules():
            if isinstance(module, LoraLinear):
                way = self._choose(module, n_rows, device)
                if way is not None:
                    self._record(module, way)

    def _choose(self, layer: LoraLinear, n_rows: int, device: torch.device) -> str | None:
        """way's answer for a batch of n_rows; None where the blocks do not make a pack's step on this
        layer (a run alone, rows that are not the pack's batch, no adapter of the pack's runs here):
        peft's forward per block, not recorded."""
        sizes = self.tile_sizes(n_rows)
        if layer.disable_adapters or sizes is None or len(sizes) < 2:
            return None
        present = [b.adapter for b in self.current() if b.adapter in layer.lora_A]
        if not present:
            return None
        dtype = product_dtype(layer, device)
        asked = auto_product(device, dtype) if self.product == "auto" else self.product
        if asked == "grouped" and groupable(layer, present, dtype):
            return "grouped"
        if asked == "batched" and len(set(sizes)) == 1:
            return "batched"
        return "loop"

    def _record(self, layer: LoraLinear, way: str) -> None:
        if self._ways.get(id(layer)) != way:
            self._ways[id(layer)] = way
            self.took.clear()
            for w in sorted(set(self._ways.values())):
                self.took[w] = sum(v == w for v in self._ways.values())

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


def pack_models(first: PeftModel, others: Iterator[PeftModel], product: str = "auto") -> PackedModel:
    """The pack of `first` (built as its run alone, it becomes the pack's model) and each of `others`
    (each built as its run alone, then dropped): every adapter starts from its own run's initial
    weights, so the seed-dependent initialisation (LoRA A, a new classification head) is the run's own.
    `product`: how its layers apply the adapters in its steps (PRODUCTS)."""
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
    return PackedModel(first, names, product)


def _check_loaded(model: PeftModel, name: str, state: dict[str, torch.Tensor]) -> None:
    """Every tensor of the run's initial adapter landed in its copy: a mismatch would train a different run."""
    loaded = get_peft_model_state_dict(model, adapter_name=name)
    if loaded.keys() != state.keys() or any(not torch.equal(loaded[k], state[k]) for k in state):
        raise RuntimeError(f"the pack's adapter {name} differs from its run's initial adapter: "
                           f"{sorted(set(loaded) ^ set(state))[:4] or 'values differ'}")


def _lora_forward(layer: LoraLinear, x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
    """peft's lora.Linear.forward with one adapter a block of rows: one base GEMM over all rows, then
    the adapters' terms the pack's way (PackedModel.way)."""
    pack = getattr(layer, PACK)
    result = layer.base_layer(x, *args, **kwargs)
    dtype = result.dtype
    blocks = pack.current()
    way = pack.way(layer, x)
    if way == "grouped":
        return grouped_lora(layer, [b.adapter for b in blocks], pack.tile_sizes(len(x)), x, result,
                            pack.layouts).to(dtype)
    if way == "batched":
        return batched_lora(layer, [b.adapter for b in blocks], len(x) // len(blocks), x, result,
                            pack.layouts).to(dtype)
    parts = []
    for block, part, rows in zip(blocks, pack.rows_of(result), pack.rows_of(x)):
        name = block.adapter
        if name in layer.lora_A and not layer.disable_adapters:
            if name in layer.lora_variant:
                part = peft_dora(layer, name, rows, part)
            else:
                rows = cast_lora_input(layer, rows, layer.lora_A[name].weight.dtype)
                part = part + layer.lora_B[name](layer.lora_A[name](layer.lora_dropout[name](rows))) * layer.scaling[name]
        parts.append(part)
    return (parts[0] if len(parts) == 1 else torch.cat(parts)).to(dtype)


def _head_forward(wrapper: ModulesToSaveWrapper, x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
    """Each run's own copy of a trained module (its classification head) on its rows."""
    pack = getattr(wrapper, PACK)
    parts = [wrapper.modules_to_save[b.adapter](rows, *args, **kwargs) for b, rows in zip(pack.current(), pack.rows_of(x))]
    return parts[0] if len(parts) == 1 else torch.cat(parts)
