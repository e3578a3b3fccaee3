"""A real single-node SLURM on loopback for the tests: munged, mariadbd, slurmdbd, slurmctld, slurmd.

    python tests/slurm_cluster.py up /tmp/cluster     # start one by hand; prints the env to use it
    python tests/slurm_cluster.py down /tmp/cluster   # stop the daemons it started (by their PIDs)

Needs root and Debian 12's slurmctld slurmd slurm-client munge slurmdbd slurm-wlm-mysql-plugin
mariadb-server-core mariadb-client-core (scripts/setup.sh --dev installs them). Every file lives
under one state directory; every daemon runs in the foreground as our child, its PID recorded in
`pids.json`, and is stopped by that PID. Nothing under /etc or /run is touched: the client tools
find the cluster through SLURM_CONF, which `Cluster.env` carries.

Why each setting is there (learned by trying):
- accounting (slurmdbd on MariaDB) because submitit reads job states with sacct; without it a job's
  state stays UNKNOWN and a cancelled job is never done.
- AccountingStoragePass=<munge socket>: with a private munge socket slurmctld reaches slurmdbd only so.
- CR_Core_Memory + DefMemPerCPU, else each job takes the whole node's memory and jobs run one at a time;
  config_overrides with CPUs=8 lets several tiny jobs share this machine's cores.
- EnforcePartLimits=ALL: an impossible request is rejected by sbatch instead of pending forever.
- batch_sched_delay=0: a job starts within a second, not 2-3 s; sched_interval=2 and bf_interval=2:
  a requeued job starts again a few seconds after its begin time, not up to 60 s.
- FirstJobId from the clock: a fresh cluster would restart job ids at 1, and submitit's folders
  (named by job id) would hand back a previous cluster's stale results.
- AuthInfo cred_expire=5: a requeued job may start again only after the credential lifetime
  (default 120 s; the job then waits ~3 minutes), 5 s is the minimum.
- MaxArraySize=5 (array indices 0..4) so that the tests' sweeps are split into several arrays.
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

PACKAGES = ("slurmctld", "slurmd", "slurm-client", "munge", "slurmdbd", "slurm-wlm-mysql-plugin",
            "mariadb-server-core", "mariadb-client-core")
PARTITION = "debug"
NODE_CPUS = 8          # advertised CPUs: several tiny jobs share the real cores
NODE_MEMORY_MB = 16000
MAX_ARRAY_SIZE = 5


class ClusterUnavailable(RuntimeError):
    """The test cluster cannot be started here (not root, packages missing); the message says why."""


@dataclass
class Cluster:
    state: Path
    pids: dict[str, int] = field(default_factory=dict)

    @property
    def env(self) -> dict[str, str]:
        """Environment for sbatch/squeue/sacct (and submitit) to use this cluster."""
        return {"SLURM_CONF": str(self.state / "slurm.conf")}

    def stop(self) -> None:
        """Stop the daemons we started, by PID, in reverse start order."""
        for name in reversed(list(self.pids)):
            _stop(self.pids[name])
        self.pids.clear()
        (self.state / "pids.json").unlink(missing_ok=True)


def missing_requirements() -> str | None:
    """Why the cluster cannot start here, or None."""
    if os.geteuid() != 0:
        return "the test SLURM cluster runs its daemons as root"
    tools = ("munged", "mariadbd", "mariadb-install-db", "slurmdbd", "slurmctld", "slurmd", "sbatch", "sacct")
    missing = [t for t in tools if not shutil.which(t, path=os.environ.get("PATH", "") + ":/usr/sbin")]
    if missing:
        return (f"missing {', '.join(missing)}: apt-get install --no-install-recommends {' '.join(PACKAGES)} "
                f"(scripts/setup.sh --dev does it)")
    return None


def start(state: Path, timeout: float = 60) -> Cluster:
    """Bring the whole cluster up under `state`; returns once sinfo shows the node idle."""
    why = missing_requirements()
    if why:
        raise ClusterUnavailable(why)
    state.mkdir(parents=True, exist_ok=True)
    for sub in ("munge", "db", "ctld", "spool", "log"):
        (state / sub).mkdir(exist_ok=True)
    os.chmod(state / "munge", 0o711)  # munged wants its socket reachable by all
    cluster = Cluster(state)
    ports = _free_ports(4)
    try:
        _start_munge(cluster)
        _start_mariadb(cluster, ports[0])
        _write_configs(state, ports)
        # slurmdbd has no -f: it reads slurmdbd.conf beside $SLURM_CONF
        _spawn(cluster, "slurmdbd", ["slurmdbd", "-D"])
        _wait_port(ports[1], "slurmdbd", state / "log/slurmdbd.log", timeout)
        _spawn(cluster, "slurmctld", ["slurmctld", "-D", "-i", "-f", str(state / "slurm.conf")])
        _spawn(cluster, "slurmd", ["slurmd", "-D", "-N", "localhost", "-f", str(state / "slurm.conf")])
        _wait_idle(cluster, timeout)
    except BaseException:
        cluster.stop()
        raise
    return cluster


def _start_munge(cluster: Cluster) -> None:
    d = cluster.state / "munge"
    key = d / "munge.key"
    if not key.exists():
        key.write_bytes(os.urandom(1024))
        os.chmod(key, 0o400)
    _spawn(cluster, "munged", ["munged", "-F", "--force", f"--socket={d / 'munge.socket'}", f"--key-file={key}",
                               f"--pid-file={d / 'munged.pid'}", f"--seed-file={d / 'munged.seed'}",
                               f"--log-file={cluster.state / 'log/munged.log'}"])
    _wait_for(lambda: (d / "munge.socket").exists(), 10, "munged", cluster.state / "log/munged.log")


def _start_mariadb(cluster: Cluster, port: int) -> None:
    db = cluster.state / "db"
    if not (db / "mysql").exists():
        subprocess.run(["mariadb-install-db", "--user=root", f"--datadir={db}", "--auth-root-authentication-method=normal",
                        "--skip-test-db", "--innodb-log-file-size=8M"], check=True, capture_output=True)
    # --skip-grant-tables: no users or passwords at all; it listens on loopback only
    _spawn(cluster, "mariadbd", ["mariadbd", "--no-defaults", "--user=root", f"--datadir={db}",
                                 f"--socket={db / 'mysqld.sock'}", f"--port={port}", "--bind-address=127.0.0.1",
                                 f"--pid-file={db / 'mariadbd.pid'}", "--skip-grant-tables",
                                 f"--log-error={cluster.state / 'log/mariadb.log'}",
                                 "--innodb-buffer-pool-size=16M", "--innodb-log-file-size=8M", "--skip-log-bin"])
    _wait_port(port, "mariadbd", cluster.state / "log/mariadb.log", 30)


def _write_configs(state: Path, ports: list[int]) -> None:
    db_port, dbd_port, ctld_port, slurmd_port = ports
    sock = state / "munge/munge.socket"
    log = state / "log"
    (state / "slurmdbd.conf").write_text(f"""\
AuthType=auth/munge
AuthInfo=socket={sock}
DbdHost=localhost
DbdAddr=127.0.0.1
DbdPort={dbd_port}
SlurmUser=root
PidFile={state / 'slurmdbd.pid'}
LogFile={log / 'slurmdbd.log'}
StorageType=accounting_storage/mysql
StorageHost=127.0.0.1
StoragePort={db_port}
StorageUser=slurm
StorageLoc=slurm_acct_db
""")
    os.chmod(state / "slurmdbd.conf", 0o600)  # slurmdbd refuses a readable config
    first_job_id = 1000 + int(time.time()) % 50_000_000  # below MaxJobId (67,043,328)
    (state / "slurm.conf").write_text(f"""\
ClusterName=lorasweeptest
SlurmctldHost=localhost(127.0.0.1)
SlurmctldPort={ctld_port}
SlurmdPort={slurmd_port}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
AuthInfo=socket={sock},cred_expire=5
CredType=cred/munge
StateSaveLocation={state / 'ctld'}
SlurmdSpoolDir={state / 'spool'}
SlurmctldPidFile={state / 'slurmctld.pid'}
SlurmdPidFile={state / 'slurmd.pid'}
SlurmctldLogFile={log / 'slurmctld.log'}
SlurmdLogFile={log / 'slurmd.log'}
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=127.0.0.1
AccountingStoragePort={dbd_port}
AccountingStoragePass={sock}
JobCompType=jobcomp/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
DefMemPerCPU=500
SchedulerType=sched/backfill
SchedulerParameters=batch_sched_delay=0,sched_interval=2,bf_interval=2
EnforcePartLimits=ALL
FirstJobId={first_job_id}
MaxArraySize={MAX_ARRAY_SIZE}
ReturnToService=2
MpiDefault=none
SlurmdParameters=config_overrides
KillWait=5
MinJobAge=300
NodeName=localhost NodeAddr=127.0.0.1 CPUs={NODE_CPUS} RealMemory={NODE_MEMORY_MB} State=UNKNOWN
PartitionName={PARTITION} Nodes=localhost Default=YES MaxTime=INFINITE State=UP
""")


def _spawn(cluster: Cluster, name: str, argv: list[str]) -> None:
    env = {**os.environ, "SLURM_CONF": str(cluster.state / "slurm.conf")}
    out = open(cluster.state / "log" / f"{name}.out", "ab")
    # a session of its own: Ctrl-C in the test's terminal does not reach the daemons
    proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    cluster.pids[name] = proc.pid
    (cluster.state / "pids.json").write_text(json.dumps(cluster.pids))


def _stop(pid: int, grace: float = 10) -> None:
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.time() + grace
    while time.time() < deadline:
        try:
            if os.waitpid(pid, os.WNOHANG) != (0, 0):
                return
        except ChildProcessError:  # not our child (stopped from the CLI): poll for it
            if not _alive(pid):
                return
        time.sleep(0.05)
    try:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
    except (ProcessLookupError, ChildProcessError):
        pass


def _alive(pid: int) -> bool:
    """Running, not a zombie (a daemon whose parent exited may wait unreaped in a container)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


def _free_ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


def _wait_port(port: int, name: str, log: Path, timeout: float) -> None:
    def open_() -> bool:
        with socket.socket() as s:
            return s.connect_ex(("127.0.0.1", port)) == 0
    _wait_for(open_, timeout, name, log)


def _wait_idle(cluster: Cluster, timeout: float) -> None:
    def idle() -> bool:
        out = subprocess.run(["sinfo", "-h", "-o", "%T"], env={**os.environ, **cluster.env},
                             capture_output=True, text=True)
        return out.returncode == 0 and out.stdout.strip() == "idle"
    _wait_for(idle, timeout, "slurmd", cluster.state / "log/slurmd.log")


def _wait_for(ready, timeout: float, name: str, log: Path) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if ready():
            return
        time.sleep(0.1)
    tail = log.read_text(errors="replace")[-2000:] if log.exists() else "(no log)"
    raise ClusterUnavailable(f"{name} did not come up within {timeout:.0f}s; its log ends:\n{tail}")


if __name__ == "__main__":
    command, where = sys.argv[1], Path(sys.argv[2]).resolve()
    if command == "up":
        t0 = time.perf_counter()
        c = start(where)
        print(f"cluster up in {time.perf_counter() - t0:.1f}s; PIDs {c.pids}", file=sys.stderr)
        print(f"export SLURM_CONF={c.env['SLURM_CONF']}")
    else:
        c = Cluster(where, json.loads((where / "pids.json").read_text()))
        t0 = time.perf_counter()
        c.stop()
        print(f"cluster down in {time.perf_counter() - t0:.1f}s", file=sys.stderr)
