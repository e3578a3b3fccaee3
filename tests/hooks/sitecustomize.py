"""Hooks the fault tests put into every process they start (a driver, its workers, a SLURM job):
`PYTHONPATH=tests/hooks` makes Python import this file at startup. Each hook is off unless its
environment variable is set, so a process started without them is an ordinary one.

    LORASWEEP_COUNT_TRAININGS=<file>   every Trainer.train call appends "<pid> <run folder>" to <file>:
                                       how the tests count trainings (no run may be trained twice)
    LORASWEEP_FAIL_ONCE=<file>         the first Trainer.train call of all the processes that share
                                       <file> creates it and raises RuntimeError; every later call
                                       trains: a run that fails the first time only (retries)
    LORASWEEP_SLOW_STOP=<seconds>      a Trainer.train ended by an interrupt (a worker turns SIGTERM
                                       into one) sleeps this long before it ends: a run whose cleanup
                                       takes time, which only SIGKILL stops sooner (a second Ctrl-C)

A call is counted before it fails or trains.
"""
import os

_COUNT = os.environ.get("LORASWEEP_COUNT_TRAININGS")
_FAIL_ONCE = os.environ.get("LORASWEEP_FAIL_ONCE")
_SLOW_STOP = float(os.environ.get("LORASWEEP_SLOW_STOP") or 0)

if _COUNT or _FAIL_ONCE or _SLOW_STOP:
    from pathlib import Path

    import transformers

    _train = transformers.Trainer.train

    def _hooked_train(self, *args, **kwargs):
        if _COUNT:
            with open(_COUNT, "a") as f:  # one short line per write, appended: whole lines even from many processes
                f.write(f"{os.getpid()} {Path(self.args.output_dir).resolve().parent}\n")
        if _FAIL_ONCE:
            try:
                os.close(os.open(_FAIL_ONCE, os.O_CREAT | os.O_EXCL | os.O_WRONLY))  # exactly one process wins
            except FileExistsError:
                pass
            else:
                raise RuntimeError(f"LORASWEEP_FAIL_ONCE: the first training fails ({_FAIL_ONCE})")
        try:
            return _train(self, *args, **kwargs)
        except KeyboardInterrupt:
            if _SLOW_STOP:
                import time

                time.sleep(_SLOW_STOP)
            raise

    transformers.Trainer.train = _hooked_train
