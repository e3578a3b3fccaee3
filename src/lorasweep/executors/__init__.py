"""Where runs execute: `submit_many([Job]) -> Futures` of result dicts (job: one run or a pack, with
their folders, trials and ranks; interface: the Executor protocol that the sweep's driver uses), by
local worker processes kept across runs (local) or SLURM job arrays through submitit (slurm; slurm_jobs: the job
record in a run's folder and what SLURM says of its job, without submitit); worker holds what runs
inside the process (execute), gpus places local workers on GPUs and slurm_gpus checks a job's GPU ask, and factory picks an executor from a hydra.launcher config.

May import: run/, model/, tasks/, config/ and the leaves (errors, console, compat, locks).
Not sweep/ (sweeps use executors, not the reverse).
"""
