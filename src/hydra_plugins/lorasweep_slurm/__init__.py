"""lorasweep's SLURM launcher for Hydra: job arrays through submitit, requeue, restartable drivers."""
