"""The Optuna storage a sweep and its runs share (lorasweep.run.study_storage): its spelling, the
results store's default, and a journal file that many processes write at once."""
from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import optuna
import pytest
from optuna.storages import JournalStorage
from optuna.trial import TrialState

from conftest import TINY_TOPICS, launch, wait_until
from lorasweep.errors import ConfigError
from lorasweep.run.study_storage import check_storage, default_storage, journal_path, journal_spec, open_storage


def test_a_journal_file_is_spelled_journal_and_its_absolute_path(tmp_path):
    spec = f"journal://{tmp_path}/studies/optuna.journal"
    assert spec.startswith("journal:///")
    assert check_storage(spec) == spec
    assert journal_path(spec) == tmp_path / "studies" / "optuna.journal"
    assert journal_spec(tmp_path / "studies" / "optuna.journal") == spec
    storage = open_storage(spec)
    assert isinstance(storage, JournalStorage)
    assert (tmp_path / "studies" / "optuna.journal").is_file()  # created, folder and all
    study = optuna.create_study(storage=storage, study_name="s")
    study.tell(study.ask(), 1.5)
    # another opening of the same spelling sees the trial
    again = optuna.load_study(study_name="s", storage=open_storage(spec))
    assert [t.value for t in again.trials] == [1.5]


@pytest.mark.parametrize("url", ["postgresql://user@host:5432/db", "mysql+pymysql://u:p@h/db", "sqlite:///:memory:"])
def test_a_database_url_is_passed_to_optuna_as_it_is(url):
    assert check_storage(url) == url
    assert journal_path(url) is None
    assert open_storage(url) == url


@pytest.mark.parametrize("relative", [False, True])
def test_a_sqlite_file_in_a_new_folder_is_made_with_its_folder(tmp_path, monkeypatch, relative):
    """SQLite makes no folder ("unable to open database file"): its file is made, with its folder, as a
    journal's is. A relative path is the working directory's, as SQLAlchemy reads it."""
    monkeypatch.chdir(tmp_path)
    url = "sqlite:///new/folder/optuna.db" if relative else f"sqlite:///{tmp_path}/new/folder/optuna.db"
    assert check_storage(url) == url
    assert open_storage(url) == url  # passed to Optuna as it is
    assert (tmp_path / "new" / "folder" / "optuna.db").is_file()
    study = optuna.create_study(storage=url, study_name="s")
    study.tell(study.ask(), 3.0)
    assert [t.value for t in optuna.load_study(study_name="s", storage=open_storage(url)).trials] == [3.0]


def test_a_sqlite_url_opens_the_same_study_as_before(tmp_path):
    url = f"sqlite:///{tmp_path / 'optuna.db'}"
    study = optuna.create_study(storage=open_storage(url), study_name="s")
    study.tell(study.ask(), 2.0)
    assert [t.value for t in optuna.load_study(study_name="s", storage=url).trials] == [2.0]


@pytest.mark.parametrize("spec,message", [
    ("results/optuna.journal", "hydra.sweeper.storage='results/optuna.journal' is not a storage URL "
                               "(a journal file there: journal://{cwd}/results/optuna.journal): give sqlite:///"),
    ("journal://results/optuna.journal", "hydra.sweeper.storage='journal://results/optuna.journal': a journal "
                                         "file needs an absolute path, with three slashes: "
                                         "journal://{cwd}/results/optuna.journal"),
    ("journal://", "a journal file needs an absolute path, with three slashes: journal:///abs/path/optuna.journal"),
])
def test_a_relative_path_is_refused_with_the_absolute_spelling(spec, message, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError) as e:
        check_storage(spec)
    assert message.format(cwd=tmp_path.resolve()) in str(e.value)


def test_the_default_is_a_journal_on_slurm_sqlite_locally_and_an_existing_study_stays_where_it_is(tmp_path):
    fresh_cluster, fresh_local = tmp_path / "c", tmp_path / "l"
    assert default_storage(fresh_cluster, cluster=True) == f"journal://{fresh_cluster.resolve()}/optuna.journal"
    assert default_storage(fresh_local, cluster=False) == f"sqlite:///{fresh_local.resolve()}/optuna.db"
    # a store that holds only the other kind keeps it: its study is continued, not started anew
    only_db, only_journal = tmp_path / "db", tmp_path / "journal"
    only_db.mkdir(), only_journal.mkdir()
    (only_db / "optuna.db").touch(), (only_journal / "optuna.journal").touch()
    assert default_storage(only_db, cluster=True) == f"sqlite:///{only_db.resolve()}/optuna.db"
    assert default_storage(only_journal, cluster=False) == f"journal://{only_journal.resolve()}/optuna.journal"
    # both there: the launcher's own kind
    (only_db / "optuna.journal").touch()
    assert default_storage(only_db, cluster=True) == f"journal://{only_db.resolve()}/optuna.journal"
    assert default_storage(only_db, cluster=False) == f"sqlite:///{only_db.resolve()}/optuna.db"


# Each process opens the study, says it is ready (a file), waits for the start file (created once all
# of them are ready, so that all of them write at once), then asks and tells N trials, each told the
# value WORKER * 1000 + i.
_ASK_AND_TELL = """
import sys, time
from pathlib import Path
import optuna
from lorasweep.run.study_storage import open_storage
spec, worker, n, go = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), Path(sys.argv[4])
optuna.logging.set_verbosity(optuna.logging.WARNING)
study = optuna.load_study(study_name="many", storage=open_storage(spec))
(go.parent / f"ready-{worker}").touch()
while not go.exists():
    time.sleep(0.01)
for i in range(n):
    trial = study.ask()
    x = trial.suggest_float("x", 0.0, 1.0)
    trial.set_user_attr("worker", worker)
    study.tell(trial, worker * 1000 + i)
"""


def test_eight_processes_telling_one_journal_at_once_lose_no_trial(tmp_path):
    processes, n = 8, 25
    spec = journal_spec(tmp_path / "optuna.journal")
    optuna.create_study(storage=open_storage(spec), study_name="many", direction="maximize")
    go = tmp_path / "go"
    procs = [subprocess.Popen([sys.executable, "-c", _ASK_AND_TELL, spec, str(w), str(n), str(go)],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for w in range(processes)]
    wait_until(lambda: len(list(tmp_path.glob("ready-*"))) == processes or any(p.poll() is not None for p in procs),
               "every process to open the study")
    go.touch()
    for p in procs:
        _, err = p.communicate(timeout=300)
        assert p.returncode == 0, err[-3000:]
    trials = optuna.load_study(study_name="many", storage=open_storage(spec)).trials
    assert len(trials) == processes * n
    assert all(t.state == TrialState.COMPLETE for t in trials)
    assert sorted(t.number for t in trials) == list(range(processes * n))  # distinct numbers, no gap
    assert sorted(t.value for t in trials) == sorted(w * 1000 + i for w in range(processes) for i in range(n))
    assert all(t.value // 1000 == t.user_attrs["worker"] and 0.0 <= t.params["x"] <= 1.0 for t in trials)
    # every process did write while the others did
    assert {t.user_attrs["worker"] for t in trials} == set(range(processes))


def test_a_sweep_keeps_its_study_in_the_journal_it_is_given(tmp_path):
    results, journal = tmp_path / "results", tmp_path / "studies" / "lora.journal"
    tiny_2 = [a for a in TINY_TOPICS if not a.startswith("train.max_steps=")] + ["train.max_steps=2"]
    out = launch(["-m", "hydra/sweeper=optuna", "hydra.sweeper.n_trials=2", "hydra.sweeper.sampler=grid",
                  f"hydra.sweeper.storage=journal://{journal}", "hydra.sweeper.study_name=j",
                  "hydra.sweeper.pruner=median", "lora.r=choice(2,4)", *tiny_2, f"results_dir={results}"],
                 cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    assert re.search(rf"^optuna study 'j' in journal://{re.escape(str(journal))}: 2 trials", out.stderr, re.M)
    assert journal.is_file() and not (results / "optuna.db").exists()
    trials = optuna.load_study(study_name="j", storage=open_storage(f"journal://{journal}")).trials
    assert [t.state for t in trials] == [TrialState.COMPLETE] * 2
    for t in trials:
        run = json.loads((Path(t.user_attrs["result_dir"]) / "result.json").read_text())
        assert t.value == run["objective"]["value"]
        # the worker process opened the journal and reported its evaluation at step 2 to the trial
        assert t.intermediate_values == {p["step"]: p["accuracy"] for p in run["curve"] if p["step"] > 0} != {}


def _dashboard_get(app, path: str):
    """GET `path` from optuna-dashboard's WSGI app, in this process (no server, no port): its JSON."""
    from wsgiref.util import setup_testing_defaults

    environ = {"REQUEST_METHOD": "GET", "PATH_INFO": path}
    setup_testing_defaults(environ)
    status = []
    body = b"".join(app(environ, lambda s, headers, exc_info=None: status.append(s)))
    assert status and status[0].startswith("200"), (path, status, body[:500])
    return json.loads(body)


@pytest.mark.parametrize("kind", ["sqlite", "journal"])
def test_optuna_dashboard_opens_the_study_our_sweeper_wrote(kind, tmp_path):
    """optuna-dashboard (the dev extra) lists the study of a real hydra/sweeper=optuna sweep and its
    trials, opened as its command line takes each storage: `optuna-dashboard sqlite:///abs/optuna.db`
    (the local default) and `optuna-dashboard /abs/optuna.journal` (a journal file, SLURM's default)."""
    from optuna_dashboard import wsgi

    results = tmp_path / "results"
    journal = results / "optuna.journal"
    where = [f"hydra.sweeper.storage={journal_spec(journal)}"] if kind == "journal" else []  # sqlite: the default
    tiny_2 = [a for a in TINY_TOPICS if not a.startswith("train.max_steps=")] + ["train.max_steps=2"]
    out = launch(["-m", "hydra/sweeper=optuna", "hydra.sweeper.n_trials=2", "hydra.sweeper.sampler=grid",
                  "lora.r=choice(2,4)", *where, *tiny_2, f"results_dir={results}"], cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    spec = journal_spec(journal) if kind == "journal" else f"sqlite:///{results.resolve() / 'optuna.db'}"
    assert (journal.is_file(), (results / "optuna.db").is_file()) == ((True, False) if kind == "journal" else (False, True))
    [name] = optuna.get_all_study_names(storage=open_storage(spec))

    app = wsgi(str(journal) if kind == "journal" else spec)  # what `optuna-dashboard STORAGE` is given
    [study] = _dashboard_get(app, "/api/studies")["study_summaries"]
    assert study["study_name"] == name and study["directions"] == ["maximize"]
    trials = _dashboard_get(app, f"/api/studies/{study['study_id']}")["trials"]
    assert [t["state"] for t in trials] == ["Complete", "Complete"]
    runs = {json.loads(p.read_text())["config"]["lora"]["r"]: json.loads(p.read_text())
            for p in results.glob("*/result.json")}
    for trial in trials:
        [param] = trial["params"]
        assert param["name"] == "lora.r"
        assert trial["values"] == [runs[int(param["param_external_value"])]["objective"]["value"]]
    assert sorted(int(t["params"][0]["param_external_value"]) for t in trials) == [2, 4]
