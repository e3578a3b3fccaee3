"""Benchmark: a soak of random faults on four long tiny sweeps, and what they leave behind.

    python bench/chaos.py [--faults 200] [--seed N] [--gap 3] [--sweeps grid,pack,optuna,jobs2] [--keep DIR]

Four sweeps run side by side, each into a results store of its own, on a tiny random model
(model=tiny-bert, wordnet_topics, 8 steps of at least 0.2 s a run; 6 runs a sweep):

    grid      a grid, one worker
    pack      the same grid packed (hydra.launcher.pack=true)
    optuna    an Optuna study of the same cells (grid sampler) with the median pruner
              (hydra.launcher.retries=3: a trial whose worker is killed is run again in the study);
              its storage, round by round, a SQLite file beside its store (a read-only store refuses
              the runs alone) or a journal file in it (SLURM's default: the runs and the study
              refused at once). Not SQLite in the store, the local default: a store holding an open
              SQLite file for writing cannot be remounted read-only, so it would always be filled
    jobs2     the same grid on 2 workers (hydra.launcher.n_jobs=2)

(--sweeps runs some of them: the suite's short soak leaves out jobs2, whose restarts cost the most.)

About every --gap seconds (random: the seed, printed, picks the times, the sweeps and the order of the
faults, each kind as often as the others), one sweep that trains gets one of these faults, and a line
says which:

    kill-driver   SIGKILL of the driver (its workers get SIGTERM from the kernel)
    kill-sweep    SIGKILL of the driver and its workers at once (a machine lost): their claims stay
    kill-worker   SIGKILL of a worker that trains a run, or a pack (the out-of-memory killer)
    sigterm       SIGTERM to the driver (`kill`, a preemption)
    drivers       two more drivers of the same command, started at once
    store-refuses the results store read-only for 0.5-3 s (remounted ro: needs root); but while a
                  process keeps a file in it open for writing (a training run its log.txt), which a
                  read-only remount refuses, full for as long (a filler file takes its free space)

A driver that ends without success (killed, interrupted, a run failed) is started again with the same
command, until it exits 0; a sweep that has finished starts a new round, in a new store, while faults
remain. The training hooks of tests/hooks/sitecustomize.py count every training (a pack's runs too).
At the end, each store and its Optuna storage are checked:

    planned/finished  runs planned, and those with a finished result (done, diverged, pruned)
    trained twice     runs whose training ran to its end again after their result was written
    lost              finished results (each hashed when first seen) gone or changed
    stale claims      claim files whose owner is gone (every process has ended by then)
    running trials    Optuna trials left RUNNING
    trials told       Optuna's finished trials (complete, pruned, failed; not those abandoned by a
                      killed driver and asked again), which must equal n_trials
    tracebacks        driver outputs with a Python traceback (a fault is said in one line)

Any of these off makes it exit 1. A training that ran to its end and was then killed before its result
was written trains again, as it must; those are counted apart ("ended unrecorded").
"""
from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import psutil

from _proc import PYTHON, ROOT
from _watch import ResultWatch, counted, hooked_env

FINISHED = ("done", "diverged", "pruned")
TINY = ["model=tiny-bert", "task=wordnet_topics", "train.max_steps=8", "train.eval_steps=2", "task.max_train=32",
        "task.max_eval=16", "task.max_test=16", "train.batch_size=8", "train.step_sleep_s=0.2"]
GRID = ["lora.r=2,4,8", "train.lr=1e-3,3e-3"]
SWEEPS = {
    "grid": [*GRID, "hydra.launcher.threads=1"],
    "pack": [*GRID, "hydra.launcher.pack=true", "hydra.launcher.threads=1"],
    "optuna": ["hydra/sweeper=optuna", "hydra.sweeper.sampler=grid", "hydra.sweeper.n_trials=6",
               "hydra.sweeper.pruner=median", "hydra.sweeper.threads=1", "hydra.launcher.retries=3",
               "lora.r=choice(2,4,8)", "train.lr=choice(1e-3,3e-3)"],
    "jobs2": [*GRID, "hydra.launcher.n_jobs=2", "hydra.launcher.threads=1"],
}
PLANNED = 6  # runs a round of each sweep (3 ranks x 2 learning rates; the study's 6 cells)
FAULTS = ("kill-driver", "kill-sweep", "kill-worker", "sigterm", "drivers", "store-refuses")
STORE_SIZE = "256m"  # each round's store, a tmpfs: RAM as it is written (a round writes a few MB)
FILLER = ".chaos-filler"  # the file that fills a store, at its top, beside the run folders
WORKER_FLAG = "--multiprocessing-fork"  # on the command line of every local worker (multiprocessing's spawn)
KILLS_PER_TRIAL = 2  # of one Optuna trial's run: fewer than its retries, so that the study trains it
GIVE_UP_AFTER = 4    # driver ends in a row, with no fault in between, before a round counts as stuck


def stamp(t0: float) -> str:
    return f"[{time.monotonic() - t0:7.1f}s]"


@dataclass
class Round:
    """One sweep's results store, from its first driver to the one that exits 0."""

    sweep: str
    number: int
    dir: Path
    store: Path
    mounted: bool = False
    storage: str = ""         # the Optuna sweep's storage URL (hydra.sweeper.storage)
    starts: int = 0           # drivers started with its command (the extra ones too)
    done: bool = False
    stuck: str = ""           # why it stopped short of a driver exiting 0
    logs: list[Path] = field(default_factory=list)


class Sweep:
    """One of the four sweeps: its current round and driver, and the rounds before."""

    def __init__(self, name: str, chaos: "Chaos"):
        self.name, self.chaos = name, chaos
        self.args = ["-m", *SWEEPS[name], *TINY]
        self.rounds: list[Round] = []
        self.driver: subprocess.Popen | None = None
        self.quiet_ends = 0  # driver ends since the last fault on this sweep
        self.trained_before = 0  # trainings of the round counted when its driver last started, or its last fault
        self.worker_kills: Counter = Counter()  # Optuna: kills of each run's worker

    @property
    def round(self) -> Round:
        return self.rounds[-1]

    @property
    def label(self) -> str:
        return f"{self.name}#{self.round.number}"

    def new_round(self) -> None:
        number = len(self.rounds) + 1
        folder = self.chaos.root / f"{self.name}-{number}"
        store = folder / "results"
        store.mkdir(parents=True)
        r = Round(self.name, number, folder, store.resolve())
        r.mounted = self.chaos.can_mount and _mount(["-t", "tmpfs", "-o", f"size={STORE_SIZE}", "tmpfs", str(r.store)])
        if self.name == "optuna":  # odd rounds beside the store, even rounds in it
            r.storage = f"sqlite:///{folder / 'optuna.db'}" if number % 2 else f"journal://{r.store}/optuna.journal"
        self.rounds.append(r)
        self.chaos.watch.stores.append(r.store)
        self.quiet_ends, self.worker_kills, self.trained_before = 0, Counter(), 0
        self.driver = self.start()

    def trainings(self) -> int:
        """Trainings started in the round's store so far."""
        return sum(folder.parent == self.round.store for _, folder in counted(self.chaos.count))

    def ready(self) -> bool:
        """Whether it may take a fault now: its driver runs and a training has started since it started
        or since its last fault (a fault lands while runs train, and every fault lets it get on)."""
        return self.driver is not None and self.driver.poll() is None and self.trainings() > self.trained_before

    def start(self) -> subprocess.Popen:
        """`python launch.py ARGS` in the round's folder, in its own session, its output to a log."""
        r = self.round
        r.starts += 1
        log = r.dir / f"driver-{r.starts}.log"
        r.logs.append(log)
        with open(log, "w") as out:
            storage = [f"hydra.sweeper.storage={r.storage}"] if r.storage else []
            return subprocess.Popen([PYTHON, str(ROOT / "launch.py"), *self.args, *storage, f"results_dir={r.store}"],
                                    cwd=r.dir, env=self.chaos.env, stdout=out, stderr=subprocess.STDOUT,
                                    stdin=subprocess.DEVNULL, start_new_session=True)

    def tend(self, more_faults: bool) -> None:
        """Start the driver again after an end without success; a new round after a success while
        faults remain."""
        if self.driver is None or (code := self.driver.poll()) is None:
            return
        if code == 0:
            self.round.done = True
            print(f"{stamp(self.chaos.t0)} {self.label} finished ({self.round.starts} drivers started)", flush=True)
            self.driver = None
            if more_faults:
                self.new_round()
            return
        if any(r is self.round and p.poll() is None for r, p in self.chaos.extras):
            return  # an extra driver goes on (the one an Optuna study allows): started again once it has ended
        self.quiet_ends += 1
        if self.quiet_ends > GIVE_UP_AFTER:
            self.round.stuck = f"its driver exited {code} {self.quiet_ends} times in a row with no fault between"
            print(f"{stamp(self.chaos.t0)} {self.label} STUCK: {self.round.stuck}; see {self.round.logs[-1]}", flush=True)
            self.driver = None
            return
        self.trained_before = self.trainings()
        self.driver = self.start()

    def workers(self) -> list[psutil.Process]:
        """The driver's local worker processes now."""
        try:
            children = psutil.Process(self.driver.pid).children()
        except (psutil.NoSuchProcess, AttributeError):
            return []
        found = []
        for child in children:
            try:
                if WORKER_FLAG in child.cmdline() and child.status() != psutil.STATUS_ZOMBIE:
                    found.append(child)
            except (psutil.NoSuchProcess, psutil.ZombieProcess, psutil.AccessDenied):
                pass
        return found


def _mount(args: list[str]) -> bool:
    return subprocess.run(["mount", *args], capture_output=True).returncode == 0


class Chaos:
    """The soak: its sweeps, the faults it applies, the extra drivers it started."""

    def __init__(self, root: Path, seed: int, gap: float, sweeps: tuple[str, ...] = tuple(SWEEPS)):
        self.root, self.rng, self.gap = root, random.Random(seed), gap
        self.count = root / "trainings.txt"
        self.env = hooked_env(self.count)
        self.watch = ResultWatch([], self.count, FINISHED)
        self.can_mount = os.geteuid() == 0 and _probe_mount(root)
        self.sweeps = [Sweep(name, self) for name in sweeps]
        self.extras: list[tuple[Round, subprocess.Popen]] = []
        self.refusing: list[tuple[float, Round, str]] = []  # stores refusing until when, and how (read-only, full)
        self.applied: Counter = Counter()
        self.kinds: list[str] = []  # the fault kinds still to apply in this turn
        self.t0 = time.monotonic()

    # -- the faults ------------------------------------------------------------------------------------

    def next_kind(self) -> str:
        """The next fault's kind: the kinds in a random order, each once, then again in another order
        (each kind as often as the others, in any run)."""
        if not self.kinds:
            self.kinds = self.rng.sample(FAULTS, len(FAULTS))
        return self.kinds[0]

    def fault(self, n: int, total: int) -> bool:
        """Apply the next fault to a random sweep that can take it now (its driver runs, and for
        kill-worker, a worker of it trains); False if none can."""
        kind = self.next_kind()
        live = [s for s in self.sweeps if s.ready()]
        self.rng.shuffle(live)
        for sweep in live:
            said = getattr(self, "_" + kind.replace("-", "_"))(sweep)
            if said is not None:
                break
        else:
            return False
        self.kinds.pop(0)
        self.applied[kind] += 1
        sweep.quiet_ends, sweep.trained_before = 0, sweep.trainings()
        print(f"{stamp(self.t0)} fault {n:>3}/{total} {sweep.label:<9} {kind:<12} {said}", flush=True)
        return True

    def _kill_driver(self, sweep: Sweep) -> str | None:
        return _signal(sweep.driver.pid, signal.SIGKILL, f"driver pid {sweep.driver.pid}")

    def _kill_sweep(self, sweep: Sweep) -> str | None:
        pids = [sweep.driver.pid] + [w.pid for w in sweep.workers()]
        try:
            os.killpg(sweep.driver.pid, signal.SIGKILL)
        except ProcessLookupError:
            return None
        return f"pids {' '.join(map(str, pids))}"

    def _sigterm(self, sweep: Sweep) -> str | None:
        return _signal(sweep.driver.pid, signal.SIGTERM, f"driver pid {sweep.driver.pid}")

    def _kill_worker(self, sweep: Sweep) -> str | None:
        training: dict[int, Path] = {}  # worker pid -> the run it trains (or last trained)
        for pid, folder in counted(self.count):
            training[pid] = folder
        workers = [w for w in sweep.workers() if w.pid in training]
        if sweep.name == "optuna":  # a trial's run is run again retries times only
            workers = [w for w in workers if sweep.worker_kills[training[w.pid]] < KILLS_PER_TRIAL]
        if not workers:
            return None
        victim = self.rng.choice(workers)
        sweep.worker_kills[training[victim.pid]] += 1
        return _signal(victim.pid, signal.SIGKILL, f"worker pid {victim.pid} ({training[victim.pid].name})")

    def _drivers(self, sweep: Sweep) -> str:
        started = [sweep.start(), sweep.start()]
        self.extras += [(sweep.round, p) for p in started]
        return f"pids {started[0].pid} {started[1].pid} beside {sweep.driver.pid}"

    def _store_refuses(self, sweep: Sweep) -> str | None:
        r = sweep.round
        if not r.mounted or any(refusing is r for _, refusing, _ in self.refusing):
            return None
        seconds = self.rng.uniform(0.5, 3.0)
        if _mount(["-o", "remount,ro", str(r.store)]):
            how = "read-only"
        else:  # a file open for writing in it: filled instead
            _fill(r.store / FILLER)
            how = "full"
        self.refusing.append((time.monotonic() + seconds, r, how))
        return f"{r.store} {how}{' (open for writing)' if how == 'full' else ''} for {seconds:.1f}s"

    def writable_again(self, everything: bool = False) -> None:
        for when, r, how in list(self.refusing):
            if everything or time.monotonic() >= when:
                if how == "full":
                    (r.store / FILLER).unlink()
                else:
                    _mount(["-o", "remount,rw", str(r.store)])
                self.refusing.remove((when, r, how))

    # -- the soak --------------------------------------------------------------------------------------

    def run(self, faults: int) -> None:
        for sweep in self.sweeps:
            sweep.new_round()
        n = 0
        next_at = time.monotonic() + self.rng.uniform(0.5, 2 * self.gap)
        try:
            while True:
                self.writable_again()
                for sweep in self.sweeps:
                    sweep.tend(more_faults=n < faults)
                self.extras = [(r, p) for r, p in self.extras if p.poll() is None]
                if n < faults and time.monotonic() >= next_at:
                    if self.fault(n + 1, faults):
                        n += 1
                        next_at = time.monotonic() + self.rng.uniform(0.3, 2 * self.gap)
                elif n >= faults and not self.refusing and not self.extras \
                        and all(s.driver is None for s in self.sweeps):
                    break
                time.sleep(0.1)
        finally:
            self.writable_again(everything=True)
            for sweep in self.sweeps:  # an exception here (Ctrl-C): leave no process behind
                for p in [sweep.driver, *(p for _, p in self.extras)]:
                    if p is not None and p.poll() is None:
                        os.killpg(p.pid, signal.SIGKILL)
                        p.wait()
            self.watch.stop()
            for sweep in self.sweeps:  # each store's tmpfs, copied into the folder it was mounted on
                for r in sweep.rounds:
                    if r.mounted:
                        kept = r.dir / "results.tmpfs"
                        shutil.copytree(r.store, kept, symlinks=True)
                        subprocess.run(["umount", "-l", str(r.store)], capture_output=True)
                        shutil.copytree(kept, r.store, symlinks=True, dirs_exist_ok=True)
                        shutil.rmtree(kept)


def _fill(path: Path) -> None:
    """`path`, a file as large as its filesystem's free space: the store full."""
    fd = os.open(path, os.O_CREAT | os.O_WRONLY, 0o644)
    try:
        free = os.statvfs(path.parent)
        try:
            os.posix_fallocate(fd, 0, free.f_bavail * free.f_frsize)
        except OSError:  # runs wrote meanwhile: what is left is filled block by block
            pass
        os.lseek(fd, 0, os.SEEK_END)
        block = b"\0" * 65536
        try:
            while os.write(fd, block):
                pass
        except OSError:
            pass
    finally:
        os.close(fd)


def _probe_mount(root: Path) -> bool:
    """Whether this process can mount a tmpfs (and so make a store read-only or full even as root)."""
    probe = root / ".mount-probe"
    probe.mkdir()
    ok = _mount(["-t", "tmpfs", "-o", "size=1m", "tmpfs", str(probe)])
    if ok:
        subprocess.run(["umount", str(probe)], capture_output=True)
    probe.rmdir()
    return ok


def _signal(pid: int, sig: signal.Signals, what: str) -> str | None:
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        return None
    return what


# -- the checks ----------------------------------------------------------------------------------------

def check_round(r: Round, watch: ResultWatch, count: Path) -> dict[str, int]:
    """The counts of one round's store (and Optuna storage), as the module's docstring lists them."""
    from lorasweep.run.claims import holder

    results = {}
    for path in r.store.glob("*/result.json"):
        try:
            results[path.parent] = json.loads(path.read_text())
        except ValueError:
            results[path.parent] = {"status": "unreadable"}
    finished = {f for f, res in results.items() if res.get("status") in FINISHED}
    ended = Counter(folder for _, folder in counted(count, finished=True) if folder.parent == r.store)
    twice = [f for f in watch.trained_after() if f.parent == r.store]
    claims = [p.parent for p in r.store.rglob("claim.json")]
    row = {"planned": PLANNED, "finished": len(finished), "trained twice": len(twice),
           "ended unrecorded": sum(n - 1 for f, n in ended.items() if n > 1 and f not in twice),
           "lost": sum(p.parent.parent == r.store for p in watch.lost()),
           "stale claims": sum(1 for c in claims if (h := holder(c)) is not None and not h.alive),
           "running trials": 0, "trials told": 0, "n_trials": 0,
           "tracebacks": sum("Traceback" in log.read_text(errors="replace") for log in r.logs),
           "stuck": int(bool(r.stuck) or not r.done)}
    if r.sweep == "optuna":
        row.update(_study_counts(r.storage))
    return row


def _study_counts(url: str) -> dict[str, int]:
    import optuna
    from optuna.trial import TrialState

    from lorasweep.run.study_storage import open_storage

    storage = open_storage(url)
    [name] = optuna.get_all_study_names(storage)
    trials = optuna.load_study(study_name=name, storage=storage).get_trials(deepcopy=False)
    told = [t for t in trials if t.state in (TrialState.COMPLETE, TrialState.PRUNED)
            or (t.state == TrialState.FAIL and t.user_attrs.get("status") != "abandoned")]
    return {"running trials": sum(t.state == TrialState.RUNNING for t in trials), "trials told": len(told),
            "n_trials": PLANNED}


BAD = {"trained twice": "runs trained again after their result", "lost": "finished results lost or changed",
       "stale claims": "claims left by processes that are gone", "running trials": "Optuna trials left RUNNING",
       "tracebacks": "driver outputs with a traceback", "stuck": "rounds that did not finish"}


def failures(total: dict[str, int]) -> list[str]:
    """What the totals say went wrong (empty: every check holds)."""
    out = [f"{total[k]} {what}" for k, what in BAD.items() if total[k]]
    if total["finished"] != total["planned"]:
        out.append(f"{total['finished']} of {total['planned']} planned runs finished")
    if total["trials told"] != total["n_trials"]:
        out.append(f"Optuna told {total['trials told']} trials of n_trials={total['n_trials']} in all")
    return out


def known_sweeps(sweeps: tuple[str, ...]) -> bool:
    return bool(sweeps) and all(name in SWEEPS for name in sweeps)


def soak(faults: int, seed: int, gap: float, root: Path, sweeps: tuple[str, ...] = tuple(SWEEPS)) -> dict:
    """Run the soak in `root` on `sweeps` (names in SWEEPS); its counts: per sweep, in total, the
    faults applied and the wall time."""
    if not known_sweeps(sweeps):
        raise ValueError(f"sweeps={','.join(sweeps)!r}: each must be one of {', '.join(SWEEPS)}")
    chaos = Chaos(root, seed, gap, sweeps)
    t0 = time.perf_counter()
    chaos.run(faults)
    wall = time.perf_counter() - t0
    per_sweep = {}
    for sweep in chaos.sweeps:
        rows = [check_round(r, chaos.watch, chaos.count) for r in sweep.rounds]
        per_sweep[sweep.name] = {"rounds": len(rows), "drivers": sum(r.starts for r in sweep.rounds),
                                 **{k: sum(row[k] for row in rows) for k in rows[0]}}
    keys = [k for k in next(iter(per_sweep.values())) if k != "rounds"]
    total = {k: sum(s[k] for s in per_sweep.values()) for k in ["rounds", *keys]}
    return {"per_sweep": per_sweep, "total": total, "faults": dict(chaos.applied), "wall_s": wall,
            "mounted": chaos.can_mount, "failures": failures(total)}


def print_report(report: dict, seed: int) -> None:
    cols = ["rounds", "drivers", "planned", "finished", "trained twice", "ended unrecorded", "lost", "stale claims",
            "running trials", "trials told", "tracebacks"]
    print(f"\nchaos soak: seed {seed}, {sum(report['faults'].values())} faults "
          f"({', '.join(f'{k} {v}' for k, v in sorted(report['faults'].items()))}), "
          f"{report['wall_s']:.0f}s wall, {os.cpu_count()} cores")
    if not report["mounted"]:
        print("store-refuses faults skipped: mounts need root")
    print(f"{'sweep':<8}" + "".join(f"{c:>{len(c) + 2}}" for c in cols))
    for name, row in [*report["per_sweep"].items(), ("total", report["total"])]:
        print(f"{name:<8}" + "".join(f"{row.get(c, ''):>{len(c) + 2}}" for c in cols))
    for line in report["failures"]:
        print(f"FAILED: {line}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--faults", type=int, default=200, help="faults to apply in all (default 200)")
    ap.add_argument("--seed", type=int, default=None, help="the random seed (default: from the clock; printed)")
    ap.add_argument("--gap", type=float, default=3.0, help="mean seconds between faults (default 3)")
    ap.add_argument("--sweeps", default=",".join(SWEEPS),
                    help=f"the sweeps to run, comma-separated (default: all, {','.join(SWEEPS)})")
    ap.add_argument("--keep", type=Path, default=None, help="a folder to run in and keep (default: a temp one)")
    args = ap.parse_args(argv)
    if args.faults < 1 or args.gap <= 0:
        ap.error(f"--faults={args.faults} must be at least 1 and --gap={args.gap} above 0")
    sweeps = tuple(filter(None, args.sweeps.split(",")))
    if not known_sweeps(sweeps):
        ap.error(f"--sweeps={args.sweeps!r}: each must be one of {', '.join(SWEEPS)}")
    seed = args.seed if args.seed is not None else int(time.time()) % 100_000
    print(f"chaos soak: seed {seed}, {args.faults} faults on {', '.join(sweeps)}, {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC", flush=True)
    if args.keep:
        args.keep.mkdir(parents=True, exist_ok=False)
        report = soak(args.faults, seed, args.gap, args.keep.resolve(), sweeps)
    else:
        with tempfile.TemporaryDirectory(prefix="chaos-") as tmp:
            report = soak(args.faults, seed, args.gap, Path(tmp).resolve(), sweeps)
    print_report(report, seed)
    return 1 if report["failures"] else 0


if __name__ == "__main__":
    sys.exit(main())
