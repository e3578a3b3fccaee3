"""A sweep: Hydra composition of its jobs (compose), the decision for each run before anything trains
(triage: invalid, done, over budget, train), the one driver that hands runs to an executor
(driver: in flight, retries, claims, store faults, interrupts) and packs of runs (packs; pack_auto:
pack=auto's choice where packs pay), the grid
(grid), the plan view (plan_table) and
where each run stands in it (status; gpu_usage: the GPUs it used and its peak GPU memory), and the Optuna search (optuna_study: ask and tell;
optuna_settings and optuna_space: its keys, search space and sampler; optuna_results: its summary and
optimization_results.yaml; failure_rate and custom_space: hydra.sweeper.max_failure_rate and
custom_search_space). The Hydra plugins in src/hydra_plugins/ are thin adapters over this package.

May import: executors/, run/, model/, tasks/, config/ and the leaves (errors, console, compat,
locks).
"""
