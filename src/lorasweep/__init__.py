"""lorasweep: sweeps of LoRA/DoRA fine-tuning runs, one result JSON per run (see README.md)."""

__version__ = "0.1.0"
