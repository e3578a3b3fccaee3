"""LORASWEEP_FAKE_GPUS=N: this machine has N GPUs, as lorasweep.executors.gpus counts them (in place
of nvidia-smi), so that placing workers on GPUs is tested on a machine without any; 0 hides a real
machine's GPUs. Torch on a CPU ignores the CUDA_VISIBLE_DEVICES a worker gets: runs train on the CPU.

Installed by tests/conftest.py in the test process and by sitecustomize.py in every process a test
starts (tests/conftest.py puts tests/hooks on their PYTHONPATH); read at each count, so a test may
change it (monkeypatch.setenv). LORASWEEP_FAKE_GPU_MB=M: each has M MiB of memory (what a run must
fit in; default 81559, an H100's), named "Fake GPU".
"""
import os

VAR = "LORASWEEP_FAKE_GPUS"
MEMORY = "LORASWEEP_FAKE_GPU_MB"


def install() -> None:
    from lorasweep.executors import gpus

    counted = gpus.gpu_count
    if getattr(counted, "faked", False):
        return

    def gpu_count() -> int:
        fake = os.environ.get(VAR)
        return counted() if fake is None else int(fake)

    memory, name = gpus.gpu_memory_mb, gpus.gpu_name

    def gpu_memory_mb():
        if os.environ.get(VAR) is None:
            return memory()
        return float(os.environ.get(MEMORY, 81559)) if int(os.environ[VAR]) else None

    def gpu_name():
        if os.environ.get(VAR) is None:
            return name()
        return "Fake GPU" if int(os.environ[VAR]) else None

    gpu_count.faked = True
    gpus.gpu_count, gpus.gpu_memory_mb, gpus.gpu_name = gpu_count, gpu_memory_mb, gpu_name
