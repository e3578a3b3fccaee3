"""lorasweep's plan launcher for Hydra: `hydra/launcher=plan` prints a sweep's runs, trains nothing."""
