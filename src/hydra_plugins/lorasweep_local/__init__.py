"""lorasweep's local launcher for Hydra: runs in worker processes, progress and a sweep summary."""
