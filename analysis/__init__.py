"""Analysis of lorasweep result JSONs (no torch): load, tables, report. See `python -m analysis -h`."""
