"""Where a sweep's Optuna study lives, as one string that the driver and every run can open.

The storage travels from the sweep's driver to its runs (local worker processes, SLURM jobs) as a
string, the job's trial["storage"] (executors/job.Job.trials), and each run opens it to report to the pruner. Optuna names its
database storages by URL (`sqlite:///...`, `postgresql://...`, `mysql+pymysql://...`) but has no
URL for a journal file, so lorasweep spells one `journal:///absolute/path/optuna.journal`;
open_storage() turns either spelling into what optuna.create_study / load_study take. The same
spellings are accepted in hydra.sweeper.storage.

On SLURM the default is a journal file in the results store (on the shared filesystem), not sqlite:
Optuna's FAQ warns against sqlite on a network filesystem (sqlite locks with fcntl(), which is
broken on many NFS implementations, and it does not take many concurrent writers). The journal
backend appends one JSON line per operation under a lock file and every process replays the lines.
Its lock is JournalFileOpenLock: the lock file is created with open(O_CREAT | O_EXCL), atomic on
NFSv3 or later (Optuna's docs: "NFSv3 or later on kernel 2.6 or later"). Optuna's default,
JournalFileSymlinkLock, is only needed for NFSv2, and needs symlinks, which some filesystems refuse.
Both locks use the same `<journal>.lock` name, and each fails when the other's lock file exists, so
a tool that opens the journal with Optuna's default lock still excludes our writers.
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from ..errors import ConfigError
from .store import keep_file

JOURNAL = "journal://"  # + an absolute path: journal:///abs/path/optuna.journal
SQLITE = "sqlite:///"  # + a path, absolute with a fourth slash: sqlite:////abs/path/optuna.db
SQLITE_FILE = "optuna.db"  # the default storages' names in the results store
JOURNAL_FILE = "optuna.journal"
_URL = re.compile(r"^[A-Za-z][A-Za-z0-9+.\-]*://")  # a URL scheme, as SQLAlchemy's (and Optuna's) parse it

_EXAMPLES = ("sqlite:////abs/path/optuna.db, postgresql://user@host/db, or a journal file as "
             "journal:///abs/path/optuna.journal")


def journal_spec(path: Path | str) -> str:
    """The spelling of a journal file storage: journal:///abs/path."""
    return f"{JOURNAL}{Path(path).resolve()}"


def journal_path(spec: str) -> Path | None:
    """The journal file a storage spelling names (None for a database URL); checks the spelling."""
    spec = check_storage(spec)
    return Path(spec[len(JOURNAL):]) if spec.startswith(JOURNAL) else None


def check_storage(spec: Any) -> str:
    """`spec` if lorasweep can open it, else a ConfigError that says what to write instead.

    A database URL is passed on to Optuna as it is (Optuna checks the rest); a journal file must be
    named by an absolute path, since the runs that open it do not share the driver's directory."""
    spec = str(spec)
    if spec.startswith(JOURNAL):
        path = spec[len(JOURNAL):]
        if not path.startswith("/"):
            raise ConfigError(f"hydra.sweeper.storage={spec!r}: a journal file needs an absolute path, with "
                              f"three slashes: {journal_spec(path) if path else 'journal:///abs/path/optuna.journal'}")
        return spec
    if _URL.match(spec):
        return spec
    hint = f" (a journal file there: {journal_spec(spec)})" if spec.strip() else ""
    raise ConfigError(f"hydra.sweeper.storage={spec!r} is not a storage URL{hint}: give {_EXAMPLES}")


def sqlite_path(spec: str) -> Path | None:
    """The file a sqlite:/// URL names, relative to the working directory unless absolute (None for
    any other storage, and for SQLite's in-memory database)."""
    if not spec.startswith(SQLITE):
        return None
    path = spec[len(SQLITE):].split("?", 1)[0]
    return Path(path) if path and path != ":memory:" else None


def open_storage(spec: str) -> Any:
    """What optuna.create_study / load_study take for a spelling: the URL itself for a database, a
    JournalStorage for journal:///path. A storage file (a journal, a SQLite database) is made, empty,
    with its folder, if missing: SQLite makes no folder, and says only "unable to open database file"."""
    path = journal_path(spec)
    if path is None:
        if (database := sqlite_path(spec)) is not None:
            keep_file(database)
        return spec
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend, JournalFileOpenLock

    keep_file(path)
    return JournalStorage(JournalFileBackend(str(path), lock_obj=JournalFileOpenLock(str(path))))


def default_storage(store: Path, cluster: bool) -> str:
    """hydra.sweeper.storage=null: a file in the results store `store`. On a cluster a journal file,
    locally sqlite; but a store that holds only the other kind keeps it, so that a study started
    before (or under the other launcher) is continued, not started anew."""
    store = store.resolve()
    journal, sqlite = store / JOURNAL_FILE, store / SQLITE_FILE
    preferred, other = (journal, sqlite) if cluster else (sqlite, journal)
    chosen = other if other.exists() and not preferred.exists() else preferred
    keep_file(chosen)  # made now: a new store, empty, would be removed by a rival sweep's probe of it
    return journal_spec(chosen) if chosen == journal else f"{SQLITE}{chosen}"
