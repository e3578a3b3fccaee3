"""train.compile in a pack: the forward of its training steps torch.compile'd, once per pack shape.

A pack's step calls its model once over every run's rows (classification), or its decoder
(causal-LM SFT: lm_head.decoder_states); with train.compile=true that call goes through
torch.compile (inductor), and its backward through the graph AOT autograd compiled with it. As for a
run alone (run/loop.py), evaluation and generation stay eager: the evaluator's shapes vary.

A pack shape is a step's blocks (which rows are whose: the runs still in the pack, their batch
sizes). Dynamo reads them as Python constants, so each new shape compiles a graph (a run that
leaves the pack, an epoch's shorter last batch); the sequence length is marked dynamic, so steps
padded to other lengths run the same graph. `record` (each run's result.json says it as
`pack.compile`) holds what was measured: the shapes stepped, the graphs inductor compiled (counted
by the backend itself) and dynamo's graph breaks over those compilations; with no break, one graph
a shape.

Inductor runs here with inplace_buffers=False: with its default (True) the gradients of a packed
classification head came out wrong (tests/test_pack_compile.py measures both).
"""
from __future__ import annotations

from typing import Any

import torch

from .. import compat
from ..model.adapter_pack import PackedModel

# Inductor's in-place buffer reuse, turned off for a pack's graphs only (torch._inductor.config.inplace_buffers)
INDUCTOR_PATCHES = {"inplace_buffers": False}


class PackCompile:
    """Calls a pack's modules as its training steps do, through their torch.compile'd forward."""

    def __init__(self, pack: PackedModel, patches: dict[str, Any] | None = None):
        compat.traceable_dora_weight()
        self.pack = pack
        self.patches = INDUCTOR_PATCHES if patches is None else patches
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
            compiled = self._compiled[id(module)] = torch.compile(module, backend=self._backend)
        breaks = _graph_breaks()
        try:
            return compiled(**inputs)
        finally:
            self.record["graph_breaks"] += _graph_breaks() - breaks

    def _backend(self, graph: torch.fx.GraphModule, example_inputs: list) -> Any:
        """Inductor, with this pack's patches; each call is one graph compiled."""
        from torch._inductor.compile_fx import compile_fx

        self.record["graphs"] += 1
        return compile_fx(graph, example_inputs, config_patches=self.patches)


def _graph_breaks() -> int:
    """Dynamo's count of graph breaks so far in this process (it counts as it traces)."""
    from torch._dynamo.utils import counters

    return sum(counters["graph_break"].values())
