"""How a pack's adapted layer applies its runs' adapters to their blocks of rows at once: the products
behind model/adapter_pack, for blocks that tile the batch in order (a pack's steps).

    grouped_lora   one grouped A product and one grouped B product over the blocks (torch's grouped_mm)
    batched_lora   two batched products (bmm) over blocks of equal size

Both stack every adapter's A and B, zero-padded to a common rank: padding adds exact zeros, so each
row's term and each adapter's gradient are those of the run alone up to the products' summation
order, and a run's non-finite weights reach its own rows only. A block whose adapter does not adapt
the layer gets zero weights (inside the span of adapted blocks) or is left out (before the first
adapted block, after the last): its rows stay as the base computed them.

Padding, not one product per rank: each rank's blocks would have to be gathered out of the batch
and scattered back (copies as large as the activations, for products whose cost is reading them);
bench/pack_step.py times both ways (not yet run on a quiet machine).

What torch 2.13's grouped_mm needs (seen on the CPU: float32 and bf16 forward and backward, equal
bit for bit to a product per group): every row stride a multiple of 16 bytes, the contraction
dimension's too, forward and backward (so in_features, out_features and the padded rank are
multiples of 4 in float32, 8 in bf16; `grouped_alignment`), int32 offsets, both operands of one
dtype (autocast does not cast them: we do). Rows past the last offset are left uninitialised
(garbage, not zeros): the offsets here always end at the last row given.

Under torch.compile (train.compile=true, run/pack_compile.py) the grouped products go through
lorasweep's custom op (model/grouped_mm.py: torch 2.13 traces grouped_mm in bf16 only), the same kernel.

DoRA: its low-rank product joins the grouped products; its magnitude and weight norm are peft's
(DoraLinearLayer), applied to its block as DoraLinearLayer.forward applies them.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from peft.tuners.lora import Linear as LoraLinear
from peft.tuners.lora.variants import DoraLinearVariant
from peft.utils.integrations import dequantize_module_weight
from peft.utils.other import transpose
from torch import nn

from ..compat import cast_lora_input
from .grouped_mm import grouped_mm


CPU_AUTO = "grouped"


@dataclass(frozen=True)
class Layout:
    """How one layer's adapters stack for a batch: block i's adapter's rank rows at i * width of the
    stack (`index`), each batch row's scaling (`scale`: 0 for a block of another adapter), the group
    ends (`offsets`, int32, in batch rows: times the tokens a row, in rows of the flattened input) and
    the stacked rank `width`. Per batch row, not per token: a compiled step (train.compile) takes
    any sequence length with one graph."""

    index: torch.Tensor
    scale: torch.Tensor
    offsets: torch.Tensor
    width: int


class Layouts:
    """Layouts built once per (ranks, scalings, block sizes, device, alignment): a pack's steps
    repeat a few. While torch.compile traces, built in the graph instead (constants there): a cache
    read would guard on the cache's contents and recompile the step once it is filled."""

    def __init__(self) -> None:
        self._built: dict[tuple, Layout] = {}

    def get(self, ranks: list[int], scales: list[float], sizes: list[int], device: torch.device,
            align: int = 1) -> Layout:
        key = (tuple(ranks), tuple(scales), tuple(sizes), device, align)
        if torch.compiler.is_compiling():
            return _layout(*key)
        if key not in self._built:
            self._built[key] = _layout(*key)
        return self._built[key]


def _layout(ranks: tuple[int, ...], scales: tuple[float, ...], sizes: tuple[int, ...], device: torch.device,
            align: int) -> Layout:
    width = -(-max(ranks) // align) * align
    index = [i * width + j for i, r in enumerate(ranks) for j in range(r)]
    return Layout(torch.tensor(index, device=device),
                  torch.tensor([s for s, n in zip(scales, sizes) for _ in range(n)], dtype=torch.float32, device=device),
                  torch.tensor(sizes, dtype=torch.int32).cumsum(0, dtype=torch.int32).to(device), width)


def product_dtype(layer: LoraLinear, device: torch.device) -> torch.dtype:
    """The dtype the run alone's adapter products run in: autocast's (bf16 under the Trainer's
    mixed precision), else the adapter weights'."""
    if torch.is_autocast_enabled(device.type):
        return torch.get_autocast_dtype(device.type)
    return next(iter(layer.lora_A.values())).weight.dtype


def auto_product(device: torch.device, dtype: torch.dtype) -> str:
    """train.pack_product=auto's way on `device` for products in `dtype`. CUDA: grouped where torch
    has a grouped kernel (bf16 on compute capability 9.x and 10.x, CUTLASS); elsewhere torch 2.13's
    grouped_mm is a loop of products after copying the offsets to the host (a sync per product), so
    batched products instead. The CPU: grouped (CPU_AUTO), equal bit for bit to the loop there; its speed
    against the loop is not yet measured on a quiet machine (bench/pack_step.py)."""
    if device.type == "cuda":
        fast = dtype == torch.bfloat16 and torch.cuda.get_device_capability(device)[0] in (9, 10)
        return "grouped" if fast else "batched"
    return CPU_AUTO


def grouped_alignment(dtype: torch.dtype) -> int:
    """Elements in 16 bytes: grouped_mm's stride unit."""
    return 16 // torch.empty((), dtype=dtype).element_size()


def groupable(layer: LoraLinear, names: list[str], dtype: torch.dtype) -> bool:
    """Whether grouped_lora can apply `names` on this layer in `dtype`: no LoRA bias, no variant but
    DoRA, one adapter dtype, and in/out features grouped_mm accepts (see the module's docstring)."""
    align = grouped_alignment(dtype)
    return (layer.in_features % align == 0 and layer.out_features % align == 0
            and all(layer.lora_B[n].bias is None for n in names)
            and all(isinstance(layer.lora_variant.get(n, DoraLinearVariant()), DoraLinearVariant) for n in names)
            and len({layer.lora_A[n].weight.dtype for n in names}) == 1)


def grouped_lora(layer: LoraLinear, adapters: list[str], sizes: list[int], x: torch.Tensor,
                 result: torch.Tensor, layouts: Layouts) -> torch.Tensor:
    """`result` (the base's output) plus each block's adapter term, `adapters[i]` on block i's
    `sizes[i]` rows of `x`, through one grouped A product and one grouped B product over the span
    from the first adapted block to the last (a block of another adapter in it gets zero weights)."""
    present = [i for i, name in enumerate(adapters) if name in layer.lora_A]
    first, last = present[0], present[-1] + 1
    start, stop = sum(sizes[:first]), sum(sizes[:last])
    names, span = adapters[first:last], sizes[first:last]
    live = [n for n in names if n in layer.lora_A]
    dtype = product_dtype(layer, x.device)
    a_weights = [layer.lora_A[n].weight for n in live]  # each (rank, in)
    layout = layouts.get([layer.lora_A[n].weight.shape[0] if n in layer.lora_A else 0 for n in names],
                         [layer.scaling[n] if n in layer.lora_A else 0.0 for n in names], span,
                         x.device, grouped_alignment(dtype))
    offsets = layout.offsets * (x[0].numel() // x.shape[-1])  # in rows of `flat`: a block's rows' tokens
    # The span cut out by one split, not slices: a slice's backward fills a zero gradient as large as
    # the whole batch, and the slices' gradients are then added (the 9-run design card: 28 fills of
    # (144, 36, 1536) a step, 8-20% of its CPU time in torch's profiler); a split's backward is one cat
    around = [start, stop - start, len(x) - stop]
    dropped = _dropped(layer, names, span, cast_lora_input(layer, x.split(around)[1], a_weights[0].dtype))
    k = len(names)
    # (k * width, in) and (k * width, out): block i's adapter's rank rows at i * width, the rest zeros
    a = a_weights[0].new_zeros(k * layout.width, layer.in_features).index_copy(0, layout.index, torch.cat(a_weights))
    b_rows = torch.cat([layer.lora_B[n].weight.t() for n in live])
    b = b_rows.new_zeros(k * layout.width, layer.out_features).index_copy(0, layout.index, b_rows)
    flat = dropped.reshape(-1, layer.in_features).to(dtype)  # a block's rows: its rows' tokens, in order
    low = grouped_mm(flat, a.to(dtype).view(k, layout.width, -1).transpose(1, 2), offsets)
    out = grouped_mm(low, b.to(dtype).view(k, layout.width, -1), offsets).view(*dropped.shape[:-1], -1)
    before, part, after = result.split(around)
    if any(n in layer.lora_variant for n in live):
        part = _with_dora(layer, names, span, dropped, part, out)
    else:  # as the loop's `* scaling`: float32 math, rounded to the product's dtype
        part = part + (out * layout.scale.view(-1, *[1] * (out.dim() - 1))).to(out.dtype)
    if start == 0 and stop == len(x):
        return part
    return torch.cat([before, part, after])


def _dropped(layer: LoraLinear, names: list[str], sizes: list[int], rows: torch.Tensor) -> torch.Tensor:
    """`rows` through each block's adapter's dropout (rows of a block of another adapter as they are),
    masks drawn in block order as the loop draws them."""
    if all(isinstance(layer.lora_dropout[n], nn.Identity) for n in names if n in layer.lora_A):
        return rows
    return torch.cat([layer.lora_dropout[n](part) if n in layer.lora_A else part
                      for n, part in zip(names, rows.split(sizes))])


def _with_dora(layer: LoraLinear, names: list[str], sizes: list[int], dropped: torch.Tensor,
               result: torch.Tensor, low_rank: torch.Tensor) -> torch.Tensor:
    """`result` plus each block's term given its adapter's low-rank product B(A(dropout(x)))
    (`low_rank`, unscaled): plain LoRA's `* scaling`, or DoRA's as peft computes it."""
    parts = []
    for name, part, rows, low in zip(names, result.split(sizes), dropped.split(sizes), low_rank.split(sizes)):
        if name in layer.lora_variant:
            part = part + _dora_term(layer, name, rows, part, low)
        elif name in layer.lora_A:
            part = part + low * layer.scaling[name]
        parts.append(part)
    return torch.cat(parts)


def _dora_term(layer: LoraLinear, name: str, x: torch.Tensor, base: torch.Tensor, lora: torch.Tensor) -> torch.Tensor:
    """peft's DoraLinearLayer.forward (peft 0.21) on one block, its B(A(x)) given: `x` its rows after
    the cast and its dropout, `base` the base's output on them, `lora` B(A(x)). peft's variant passes
    the base's output only without dropout in training, and computes the base again on the dropped rows
    otherwise; so does this."""
    dora = layer.lora_magnitude_vector[name]
    scaling = layer.scaling[name]
    base_layer = layer.get_base_layer()
    lora_weight = dora.get_lora_weight(lora_A=layer.lora_A[name], lora_B=layer.lora_B[name], adapter_name=name)
    weight = dequantize_module_weight(base_layer).to(x.dtype)
    weight_norm = dora.get_weight_norm(weight=weight, lora_weight=lora_weight.to(x.dtype).detach(),
                                       scaling=scaling, adapter_name=name).detach()
    mag_norm_scale = (dora.weight / weight_norm).view(1, -1)
    if isinstance(layer.lora_dropout[name], nn.Identity) or not layer.training:
        if base_layer.bias is not None:
            base = base - base_layer.bias
    else:
        base = F.linear(x, transpose(weight, dora.fan_in_fan_out))
    return (mag_norm_scale - 1) * base + mag_norm_scale * lora * scaling


def batched_lora(layer: LoraLinear, adapters: list[str], n_rows: int, x: torch.Tensor, result: torch.Tensor,
                 layouts: Layouts) -> torch.Tensor:
    """`result` plus the plain-LoRA terms of `adapters` on K equal blocks of `n_rows` rows, in two
    batched products (bmm; a block of another adapter, or of a DoRA one, gets zeros), then each DoRA
    block's term through peft's own code, as the loop does."""
    names = [n if n in layer.lora_A and n not in layer.lora_variant else None for n in adapters]
    k, sizes = len(adapters), [n_rows] * len(adapters)
    if any(names):
        present = [n for n in names if n]
        layout = layouts.get([layer.lora_A[n].weight.shape[0] if n else 0 for n in names],
                             [layer.scaling[n] if n else 0.0 for n in names], [1] * k, x.device)
        a_weights = [layer.lora_A[n].weight for n in present]
        dropped = _dropped(layer, [n or "" for n in names], sizes, cast_lora_input(layer, x, a_weights[0].dtype))
        a = a_weights[0].new_zeros(k * layout.width, dropped.shape[-1]).index_copy(0, layout.index, torch.cat(a_weights))
        b_rows = torch.cat([layer.lora_B[n].weight.t() for n in present])
        b = b_rows.new_zeros(k * layout.width, b_rows.shape[-1]).index_copy(0, layout.index, b_rows)
        low = torch.bmm(dropped.reshape(k, -1, dropped.shape[-1]), a.view(k, layout.width, -1).transpose(1, 2))
        out = torch.bmm(low, b.view(k, layout.width, -1))
        out = (out * layout.scale.view(k, 1, 1)).to(out.dtype)  # as the loop's `* scaling`: float32 math, out's dtype
        result = result + out.view(result.shape)
    dora = [i for i, n in enumerate(adapters) if n in layer.lora_variant]
    if not dora:
        return result
    parts, rows = list(result.split(sizes)), x.split(sizes)
    for i in dora:
        parts[i] = peft_dora(layer, adapters[i], rows[i], parts[i])
    return torch.cat(parts)


def peft_dora(layer: LoraLinear, name: str, rows: torch.Tensor, part: torch.Tensor) -> torch.Tensor:
    """A DoRA run's output on its rows (`part`: the base's output there), through peft's own code."""
    rows = cast_lora_input(layer, rows, layer.lora_A[name].weight.dtype)
    return layer.lora_variant[name].forward(layer, active_adapter=name, x=rows, result=part)
