"""Shared helpers: compose the project's real Hydra config, and run tiny end-to-end runs."""
from __future__ import annotations

import json
import math
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import psutil

# No test may reach a model hub: on a machine with one, a test that names a hub model (qwen3-0.6b,
# say) would otherwise download it and train it. Set here, once, before anything imports
# huggingface_hub (it reads them at import; the test modules import it after this file): every test,
# and every launch() subprocess and SLURM job started from one (they inherit os.environ), is
# offline, and lorasweep fails fast with its "not in the local HF cache" message instead.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
# Tests place local workers as on a machine without GPUs (no CUDA_VISIBLE_DEVICES pinning, n_jobs
# as given), even on one with GPUs; tests/test_gpu_placement.py pretends to have some. The hook
# (tests/hooks/fake_gpus.py) is installed here and, through PYTHONPATH, in every process a test starts.
HOOKS = Path(__file__).resolve().parent / "hooks"
os.environ.setdefault("LORASWEEP_FAKE_GPUS", "0")
os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(HOOKS), os.environ.get("PYTHONPATH")]))


def _own_cores_per_test_process() -> None:
    """Under pytest-xdist (-n N), each test process, and every process it starts, runs on its own
    share of the cores (CPU affinity, which lorasweep's workers size their torch threads by), before
    torch is imported. Unpinned, two test processes each run 2-thread torch on 2 cores: OpenMP's
    threads wait on one another while the other process holds a core, and in-process training ran
    3.6x slower than alone (tests/test_pack.py: 377 s in the suite, 104 s alone)."""
    worker, count = os.environ.get("PYTEST_XDIST_WORKER", ""), int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    if not worker.startswith("gw") or count < 2 or not hasattr(os, "sched_setaffinity"):
        return
    cores = sorted(os.sched_getaffinity(0))
    if len(cores) >= count:
        os.sched_setaffinity(0, cores[int(worker[2:]) % count::count])


_own_cores_per_test_process()

from hooks import fake_gpus  # noqa: E402

fake_gpus.install()

import pytest  # noqa: E402
from hydra import compose, initialize_config_dir  # noqa: E402
from omegaconf import OmegaConf  # noqa: E402

ROOT = HOOKS.parents[1]

# A tiny run: a few steps on a slice of the real data, in seconds.
TINY_TOPICS = ["model=tiny-bert", "task=wordnet_topics", "train.max_steps=4", "train.eval_steps=2",
               "task.max_train=32", "task.max_eval=16", "task.max_test=16", "train.batch_size=8"]
TINY_MCQ = ["model=tiny-qwen3", "task=wordnet_mcq", "train.max_steps=4", "train.eval_steps=2",
            "task.max_train=16", "task.max_eval=6", "task.max_test=8", "train.batch_size=4"]


def compose_config(overrides: list[str]) -> dict:
    """The fully resolved config launch.py would get for these command-line overrides."""
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose(config_name="config", overrides=overrides)
    return OmegaConf.to_container(cfg, resolve=True)


def launch(args: list[str], cwd: Path, timeout: int = 900, env: dict[str, str] | None = None
           ) -> subprocess.CompletedProcess:
    """Run `python launch.py ARGS` as a user would, in `cwd` (`env`: variables set on top of ours).
    The timeouts here and below catch a hang, not a slow machine: a tiny 2-run sweep took over 300 s
    while 2 cores ran ~25 busy processes."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
    return subprocess.run([sys.executable, str(ROOT / "launch.py"), *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=timeout)


def unslowed(args: list[str]) -> list[str]:
    """The same runs without slowed steps (train.step_sleep_s is not in the run key): a command that
    trains what an interrupted or killed one left, with no need to catch it in flight."""
    return [a for a in args if not a.startswith("train.step_sleep_s=")]


def pytest_collection_modifyitems(config, items):
    """The longest test files first; the GPU tier (marker gpu: `pytest -m gpu`, tests/gpu_tier.py)
    skips, saying why, where torch sees no CUDA GPU: CI and these machines always."""
    _longest_files_first(items)
    gpu = [item for item in items if item.get_closest_marker("gpu")]
    if gpu:
        from gpu_tier import why_no_cuda

        reason = why_no_cuda()
        if reason:
            for item in gpu:
                item.add_marker(pytest.mark.skip(reason=reason))


DURATIONS = HOOKS.parent / "durations.json"  # each test file's seconds in CI (scripts/test_durations.py)


def _longest_files_first(items: list) -> None:
    """Order the files by their seconds in CI, longest first (a file without a figure before all),
    each file's tests in their order. pytest-xdist's --dist loadfile hands the files out in this
    order (--no-loadscope-reorder, pyproject.toml): in its own order, by test count, the few long
    files (the chaos soak: one test, 280 s) came last, and one test process ran on alone for 2-4
    minutes on one core while the other had ended (bench/RESULTS.md section 22)."""
    seconds = json.loads(DURATIONS.read_text())
    items.sort(key=lambda item: -seconds.get(item.path.name, math.inf))


@pytest.fixture
def results_dir(tmp_path: Path) -> Path:
    return tmp_path / "results"


@pytest.fixture(scope="session")
def slurm_cluster(tmp_path_factory):
    """A real single-node SLURM (tests/slurm_cluster.py), started once for the session and stopped,
    daemon by daemon (by PID), at its end. Where it cannot start: a failure in CI, a skip elsewhere."""
    import time

    import slurm_cluster as sc

    why = sc.missing_requirements()
    if why:
        if os.environ.get("CI"):
            pytest.fail(f"the SLURM tests need their test cluster: {why}")
        pytest.skip(f"no test SLURM cluster here: {why}")
    state = tmp_path_factory.mktemp("slurm")
    t0 = time.perf_counter()
    cluster = sc.start(state)
    print(f"\ntest SLURM cluster up in {time.perf_counter() - t0:.1f}s under {state}", file=sys.stderr)
    saved = os.environ.get("SLURM_CONF")
    os.environ.update(cluster.env)  # launch() passes os.environ on: sbatch, sacct find this cluster
    try:
        yield cluster
    finally:
        if saved is None:
            os.environ.pop("SLURM_CONF", None)
        else:
            os.environ["SLURM_CONF"] = saved
        t0 = time.perf_counter()
        cluster.stop()
        shutil.rmtree(state / "db", ignore_errors=True)  # MariaDB's files: tens of MB, kept by pytest otherwise
        print(f"\ntest SLURM cluster stopped in {time.perf_counter() - t0:.1f}s", file=sys.stderr)


# -- hooks in every process a test starts (tests/hooks/sitecustomize.py): counted trainings, faults ------

def with_hooks(monkeypatch, **env: str) -> None:
    """The processes started from now on import tests/hooks/sitecustomize.py, with `env` set."""
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(HOOKS), os.environ.get("PYTHONPATH")])))
    for name, value in env.items():
        monkeypatch.setenv(name, value)


def counted_trainings(count_file: Path) -> list[tuple[int, str]]:
    """(pid, run folder name) of every Trainer.train call counted in `count_file`, in order."""
    lines = count_file.read_text().splitlines() if count_file.exists() else []
    return [(int(pid), Path(folder).name) for pid, folder in (line.split(" ", 1) for line in lines)]


def per_run(counted: list[tuple[int, str]]) -> dict[str, int]:
    """{run folder name: how many times it was trained}."""
    out: dict[str, int] = {}
    for _, name in counted:
        out[name] = out.get(name, 0) + 1
    return out


@pytest.fixture
def trainings(monkeypatch, tmp_path):
    """Every process started from here counts its trainings; returns a function giving the
    [(pid, run folder name)] counted so far, in order."""
    count = tmp_path / "trainings.txt"
    with_hooks(monkeypatch, LORASWEEP_COUNT_TRAININGS=str(count))
    return lambda: counted_trainings(count)


NOT_HELD = {"LORASWEEP_HOLD": ""}  # launch(env=...): a rival started while runs are held trains unheld


class Held:
    """Runs held before a training step (tests/hooks: LORASWEEP_HOLD) until `release()`: a barrier
    instead of slowed steps and a hope that a test's next move lands while a run trains."""

    def __init__(self, gate: Path):
        self.gate = gate

    def runs(self) -> list[tuple[int, list[str]]]:
        """(pid, [run folder name, ...]) of every run (or pack) held so far, in order."""
        file = Path(f"{self.gate}.held")
        lines = file.read_text().splitlines() if file.exists() else []
        return [(int(pid), [Path(f).name for f in folders.split(",")])
                for pid, folders, _ in (line.split(" ") for line in lines)]

    def wait(self, n: int = 1, timeout: float = 600, sweeps: tuple["Sweep", ...] = ()) -> list[tuple[int, list[str]]]:
        """Wait until `n` runs (or packs) are held; returns them all. One of `sweeps` that ends first
        fails the test at once (its output goes to the report), not after `timeout`."""
        def held():
            for sweep in sweeps:
                if sweep.ended:
                    pytest.fail(f"launch.py {' '.join(sweep.args)} ended (exit {sweep.proc.wait()}) before "
                                f"{n} run(s) were held")
            return self.runs() if len(self.runs()) >= n else None
        return wait_until(held, f"{n} held run(s)", timeout)

    def release(self) -> None:
        self.gate.touch()


@pytest.fixture
def hold(monkeypatch, tmp_path):
    """hold(step): every process started from then on holds each run before its `step`th training
    step (1-based) until the Held it returns is released."""
    def at(step: int) -> Held:
        gate = tmp_path / "hold.gate"
        with_hooks(monkeypatch, LORASWEEP_HOLD=f"{gate}@{step}")
        return Held(gate)
    return at


# -- sweeps watched while they run: their output as it comes, their worker processes -------------------

WORKER_FLAG = "--multiprocessing-fork"  # on the command line of every process multiprocessing spawns


def wait_until(predicate, what: str, timeout: float = 600):
    """Poll `predicate` until it returns something truthy, which is returned; fail naming `what` at the deadline."""
    deadline = time.monotonic() + timeout
    while not (value := predicate()):
        if time.monotonic() > deadline:
            pytest.fail(f"waited {timeout:.0f}s for {what}")
        time.sleep(0.05)
    return value


def alive(process) -> bool:
    """A process that still runs (a zombie, dead but not yet reaped, does not)."""
    try:
        return process.is_running() and process.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def wait_gone(processes, timeout: float = 60) -> None:
    """Wait until every one of `processes` (psutil.Process) has exited; fail naming the survivors."""
    deadline = time.monotonic() + timeout
    while survivors := [p.pid for p in processes if alive(p)]:
        if time.monotonic() > deadline:
            pytest.fail(f"worker processes {survivors} still run {timeout:.0f}s after their sweep ended")
        time.sleep(0.05)


# A command started in the background (`cmd &` in a script) ignores SIGINT, and so would a driver started
# from it: the driver starts with SIGINT's default action, as a terminal's foreground job has it.
_AS_A_FOREGROUND_JOB = ("import os, signal, sys; signal.signal(signal.SIGINT, signal.SIG_DFL); "
                        "os.execv(sys.executable, [sys.executable, *sys.argv[1:]])")


class Sweep:
    """`python launch.py ARGS` started as a user starts it from a terminal: in its own session, whose
    process group is what Ctrl-C signals. Its output (stdout and stderr) is read line by line as it comes,
    and its worker processes are looked at every 50 ms while it runs (`seen`, `most`)."""

    def __init__(self, args: list[str], cwd: Path):
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        self.proc = subprocess.Popen([sys.executable, "-c", _AS_A_FOREGROUND_JOB, str(ROOT / "launch.py"), *args],
                                     cwd=cwd, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                     stderr=subprocess.STDOUT, text=True, start_new_session=True)
        self.args = args
        self.lines: list[str] = []
        self.ended = False
        self.seen: dict = {}  # every worker process seen, by pid (killed at the end if still there)
        self.most = 0  # the most worker processes seen at once
        self._changed = threading.Condition()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        self._sampler = threading.Thread(target=self._sample, daemon=True)
        self._sampler.start()

    def _sample(self) -> None:
        while self.proc.poll() is None:
            self.workers()
            time.sleep(0.05)

    def _read(self) -> None:
        for line in self.proc.stdout:
            with self._changed:
                self.lines.append(line.rstrip("\n"))
                self._changed.notify_all()
        with self._changed:
            self.ended = True
            self._changed.notify_all()

    @property
    def output(self) -> str:
        with self._changed:
            return "\n".join(self.lines)

    def wait_for_line(self, pattern: str, timeout: float = 600, since: int = 0) -> tuple[re.Match, int]:
        """Wait for an output line (from line `since` on) to match the regex `pattern`: (its match, the
        number of the line after it, a `since` for what comes next)."""
        regex, deadline, seen = re.compile(pattern), time.monotonic() + timeout, since
        with self._changed:
            while True:
                for n, line in enumerate(self.lines[seen:], seen):
                    if match := regex.search(line):
                        return match, n + 1
                seen = max(seen, len(self.lines))
                if self.ended:
                    pytest.fail(f"the sweep ended (exit {self.proc.wait()}) without printing {pattern!r}:\n"
                                + "\n".join(self.lines[-40:]))
                if time.monotonic() > deadline:
                    pytest.fail(f"no line {pattern!r} in {timeout:.0f}s:\n" + "\n".join(self.lines[-40:]))
                self._changed.wait(timeout=1)

    def workers(self) -> dict:
        """{pid: psutil.Process} of the worker processes the driver has now."""
        found = {}
        try:
            children = psutil.Process(self.proc.pid).children()
        except psutil.NoSuchProcess:
            return found
        for child in children:
            try:
                if WORKER_FLAG in child.cmdline() and alive(child):
                    found[child.pid] = self.seen.setdefault(child.pid, child)
            except (psutil.NoSuchProcess, psutil.ZombieProcess, psutil.AccessDenied):
                pass
        self.most = max(self.most, len(found))
        return found

    def wait(self, timeout: float = 600) -> int:
        """The driver's exit status, once it has exited and all its output is read."""
        try:
            code = self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            pytest.fail(f"the sweep did not exit within {timeout:.0f}s:\n" + "\n".join(self.lines[-40:]))
        self._reader.join(timeout=30)
        self._sampler.join(timeout=30)
        return code

    def __enter__(self) -> "Sweep":
        return self

    def __exit__(self, failure, *_) -> None:
        """Whatever happened in the test, leave no process of this sweep behind; in a test that fails,
        its output goes to the report (a driver that never got as far as the test waited for)."""
        if failure is not None:
            print(f"--- the output of launch.py {' '.join(self.args)}:\n" + "\n".join(self.lines[-60:]))
        self.workers()
        if self.proc.poll() is None:  # the driver still runs: its process group is this sweep's
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=60)
        for worker in self.seen.values():
            if alive(worker):  # the same process (pid and start time), not a reused pid
                worker.kill()
        self._reader.join(timeout=30)
