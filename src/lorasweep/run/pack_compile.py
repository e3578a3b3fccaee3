"""train.compile in a pack: the forward of its training steps torch.compile'd, once per pack shape.

A pack's step calls its model once over every run's rows (classification), or its decoder
(causal-LM SFT: lm_head.decoder_states); with train.compile=true that call goes through
torch.compile (inductor), and its backward through the graph AOT autograd compiled with it. As for a
run alone (run/loop.py), evaluation and generation stay eager: the evaluator's shapes vary.

A pack shape is a step's blocks (which rows are whose: the runs still in the pack, their batch
sizes). Dynamo reads them as Python constants, so each new shape compiles a graph (a run that
leaves the pack, an epoch's shorter last batch); the sequence length is marked dynamic, so steps
padded to other lengths run the same graph. A later pack in the same process with the same model
and shapes runs the graphs compiled before (dynamo's guards hold; model/adapter_pack.PACK).

`record` (each run's result.json says it as `pack.compile`) holds what was measured: the shapes
stepped, the graphs inductor compiled for this pack (counted by the backend itself: 0 for a shape
whose graph was compiled before) and dynamo's graph breaks over those compilations; with no break,
one graph a new shape.

Inductor compiles a pack's graphs with inplace_buffers=False: with its default (True) a packed
classification step's gradients came out wrong (tiny-bert, 3 runs, grouped products: adapters
0.36-0.66 of their largest value off the eager pack's after 4 steps; with False, 1.4e-5). A
compiled run alone was not hit (1.6e-5 off its eager run).
"""
from __future__ import annotations

from typing import Any

import torch

from .. import compat
from ..model.adapter_pack import PackedModel
from .loop import compile_counts

# Inductor's in-place buffer reuse, turned off for a pack's graphs only (torch._inductor.config.inplace_buffers)
INDUCTOR_PATCHES = {"inplace_buffers": False}

_compiling_for: list[dict] = []  # the record of the pack whose step is running, for the backend to count in


class PackCompile:
    """Calls a pack's modules as its training steps do, through their torch.compile'd forward."""

    def __init__(self, pack: PackedModel):
        compat.traceable_dora_weight()  # DoRA layers traced whole: no graph break in peft's DoRA
        self.pack = pack
        self.record = {"shapes": 0, "graphs": 0, "graph_breaks": 0}
        self._shapes: set[tuple] = set()
        self._compiled: dict[int, torch.nn.Module] = {}

    def __call__(self, module: torch.nn.Module, **inputs: Any) -> Any:
        """module(**inputs) compiled, inside `with pack.blocks(...)` (a pack's step)."""
        rows = next(v for v in inputs.values() if isinstance(v, torch.Tensor))
        shape = tuple((b.adapter, b.start, b.stop) for b in self.pack.current())
        if shape not in self._shapes:  # the layers' ways, which the traced forward does not record
            self._shapes.add(shape)
            self.record["shapes"] = len(self._shapes)
            self.pack.record_ways(len(rows), rows.device)
        for value in inputs.values():
            if isinstance(value, torch.Tensor) and value.dim() >= 2:
                torch._dynamo.maybe_mark_dynamic(value, 1)  # the sequence length: the batch's longest row
        compiled = self._compiled.get(id(module))
        if compiled is None:
            compiled = self._compiled[id(module)] = torch.compile(module, backend=_inductor)
        breaks = compile_counts()["graph_breaks"]
        _compiling_for.append(self.record)
        try:
            return compiled(**inputs)
        finally:
            _compiling_for.pop()
            self.record["graph_breaks"] += compile_counts()["graph_breaks"] - breaks


def _inductor(graph: torch.fx.GraphModule, example_inputs: list) -> Any:
    """Inductor with the pack's patches; each call is one graph compiled. One function for every
    pack: dynamo keeps a graph per backend, and a backend a pack would compile each pack anew."""
    from torch._inductor.compile_fx import compile_fx

    if _compiling_for:
        _compiling_for[-1]["graphs"] += 1
    return compile_fx(graph, example_inputs, config_patches=INDUCTOR_PATCHES)
