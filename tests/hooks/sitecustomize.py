"""Hooks the fault tests put into every process they start (a driver, its workers, a SLURM job):
`PYTHONPATH=tests/hooks` makes Python import this file at startup. Each hook is off unless its
environment variable is set, so a process started without them is an ordinary one.

    LORASWEEP_COUNT_TRAININGS=<file>   every Trainer.train call appends "<pid> <run folder>" to <file>:
                                       how the tests count trainings (no run may be trained twice)
"""
import os

_COUNT = os.environ.get("LORASWEEP_COUNT_TRAININGS")

if _COUNT:
    from pathlib import Path

    import transformers

    _train = transformers.Trainer.train

    def _counted_train(self, *args, **kwargs):
        with open(_COUNT, "a") as f:  # one short line per write, appended: whole lines even from many processes
            f.write(f"{os.getpid()} {Path(self.args.output_dir).resolve().parent}\n")
        return _train(self, *args, **kwargs)

    transformers.Trainer.train = _counted_train
