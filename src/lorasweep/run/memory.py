"""A run that runs out of accelerator (GPU) memory: recognised, said in one line with the settings
that drive memory, and its memory given back so that the next run in the same worker starts clean.

Other sweep tools let one out-of-memory error poison every later run of their worker: the failed
run's model, optimizer and activations stay referenced from the exception's traceback (its frames),
and the allocator keeps their blocks cached. run/lifecycle.run_planned records the failure
(result.json, traceback.txt), lets go of the exception and the model, and then calls `release`.
"""
from __future__ import annotations

import gc
import re

import torch

from ..config.spec import QUANTIZED_METHODS
from ..errors import AcceleratorMemoryError

# What drives a run's memory, in the config's own names (conf/train/default.yaml, conf/config.yaml's
# lora:, conf/method/). Gradient checkpointing is not a setting here, so it is not named.
_BATCH = ("a smaller train.batch_size (train.eval_batch_size if it ran out while evaluating), "
          "a shorter train.max_length")
HINTS = {
    "adapter": f"to use less memory: {_BATCH}, a smaller lora.r, fewer projections in lora.proj, "
               "or method=qlora to load the base in 4 bits",
    "quantized": f"to use less memory: {_BATCH}, a smaller lora.r or fewer projections in lora.proj",
    "full": f"to use less memory: {_BATCH}, or method=lora (the optimizer keeps state for the adapters only)",
    "none": "to use less memory: a smaller train.eval_batch_size or a shorter train.max_length",
}


def hint(method: str) -> str:
    """The settings that drive a run's memory, for its method."""
    if method in QUANTIZED_METHODS:
        return HINTS["quantized"]
    return HINTS.get(method, HINTS["adapter"])


# torch raises torch.OutOfMemoryError (torch.cuda.OutOfMemoryError is the same class) from its CUDA,
# XPU and MPS allocators; a failed allocation elsewhere (a CUDA API call, an older MPS allocator) is a
# plain RuntimeError: "CUDA error: out of memory", "MPS backend out of memory (MPS allocated: ...)".
_MESSAGE = re.compile(r"\b(CUDA|HIP|MPS|XPU)\b[^\n]{0,40}?\bout of memory\b", re.IGNORECASE)
_GPU = re.compile(r"\bGPU (\d+)\b")                                  # CUDA's "GPU 0 has a total capacity ..."
_TRIED = re.compile(r"Tried to allocate ([\d.]+ [KMGT]?i?B)")


def out_of_memory(error: BaseException) -> BaseException | None:
    """The out-of-memory error in `error` or its chain (causes and contexts), or None."""
    seen: set[int] = set()
    e: BaseException | None = error
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        if isinstance(e, torch.OutOfMemoryError) or (isinstance(e, RuntimeError) and _MESSAGE.search(str(e))):
            return e
        e = e.__cause__ or e.__context__
    return None


def failure(error: BaseException, model, method: str) -> AcceleratorMemoryError:
    """The run's failure, said in one line: what ran out (ran_out) and what to lower for `method`.
    Holds no reference to `error` or `model`."""
    return AcceleratorMemoryError(f"{ran_out(error, model)}; {hint(method)}")


def loading_failure(error: BaseException, method: str) -> AcceleratorMemoryError:
    """A run whose model did not fit while loading (a quantized base loads onto the GPU; other bases
    load on the CPU, then move): what ran out, and what makes the weights smaller."""
    smaller = "a smaller model" if method in QUANTIZED_METHODS else \
        "model.dtype=bfloat16 (half the base's weights), method=qlora (4 bits), or a smaller model"
    return AcceleratorMemoryError(f"{ran_out(error, None)} while loading the model; to use less memory: "
                                  f"{smaller}, or a GPU with more free memory")


def ran_out(error: BaseException, model) -> str:
    """"out of accelerator memory on <device> (...)": its free and total memory where torch can say
    (asked now, while the failed run still holds its memory), what the failed allocation asked for."""
    text = str(error)
    device = _device(text, model)
    facts = [torch.cuda.get_device_name(device)] if device.type == "cuda" and torch.cuda.is_available() else []
    free_total = _free_total(device)
    if free_total:
        facts.append(f"{_gib(free_total[0])} free of {_gib(free_total[1])}")
    tried = _TRIED.search(text)
    if tried:
        facts.append(f"it tried to allocate {tried.group(1)}")
    return f"out of accelerator memory on {device}" + (f" ({', '.join(facts)})" if facts else "")


def release() -> None:
    """Give the accelerator's memory back once nothing references the failed run any more: collect
    first (the model, its Trainer and the optimizer reference each other: cycles that reference
    counting alone never frees), then empty the allocator's cache."""
    gc.collect()
    accelerator = getattr(torch, "accelerator", None)  # torch >= 2.6: CUDA, XPU, MPS alike
    if accelerator is not None and accelerator.is_available():
        accelerator.empty_cache()
    elif torch.cuda.is_available():
        torch.cuda.empty_cache()


def _device(text: str, model) -> torch.device:
    """The device that ran out: the GPU a CUDA message names ("GPU 1 has a total capacity of ..."; a
    model spread over several GPUs), else the one the model's weights are on."""
    try:
        device = next(model.parameters()).device
    except (StopIteration, AttributeError):
        device = torch.device("cpu")
    gpu, kind = _GPU.search(text), _MESSAGE.search(text)
    if gpu and (device.type == "cuda" or (kind and kind.group(1).upper() in ("CUDA", "HIP"))):
        return torch.device("cuda", int(gpu.group(1)))
    return device


def _free_total(device: torch.device) -> tuple[int, int] | None:
    if device.type == "cpu" or (device.type == "cuda" and not torch.cuda.is_available()):
        return None
    try:
        if device.type == "cuda":
            return torch.cuda.mem_get_info(device)
        return torch.accelerator.get_memory_info(device)
    except Exception:  # an accelerator that cannot say (or a torch without torch.accelerator)
        return None


def _gib(n: int) -> str:
    return f"{n / 2**30:.2f} GiB"
