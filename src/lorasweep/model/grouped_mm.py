"""torch's grouped_mm as a custom op, so a compiled pack step (train.compile) can trace it in float32.

torch 2.13's fake (meta) kernel for grouped_mm accepts bf16 inputs only, while its CPU kernel also
runs float32: dynamo fails on a float32 grouped product ("Expected inputs of BF16 type"). The op here
runs the same kernel, with a fake kernel for any dtype and a backward of grouped products (through
this op again: AOT autograd traces the backward with fake tensors too). Eager code calls
F.grouped_mm itself (`grouped_mm` below): its numbers stay torch's own, to the bit.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


@torch.library.custom_op("lorasweep::grouped_mm", mutates_args=())
def _grouped_mm(a: torch.Tensor, b: torch.Tensor, offs: torch.Tensor) -> torch.Tensor:
    """F.grouped_mm(a, b, offs=offs): a (rows, k) by b (groups, k, n) -> (rows, n), group g the rows
    offs[g-1]:offs[g]; or a (k, rows) by b (rows, n) -> (groups, k, n), the per-group sums over rows.
    `offs` cast to int32, which grouped_mm requires: inductor may compute them as int64 (seen with a
    cumsum of an int32 constant times a traced sequence length, cast back to int32 in the graph)."""
    return F.grouped_mm(a, b, offs=offs.to(torch.int32))


@_grouped_mm.register_fake
def _(a: torch.Tensor, b: torch.Tensor, offs: torch.Tensor) -> torch.Tensor:
    if b.dim() == 3:
        return a.new_empty(a.shape[0], b.shape[-1])
    return a.new_empty(offs.shape[0], a.shape[0], b.shape[-1])


def _setup_context(ctx, inputs, output) -> None:
    a, b, offs = inputs
    if b.dim() != 3:
        raise NotImplementedError("lorasweep::grouped_mm differentiates its (rows, k) x (groups, k, n) form only")
    ctx.save_for_backward(a, b, offs)


def _backward(ctx, grad: torch.Tensor):
    """Group g's rows are a_g @ b[g]: grad a_g = grad_g @ b[g]^T, grad b[g] = a_g^T @ grad_g."""
    a, b, offs = ctx.saved_tensors
    grad = grad.contiguous()  # grouped_mm refuses a broadcast gradient's zero strides (a sum's)
    grad_a = _grouped_mm(grad, b.transpose(1, 2), offs) if ctx.needs_input_grad[0] else None
    grad_b = _grouped_mm(a.t(), grad, offs) if ctx.needs_input_grad[1] else None
    return grad_a, grad_b, None


_grouped_mm.register_autograd(_backward, setup_context=_setup_context)


def grouped_mm(a: torch.Tensor, b: torch.Tensor, offs: torch.Tensor) -> torch.Tensor:
    """F.grouped_mm, through the custom op while torch.compile traces (whose fake kernel takes any dtype)."""
    if torch.compiler.is_compiling():
        return _grouped_mm(a, b, offs)
    return F.grouped_mm(a, b, offs=offs)
