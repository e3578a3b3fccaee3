"""Tasks: the data formats read strictly from JSONL/CSV (formats), the Task a spec names and how its
rows are trained and scored (task), one module per kind of scoring (classification, mcq,
generation) and the shared metrics (accuracy with its binomial standard error, headline lines).

May import: lorasweep.config and the leaves (errors, console, compat, locks). Not model/ (a peer).
"""
