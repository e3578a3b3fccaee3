"""One run, in the process that runs it: plan (spec, modules, exact count, budget; no weight read),
lifecycle (load -> adapt -> train -> evaluate -> save), the result records it writes (records), the
training loop (loop), packs of runs trained together (pack, pack_loop, pack_checkpoints, pack_compile) and the
progress.json it keeps while it trains (progress), the results store and its result JSON (store), a
run out of accelerator memory (memory), experiment tracking, the pruning reporter a sweep's trial
hands its runs (pruning), the Optuna storage's spelling that driver and runs both open
(study_storage), and a trained run's adapters (adapters: merge, several adapters on one base).

May import: model/, tasks/, config/ and the leaves (errors, console, compat, locks). Not executors/
or sweep/.
"""
