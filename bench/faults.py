"""Benchmark: the faults of a long sweep on MiniLM (model=minilm, the embedded default before
smollm2-4l), and what each one leaves behind.

    python bench/faults.py [--steps 60] [--only kill,drivers,...]

Each scenario runs real sweeps (`launch.py -m`: real processes, real signals, a real full disk
where this process may mount a tmpfs) on MiniLM (model=minilm, wordnet_topics), with
`--steps` training steps a run, and counts from the results store and from the hooks in
tests/hooks/sitecustomize.py (each Trainer.train that starts, and each that runs to its end):

    planned           runs in the sweep
    finished          runs with a finished result at the end (done, or diverged: a result too)
    failed w/ cause   runs recorded failed, with their reason
    trained twice     runs whose training ran to its end more than once (must be 0)
    lost              finished results (each as it first appeared) gone or changed at the end (must be 0)

A scenario that leaves a "trained twice" or "lost" above 0, or its own expectation unmet (the
`check` column), makes the benchmark exit 1.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from _proc import PYTHON, ROOT
from _watch import FINISHED, ResultWatch, counted, hooked_env

RANKS = "lora.r=4,8,16,32"


@dataclass
class Row:
    scenario: str
    planned: int
    finished: int = 0
    failed: int = 0
    trained_twice: int = 0
    lost: int = 0
    wall_s: float = 0.0
    check: str = "ok"  # what the scenario expected and did not see, else ok
    notes: list[str] = field(default_factory=list)


class Bench:
    """One scenario's folder: its store, its hooks' count files, and the sweeps it starts."""

    def __init__(self, root: Path, name: str, steps: int):
        self.dir = root / name
        self.dir.mkdir(parents=True)
        self.store = self.dir / "results"
        self.count = self.dir / "trainings.txt"
        # the eval set is cut to 200 rows (its curve point only); the test set stays whole
        self.common = ["model=minilm", f"train.max_steps={steps}", f"train.eval_steps={steps}", "task.max_eval=200",
                       f"results_dir={self.store}"]
        self.env = hooked_env(self.count)
        self.logs = 0
        # every finished result as it first appeared: the fault must not lose or change one
        self.watch = ResultWatch([self.store], self.count)
        self.damaged: set[str] = set()  # runs the scenario damaged itself: trained once more on purpose

    def forget(self, path: Path) -> None:
        """A result the scenario itself damages (to see what the sweep does with it)."""
        self.watch.forget(path)
        self.damaged.add(path.parent.name)

    def start(self, args: list[str], **env: str) -> subprocess.Popen:
        """`python launch.py ARGS` in its own session (what Ctrl-C or a closed terminal signals), output to a log."""
        self.logs += 1
        log = open(self.dir / f"driver-{self.logs}.log", "w")
        proc = subprocess.Popen([PYTHON, str(ROOT / "launch.py"), *args, *self.common], cwd=self.dir,
                                env={**self.env, **env}, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        proc.log = Path(log.name)  # type: ignore[attr-defined]
        return proc

    def run(self, args: list[str], timeout: float = 1800, **env: str) -> subprocess.CompletedProcess:
        proc = self.start(args, **env)
        return subprocess.CompletedProcess(proc.args, proc.wait(timeout=timeout), proc.log.read_text())

    def results(self) -> dict[str, dict]:
        found = {}
        for path in self.store.glob("*/result.json"):
            try:
                found[path.parent.name] = json.loads(path.read_text())
            except ValueError:
                found[path.parent.name] = {"status": "unreadable"}
        return found

    def trainings(self, finished_only: bool = False) -> Counter:
        return Counter(folder.name for _, folder in counted(self.count, finished=finished_only))

    def started_in(self, name_part: str) -> int | None:
        """The pid of the process training the run whose folder name holds `name_part`, once it started."""
        return next((pid for pid, folder in counted(self.count) if name_part in folder.name), None)

    def finished_count(self) -> int:
        return sum(r.get("status") in FINISHED for r in self.results().values())

    def row(self, scenario: str, planned: int, t0: float, check: str = "ok") -> Row:
        self.watch.stop()
        results = self.results()
        lost = len(self.watch.lost())
        return Row(scenario, planned,
                   finished=sum(r.get("status") in FINISHED for r in results.values()),
                   failed=sum(r.get("status") == "failed" and bool(r.get("reason")) for r in results.values()),
                   trained_twice=sum(n > 1 + (name in self.damaged)
                                     for name, n in self.trainings(finished_only=True).items()),
                   lost=lost, wall_s=time.perf_counter() - t0, check=check)


def wait_for(predicate: Callable[[], object], what: str, timeout: float = 900) -> object:
    deadline = time.monotonic() + timeout
    while not (value := predicate()):
        if time.monotonic() > deadline:
            raise TimeoutError(f"waited {timeout:.0f}s for {what}")
        time.sleep(0.2)
    return value


def expect(ok: bool, what: str) -> str:
    return "ok" if ok else f"expected {what}"


# -- the scenarios ----------------------------------------------------------------------------------------

def killed_worker(b: Bench) -> Row:
    """A worker killed with SIGKILL (what the kernel's out-of-memory killer does) while the third run
    trains, two in flight: that run is failed with the cause, the other goes on, the sweep finishes."""
    t0 = time.perf_counter()
    sweep = b.start(["-m", RANKS, "hydra.launcher.n_jobs=2"])
    pid = wait_for(lambda: b.started_in("-r16-"), "the r=16 run (third) to start")
    log = wait_for(lambda: next(iter(b.store.glob("*-r16-*/log.txt")), None), "the r=16 run's log")
    wait_for(lambda: "train step" in log.read_text(), "the r=16 run to train")
    os.kill(pid, signal.SIGKILL)
    code = sweep.wait(timeout=1800)
    reason = b.results().get(log.parent.name, {}).get("reason", "")
    return b.row("worker killed (SIGKILL), n_jobs=2", 4, t0,
                 expect(code != 0 and "signal 9 (SIGKILL)" in reason, "exit != 0 and the signal in the reason"))


def two_drivers(b: Bench) -> Row:
    """The same 4-run grid started twice at once into one results_dir: each run trained once."""
    t0 = time.perf_counter()
    first, second = b.start(["-m", RANKS]), b.start(["-m", RANKS])
    codes = first.wait(timeout=1800), second.wait(timeout=1800)
    outputs = first.log.read_text() + second.log.read_text()
    return b.row("two drivers on one grid", 4, t0,
                 expect(codes == (0, 0) and "trained elsewhere" in outputs,
                        "both exit 0, and one reporting runs trained elsewhere"))


def diverging(b: Bench) -> Row:
    """train.lr=1e4 beside a sane lr: the first diverges (a result, not a failure), the sweep exits 0."""
    t0 = time.perf_counter()
    out = b.run(["-m", "train.lr=1e4,5e-4"])
    statuses = sorted(r["status"] for r in b.results().values())
    return b.row("loss diverges (train.lr=1e4)", 2, t0,
                 expect(out.returncode == 0 and statuses == ["diverged", "done"], "exit 0, one diverged, one done"))


def out_of_memory(b: Bench) -> Row:
    """The r=8 run runs out of accelerator memory at its 2nd step (the test hook raises CUDA's error),
    in one worker: it is failed with the hint, the runs after it in the same worker are done."""
    t0 = time.perf_counter()
    out = b.run(["-m", "lora.r=4,8,16"], LORASWEEP_RAISE_OOM="-r8-@2")
    reason = next((r["reason"] for r in b.results().values() if r["status"] == "failed"), "")
    return b.row("out of accelerator memory, n_jobs=1", 3, t0,
                 expect(out.returncode == 1 and "train.batch_size" in reason, "exit 1 and the hint in the reason"))


def full_disk(b: Bench) -> Row:
    """The store on a small tmpfs: r=4 done first; then, with the disk full but for 24 KiB, the grid
    r=4,8,16: r=4 stays done, r=8 fails on its adapter's write, r=16 is not started."""
    if os.geteuid() != 0:
        b.row("", 0, 0.0)  # stops its watcher
        return Row("full disk (tmpfs)", 3, check="skipped: mounting a tmpfs needs root")
    b.store.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=8m", "tmpfs", str(b.store)], check=True)
    try:
        t0 = time.perf_counter()
        b.run(["lora.r=4"])
        st = os.statvfs(b.store)
        (b.store / "filler").write_bytes(b"\0" * max(0, st.f_bavail * st.f_frsize - 24 * 1024))
        out = b.run(["-m", "lora.r=4,8,16"])
        said = re.search(r"No space left on device writing \S+adapter_model\.safetensors", out.stdout)
        return b.row("full disk (tmpfs)", 3, t0,
                     expect(out.returncode == 1 and bool(said) and "1 not started" in out.stdout,
                            "exit 1, the path and cause in one line, 1 not started"))
    finally:
        subprocess.run(["umount", "-l", str(b.store)], check=False)


def interrupted(b: Bench) -> Row:
    """SIGTERM to the driver once a run has finished and two are in flight (n_jobs=2), then the same
    command again: the finished run is kept, the interrupted ones train again, nothing twice."""
    t0 = time.perf_counter()
    sweep = b.start(["-m", RANKS, "hydra.launcher.n_jobs=2"])
    wait_for(lambda: b.finished_count(), "a first finished run")
    wait_for(lambda: len(b.trainings()) >= 3, "the next run to start")
    sweep.send_signal(signal.SIGTERM)
    code = sweep.wait(timeout=300)
    again = b.run(["-m", RANKS, "hydra.launcher.n_jobs=2"])
    return b.row("SIGTERM, then the same command", 4, t0,
                 expect(code == 130 and again.returncode == 0, "exit 130, then 0"))


def unreadable(b: Bench) -> Row:
    """A result.json cut in half (r=4): the grid says which file, trains it again; r=8 trains."""
    t0 = time.perf_counter()
    b.run(["lora.r=4"])
    path = next(b.store.glob("*/result.json"))
    b.forget(path)
    path.write_text(path.read_text()[:40])
    out = b.run(["-m", "lora.r=4,8"])
    return b.row("a result.json cut in half", 2, t0,
                 expect(out.returncode == 0 and "is unreadable" in out.stdout, "exit 0 and the file named"))


def retried(b: Bench) -> Row:
    """hydra.launcher.retries=1, and the first training of the sweep fails (the test hook raises): that
    run is run again within the sweep and done; a diverging run beside it is a result, never retried."""
    t0 = time.perf_counter()
    out = b.run(["-m", "train.lr=5e-4,1e4", "hydra.launcher.retries=1"], LORASWEEP_FAIL_ONCE=str(b.dir / "failed-once"))
    statuses = sorted(r["status"] for r in b.results().values())
    return b.row("a run fails once, retries=1", 2, t0,
                 expect(out.returncode == 0 and statuses == ["diverged", "done"] and "retrying (attempt 2 of 2)"
                        in out.stdout, "exit 0, the failed run retried and done, the diverged one not retried"))


def killed_sweep(b: Bench) -> Row:
    """The whole sweep (driver and worker) killed with SIGKILL mid-run, its claim left behind; the same
    command again takes the claim over, says so, and trains the run."""
    t0 = time.perf_counter()
    sweep = b.start(["-m", "lora.r=4"])
    wait_for(lambda: b.started_in("-r4-"), "the run to start")
    time.sleep(5)  # a few steps in
    os.killpg(sweep.pid, signal.SIGKILL)
    sweep.wait()
    out = b.run(["-m", "lora.r=4"])
    return b.row("sweep killed (SIGKILL), then again", 1, t0,
                 expect(out.returncode == 0 and "took over the claim" in out.stdout, "the claim taken over, said"))


SCENARIOS = {"kill": killed_worker, "drivers": two_drivers, "diverge": diverging, "oom": out_of_memory,
             "disk": full_disk, "sigterm": interrupted, "unreadable": unreadable, "retries": retried, "killed-sweep": killed_sweep}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=60, help="training steps a run (the default run has 500)")
    ap.add_argument("--only", default="", help=f"comma-separated scenarios of {','.join(SCENARIOS)}")
    args = ap.parse_args()
    names = [n for n in args.only.split(",") if n] or list(SCENARIOS)
    unknown = sorted(set(names) - set(SCENARIOS))
    if unknown:
        sys.exit(f"--only: unknown scenario(s) {unknown}; valid: {', '.join(SCENARIOS)}")
    rows = []
    with tempfile.TemporaryDirectory(prefix="faults-") as tmp:
        for name in names:
            print(f"-- {name}: {SCENARIOS[name].__doc__.split(chr(10))[0]}", flush=True)
            rows.append(SCENARIOS[name](Bench(Path(tmp), name, args.steps)))
    print(f"\nfault scenarios on MiniLM (model=minilm), {args.steps} steps a run, {os.cpu_count()} cores")
    head = ("scenario", "planned", "finished", "failed w/ cause", "trained twice", "lost", "wall s", "check")
    widths = (38, 8, 9, 16, 14, 5, 8, 0)
    print("".join(f"{h:<{w}}" if i == 0 else f"  {h}" if i == 7 else f"{h:>{w}}"
                  for i, (h, w) in enumerate(zip(head, widths))))
    for r in rows:
        cells = (r.scenario, r.planned, r.finished, r.failed, r.trained_twice, r.lost, f"{r.wall_s:.0f}", "  " + r.check)
        print("".join(f"{c:<{w}}" if i in (0, 7) else f"{c:>{w}}" for i, (c, w) in enumerate(zip(cells, widths))))
    bad = [r.scenario for r in rows if r.trained_twice or r.lost or not (r.check == "ok" or r.check.startswith("skipped"))]
    if bad:
        sys.exit(f"not as expected: {', '.join(bad)}")


if __name__ == "__main__":
    main()
