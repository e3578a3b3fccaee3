"""lorasweep: LoRA/DoRA fine-tuning sweeps, one real run at a time, one result JSON per run.

Subpackages follow a run's lifecycle, and imports only point down this list (tests/test_layers.py
holds the order and fails on a circle or an upward import; docs/ARCHITECTURE.md draws it):

    cli, export          entry points: `python launch.py`, `python -m lorasweep.export`
    sweep/               a sweep: compose jobs, triage each run, drive the grid or the Optuna loop
    executors/           where runs execute: the worker entry, local processes, SLURM jobs
    run/                 one run: plan, lifecycle, training loop, results store, tracking, export
    model/  tasks/       models and methods; data formats, tasks and their metrics (peers)
    config/              the validated run spec and projection codes (no torch)
    errors, console, compat, locks   leaves: user-facing errors, what is printed, other libraries'
                         private APIs, a file lock between one machine's processes
"""

__version__ = "0.1.0"
