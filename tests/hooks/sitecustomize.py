"""Hooks the fault tests put into every process they start (a driver, its workers, a SLURM job):
`PYTHONPATH=tests/hooks` makes Python import this file at startup. Each hook is off unless its
environment variable is set, so a process started without them is an ordinary one.

    LORASWEEP_COUNT_TRAININGS=<file>   every Trainer.train call appends "<pid> <run folder>" to <file>:
                                       how the tests count trainings (no run may be trained twice);
                                       and to <file>.finished when it returns (a training that ran to
                                       its end, not one killed or interrupted). A pack's training loop
                                       (lorasweep.run.pack_loop.train_pack, which never calls
                                       Trainer.train) is counted the same way, one line per run of it
    LORASWEEP_FAIL_ONCE=<file>         the first Trainer.train call of all the processes that share
                                       <file> creates it and raises RuntimeError; every later call
                                       trains: a run that fails the first time only (retries)
    LORASWEEP_SLOW_STOP=<seconds>      a Trainer.train ended by an interrupt (a worker turns SIGTERM
                                       into one) sleeps this long before it ends: a run whose cleanup
                                       takes time, which only SIGKILL stops sooner (a second Ctrl-C)
    LORASWEEP_RAISE_OOM=<name>@<step>  the run whose folder's name contains <name> raises
                                       torch.cuda.OutOfMemoryError (a message like CUDA's own) at its
                                       <step>th training step (1-based; "@<step>" may be left out: 1),
                                       from inside Trainer.training_step: how a CPU machine runs out of
                                       accelerator memory in a real run
    LORASWEEP_PACK_HOLDS=<n>           a pack's training step over more than <n> runs raises
                                       torch.cuda.OutOfMemoryError (CUDA's message): an accelerator
                                       that holds <n> runs' steps at once
    LORASWEEP_KILL_PACK_AT=<step>      a pack's <step>th training step in this process (1-based) kills the
                                       process with SIGKILL before it computes anything: a pack killed at a
                                       known step (after a checkpoint), with no timing window
    LORASWEEP_RANK_BATCHES=<file>      every Trainer.training_step appends one JSON line: the process's
                                       data-parallel RANK and WORLD_SIZE, the step (1-based) and a
                                       fingerprint of each row of its batch (the sum of its token ids):
                                       which rows each rank trained on, step by step
    LORASWEEP_FAIL_RANK=<rank>@<step>  the data-parallel rank <rank> raises RuntimeError at its <step>th
                                       training step: a rank that fails while its peers train on;
                                       with ":oom" after it, torch.cuda.OutOfMemoryError (CUDA's
                                       message, naming GPU <rank>): a rank out of accelerator memory
    LORASWEEP_KILL_AT=<name>@<when>,...  the process that trains the run whose folder's name contains
                                       <name> kills itself with SIGKILL (as the out-of-memory killer
                                       does) at its <when>th training step (1-based), or, with
                                       <when> "result", right after it wrote that run's result.json
                                       (a failed one, say: a worker that dies just after its run
                                       recorded its failure)
    LORASWEEP_FAIL_AT=<name>@<step>    the run whose folder's name contains <name> raises RuntimeError at
                                       its <step>th training step (1-based): a run that fails with an
                                       exception of its own, at a known point of a sweep
    LORASWEEP_FAKE_GPUS=<n>            this machine has <n> GPUs, as local workers are placed
                                       (fake_gpus.py; tests/conftest.py sets 0 for every test)
    LORASWEEP_SLOW_EXIT=<file>         a local worker told to end (after the sweep's last run) appends
                                       its pid to <file> and waits 60 s before it exits: a driver
                                       caught while it lets its idle workers go
    LORASWEEP_HOLD=<gate file>@<step>  every run (alone or in a pack) waits before its <step>th training
                                       step (1-based) until <gate file> exists; as it starts to wait it
                                       appends "<pid> <run folder>[,<run folder>...] <step>" to
                                       <gate file>.held: a barrier, so that a test acts on a run known to
                                       be mid-training (kills it, starts a rival) and then lets it go on;
                                       a run still held after 10 minutes raises RuntimeError
    LORASWEEP_SLOW_RECORD=<seconds>    a driver recording a worker's death (lorasweep.run.records) waits
                                       this long once it has deleted the dead worker's claim, before it
                                       writes the run's failed result: a driver stalled on loaded cores
    LORASWEEP_RO_AT_RELEASE=<mount>    each claim a process releases (lorasweep.run.claims) meets the
                                       mount <mount> read-only: it is remounted so just before, and
                                       writable again 0.5 s later (root; the release returns once it
                                       is): a store read-only for a moment as a run or a study ends

A call is counted before it fails or trains.

Each hook patches its module when a process first imports it (wrapt's post-import hooks), never at
startup: a process that trains nothing (a driver's multiprocessing resource tracker, a wrapper, a
SLURM helper) starts as fast as an ordinary one. Importing transformers and lorasweep's training
loop in each of them cost about 6 s of CPU a process.
"""
import os
from pathlib import Path

if os.environ.get("LORASWEEP_FAKE_GPUS") is not None:
    try:
        import lorasweep  # noqa: F401  (a process without lorasweep places no workers: nothing to fake)
    except ImportError:
        pass
    else:
        import fake_gpus

        fake_gpus.install()

_COUNT = os.environ.get("LORASWEEP_COUNT_TRAININGS")
_FAIL_ONCE = os.environ.get("LORASWEEP_FAIL_ONCE")
_SLOW_STOP = float(os.environ.get("LORASWEEP_SLOW_STOP") or 0)
_OOM = os.environ.get("LORASWEEP_RAISE_OOM")
_PACK_HOLDS = os.environ.get("LORASWEEP_PACK_HOLDS")
_KILL_PACK_AT = os.environ.get("LORASWEEP_KILL_PACK_AT")
_RANK_BATCHES = os.environ.get("LORASWEEP_RANK_BATCHES")
_FAIL_RANK = os.environ.get("LORASWEEP_FAIL_RANK")
_KILL_AT = os.environ.get("LORASWEEP_KILL_AT")
_FAIL_AT = os.environ.get("LORASWEEP_FAIL_AT")
_HOLD = os.environ.get("LORASWEEP_HOLD")
_SLOW_EXIT = os.environ.get("LORASWEEP_SLOW_EXIT")
_RO_AT_RELEASE = os.environ.get("LORASWEEP_RO_AT_RELEASE")
_SLOW_RECORD = float(os.environ.get("LORASWEEP_SLOW_RECORD") or 0)

if any([_COUNT, _FAIL_ONCE, _SLOW_STOP, _OOM, _PACK_HOLDS, _KILL_PACK_AT, _RANK_BATCHES, _FAIL_RANK, _KILL_AT,
        _FAIL_AT, _HOLD, _SLOW_EXIT, _RO_AT_RELEASE, _SLOW_RECORD]):
    try:
        from wrapt import when_imported
    except ImportError as missing:  # Python says "Error in sitecustomize" with this, and goes on unhooked
        raise ImportError("the LORASWEEP_* test hooks need wrapt: bash scripts/setup.sh --dev installs it") from missing

if _COUNT or _FAIL_ONCE or _SLOW_STOP:
    @when_imported("transformers.trainer")
    def _count_trainings(trainer):
        _train = trainer.Trainer.train

        def _hooked_train(self, *args, **kwargs):
            line = f"{os.getpid()} {Path(self.args.output_dir).resolve().parent}\n"
            if _COUNT:
                with open(_COUNT, "a") as f:  # one short line per write, appended: whole lines even from many processes
                    f.write(line)
            if _FAIL_ONCE:
                try:
                    os.close(os.open(_FAIL_ONCE, os.O_CREAT | os.O_EXCL | os.O_WRONLY))  # exactly one process wins
                except FileExistsError:
                    pass
                else:
                    raise RuntimeError(f"LORASWEEP_FAIL_ONCE: the first training fails ({_FAIL_ONCE})")
            try:
                out = _train(self, *args, **kwargs)
            except KeyboardInterrupt:
                if _SLOW_STOP:
                    import time

                    time.sleep(_SLOW_STOP)
                raise
            if _COUNT:
                with open(_COUNT + ".finished", "a") as f:
                    f.write(line)
            return out

        trainer.Trainer.train = _hooked_train

if _COUNT:
    @when_imported("lorasweep.run.pack_loop")  # patched before lorasweep.run.pack imports train_pack by name
    def _count_packs(pack_loop):
        _train_pack = pack_loop.train_pack

        def _counted_pack(pack, members, *args, **kwargs):
            lines = [f"{os.getpid()} {Path(m.trainer.args.output_dir).resolve().parent}\n" for m in members]
            with open(_COUNT, "a") as f:
                for line in lines:  # one short line per write, as above
                    f.write(line)
                    f.flush()
            out = _train_pack(pack, members, *args, **kwargs)
            with open(_COUNT + ".finished", "a") as f:
                for line in lines:
                    f.write(line)
                    f.flush()
            return out

        pack_loop.train_pack = _counted_pack


def _raise_at_step(spec: str, error) -> None:
    """Once transformers' Trainer is imported: the run whose folder's name contains <name> (spec
    "<name>@<step>"; "@<step>" left out: 1) raises error(run folder, step) at its <step>th training step."""
    name, _, step = spec.partition("@")
    counted = f"_steps_before_{id(error)}"  # on each Trainer: its run's training steps, for this hook alone

    @when_imported("transformers.trainer")
    def _patch(trainer):
        _training_step = trainer.Trainer.training_step

        def _step_or_raise(self, *args, **kwargs):
            folder = Path(self.args.output_dir).resolve().parent  # <run folder>/trainer (lorasweep.run.lifecycle)
            if name in folder.name:
                setattr(self, counted, getattr(self, counted, 0) + 1)
                if getattr(self, counted) == int(step or 1):
                    raise error(folder, getattr(self, counted))
            return _training_step(self, *args, **kwargs)

        trainer.Trainer.training_step = _step_or_raise


def _out_of_memory(folder: Path, step: int) -> BaseException:
    import torch

    return torch.cuda.OutOfMemoryError(
        "CUDA out of memory. Tried to allocate 2.00 GiB. GPU 0 has a total capacity of 79.19 GiB "
        "of which 1.06 GiB is free. (raised by tests/hooks/sitecustomize.py: LORASWEEP_RAISE_OOM)")


if _OOM:
    _raise_at_step(_OOM, _out_of_memory)

if _PACK_HOLDS:
    @when_imported("lorasweep.run.pack")
    def _pack_holds(pack_module):
        from torch.cuda import OutOfMemoryError

        def _holding(losses_of):
            def losses(pack, batch, blocks, live):
                if len(blocks) > int(_PACK_HOLDS):
                    raise OutOfMemoryError(
                        "CUDA out of memory. Tried to allocate 2.00 GiB. GPU 0 has a total capacity of 79.19 GiB "
                        "of which 1.06 GiB is free. (raised by tests/hooks/sitecustomize.py: LORASWEEP_PACK_HOLDS)")
                return losses_of(pack, batch, blocks, live)
            return losses

        pack_module.classification_losses = _holding(pack_module.classification_losses)
        pack_module.sft_losses = _holding(pack_module.sft_losses)

if _KILL_PACK_AT:
    @when_imported("lorasweep.run.pack")
    def _kill_pack_at(pack_module):
        import signal

        _pack_steps = [0]

        def _killed_at(losses_of):
            def losses(pack, batch, blocks, live):
                _pack_steps[0] += 1
                if _pack_steps[0] == int(_KILL_PACK_AT):
                    os.kill(os.getpid(), signal.SIGKILL)
                return losses_of(pack, batch, blocks, live)
            return losses

        pack_module.classification_losses = _killed_at(pack_module.classification_losses)
        pack_module.sft_losses = _killed_at(pack_module.sft_losses)

if _RANK_BATCHES or _FAIL_RANK:
    @when_imported("transformers.trainer")
    def _rank_steps(trainer):
        import json

        _plain_step = trainer.Trainer.training_step

        def _step_seen(self, model, inputs, *args, **kwargs):
            self._seen_steps = getattr(self, "_seen_steps", 0) + 1
            rank = int(os.environ.get("RANK") or 0)
            if _RANK_BATCHES:
                rows = [int(r.sum()) for r in inputs["input_ids"]]
                with open(_RANK_BATCHES, "a") as f:  # one short line per write, appended: whole lines
                    f.write(json.dumps({"rank": rank, "world": int(os.environ.get("WORLD_SIZE") or 1),
                                        "step": self._seen_steps, "rows": rows}) + "\n")
            if _FAIL_RANK:
                where, _, how = _FAIL_RANK.partition(":")
                fail_rank, _, fail_step = where.partition("@")
                if rank == int(fail_rank) and self._seen_steps == int(fail_step or 1):
                    if how == "oom":
                        import torch

                        raise torch.cuda.OutOfMemoryError(
                            f"CUDA out of memory. Tried to allocate 2.00 GiB. GPU {rank} has a total capacity of "
                            f"79.19 GiB of which 1.06 GiB is free. (raised by tests/hooks/sitecustomize.py: "
                            f"LORASWEEP_FAIL_RANK)")
                    raise RuntimeError(f"LORASWEEP_FAIL_RANK: rank {rank} fails at step {self._seen_steps}")
            return _plain_step(self, model, inputs, *args, **kwargs)

        trainer.Trainer.training_step = _step_seen

if _KILL_AT:
    import signal

    _KILLS = dict(spec.rsplit("@", 1) for spec in _KILL_AT.split(","))  # {name: step or "result"}
    _trained_here: set[str] = set()  # folders this process trains: only their trainer dies, not the driver

    def _kill_when(folder: Path, when: str) -> None:
        for name, at in _KILLS.items():
            if name in folder.name and at == when:
                os.kill(os.getpid(), signal.SIGKILL)

    @when_imported("transformers.trainer")
    def _kill_in_step(trainer):
        _step_before_kill = trainer.Trainer.training_step

        def _step_or_die(self, *args, **kwargs):
            folder = Path(self.args.output_dir).resolve().parent  # <run folder>/trainer (lorasweep.run.lifecycle)
            _trained_here.add(folder.name)
            self._kill_steps = getattr(self, "_kill_steps", 0) + 1
            _kill_when(folder, str(self._kill_steps))
            return _step_before_kill(self, *args, **kwargs)

        trainer.Trainer.training_step = _step_or_die

    @when_imported("lorasweep.run.store")  # patched before any module imports write_result by name
    def _kill_after_result(store):
        _write_result = store.write_result

        def _write_then_die(folder, result):
            record = _write_result(folder, result)
            if Path(folder).resolve().name in _trained_here:
                _kill_when(Path(folder).resolve(), "result")
            return record

        store.write_result = _write_then_die

if _FAIL_AT:
    _raise_at_step(_FAIL_AT, lambda folder, step: RuntimeError(f"LORASWEEP_FAIL_AT: {folder.name} fails at step {step}"))

if _HOLD:
    import time

    _HOLD_GATE, _, _HOLD_STEP = _HOLD.rpartition("@")
    _HOLD_GATE, _HOLD_STEP = Path(_HOLD_GATE), int(_HOLD_STEP)

    def _hold(folders: list[str]) -> None:
        if _HOLD_GATE.exists():
            return
        with open(f"{_HOLD_GATE}.held", "a") as f:  # one short line per write, appended: whole lines
            f.write(f"{os.getpid()} {','.join(folders)} {_HOLD_STEP}\n")
        deadline = time.monotonic() + 600
        while not _HOLD_GATE.exists():
            if time.monotonic() > deadline:
                raise RuntimeError(f"LORASWEEP_HOLD: no {_HOLD_GATE} in 10 minutes")
            time.sleep(0.05)

    @when_imported("transformers.trainer")
    def _hold_runs(trainer):
        _step_unheld = trainer.Trainer.training_step

        def _step_held(self, *args, **kwargs):
            self._held_steps = getattr(self, "_held_steps", 0) + 1
            if self._held_steps == _HOLD_STEP:
                _hold([str(Path(self.args.output_dir).resolve().parent)])
            return _step_unheld(self, *args, **kwargs)

        trainer.Trainer.training_step = _step_held

    @when_imported("lorasweep.run.pack_loop")
    def _hold_packs(pack_loop):
        _pack_step_unheld = pack_loop._step

        def _pack_step_held(pack, live, step, *args, **kwargs):
            if step == _HOLD_STEP:
                _hold([str(Path(m.trainer.args.output_dir).resolve().parent) for m, _ in live])
            return _pack_step_unheld(pack, live, step, *args, **kwargs)

        pack_loop._step = _pack_step_held

if _SLOW_EXIT:
    import time

    _serve = None  # lorasweep's own serve, once its module is imported

    def _serve_then_linger(*args, **kwargs):
        # At this module's top level: a worker's target is pickled by name, and a nested function has
        # none. A spawned worker finds it here before anything imported lorasweep's worker module: the
        # import runs the hook below, which keeps the real serve.
        import lorasweep.executors.worker  # noqa: F401
        _serve(*args, **kwargs)  # returns when the driver says there is no next run (or is gone)
        with open(_SLOW_EXIT, "a") as f:
            f.write(f"{os.getpid()}\n")
        time.sleep(60)

    @when_imported("lorasweep.executors.worker")
    def _linger(worker):
        global _serve
        _serve = worker.serve
        worker.serve = _serve_then_linger

if _RO_AT_RELEASE:
    @when_imported("lorasweep.run.claims")
    def _release_read_only(claims):
        import subprocess
        import threading

        _release = claims.Claim.release

        def _released_read_only(self):
            subprocess.run(["mount", "-o", "remount,ro", _RO_AT_RELEASE], check=True)
            writable = threading.Timer(0.5, subprocess.run, (["mount", "-o", "remount,rw", _RO_AT_RELEASE],),
                                       {"check": True})
            writable.start()
            try:
                _release(self)
            finally:
                writable.join()

        claims.Claim.release = _released_read_only

if _SLOW_RECORD:
    @when_imported("lorasweep.run.records")
    def _slow_record(records):
        import time

        _drop = records.drop_dead_claim

        def _dropped_slowly(folder):
            _drop(folder)
            time.sleep(_SLOW_RECORD)

        records.drop_dead_claim = _dropped_slowly
