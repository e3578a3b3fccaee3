"""Trackers, read back with each library's own reader: what a tiny run logged (config, curve, test
metrics) equals its result.json; the runs of one sweep are grouped; the default logs nothing."""
import hashlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request

import pytest

from lorasweep.run.lifecycle import run_config
from lorasweep.run.tracking import folder_name

from conftest import TINY_TOPICS, compose_config, launch

TRACKED = TINY_TOPICS + ["train.lr=5e-2"]  # a large lr: the curve moves and the test accuracy is not 0


def run(results_dir, *overrides):
    result = run_config(compose_config(TRACKED + list(overrides) + [f"results_dir={results_dir}"]))
    return result, results_dir / f"{result['slug']}-{result['run_key']}"


def curve_of(result, metric):
    return [(point["step"], point[metric]) for point in result["curve"]]


def test_wandb_offline_run_holds_the_curve_the_test_metrics_and_its_group(results_dir):
    import wandb

    result, folder = run(results_dir, "tracking=wandb", "tracking.group=rank sweep")
    # wandb's service process writes the log asynchronously and completes it when it ends: at the exit
    # of `python launch.py` or of a sweep's worker; this run ran in the test's process, so end it here
    # (read at once, the log once held only its header: a loaded CI machine, 2026-11-30)
    wandb.teardown()
    [log] = list((folder / "wandb").glob("offline-run-*/*.wandb"))  # the event log `wandb sync` uploads
    # wandb 0.31 reads these logs only in its Go core; the protobuf records keep keys and JSON values as text
    data = log.read_bytes()
    for key in (b"loss", b"eval_accuracy", b"eval_accuracy_se", b"test_accuracy", b"rank sweep"):
        assert key in data
    assert json.dumps(result["metrics"]["test"]["accuracy"]).encode() in data


def test_no_tracking_by_default(results_dir):
    result, folder = run(results_dir)
    assert not (folder / "wandb").exists()
    assert sorted(p.name for p in results_dir.iterdir()) == [folder.name]  # no tensorboard/, no mlruns/


# --- TensorBoard: EventAccumulator -------------------------------------------------------------------

def tensorboard_events(logdir):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(logdir), size_guidance={"scalars": 0, "tensors": 0})
    events.Reload()
    return events


def test_tensorboard_run_logs_its_config_curve_and_test_metrics(results_dir):
    from tensorboard.plugins.hparams import plugin_data_pb2

    result, folder = run(results_dir, "tracking=tensorboard")
    logdir = results_dir / "tensorboard" / folder.name  # a single run: no sweep folder
    events = tensorboard_events(logdir)
    scalars = lambda tag: [(e.step, e.value) for e in events.Scalars(tag)]
    assert scalars("eval_accuracy") == [(s, pytest.approx(v, abs=1e-7)) for s, v in curve_of(result, "accuracy")]
    assert scalars("eval_loss") == [(s, pytest.approx(v, rel=1e-6)) for s, v in curve_of(result, "loss")]
    assert [s for s, _ in scalars("loss")] == [1, 2, 3, 4]  # the training loss, every logging step
    test = result["metrics"]["test"]
    assert test["accuracy"] > 0
    assert scalars("test_accuracy") == [(4, pytest.approx(test["accuracy"], abs=1e-7))]  # at the last step
    assert scalars("test_loss") == [(4, pytest.approx(test["loss"], rel=1e-6))]
    [text] = events.Tensors("config/text_summary")
    config = json.loads(text.tensor_proto.string_val[0].decode().strip("`\n"))
    assert config == result["config"]
    # the HParams view: every setting by its flat name, and the final metrics
    content = events.PluginTagToContent("hparams")
    start = plugin_data_pb2.HParamsPluginData.FromString(content["_hparams_/session_start_info"])
    hparams = start.session_start_info.hparams
    assert hparams["lora.r"].number_value == 8 and hparams["lora.proj"].string_value == "qkvo"
    assert hparams["model.name"].string_value == "tiny-bert" and hparams["train.lr"].number_value == 5e-2
    experiment = plugin_data_pb2.HParamsPluginData.FromString(content["_hparams_/experiment"]).experiment
    assert {m.name.tag for m in experiment.metric_infos} >= {"test_accuracy", "test_loss"}


# --- MLflow: MlflowClient ----------------------------------------------------------------------------

def mlflow_client(uri):
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=str(uri))


def assert_mlflow_run_is(client, run_id, result):
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED" and run.info.run_name == result["slug"]
    assert run.data.tags["lorasweep.run_key"] == result["run_key"]
    params = run.data.params
    assert (params["lora.r"], params["lora.proj"], params["model.name"], params["train.lr"]) == \
        ("8", "qkvo", "tiny-bert", "0.05")
    history = lambda key: [(m.step, m.value) for m in client.get_metric_history(run_id, key)]
    assert history("eval_accuracy") == curve_of(result, "accuracy")
    assert history("eval_loss") == [(s, pytest.approx(v, rel=1e-12)) for s, v in curve_of(result, "loss")]
    test = result["metrics"]["test"]
    assert test["accuracy"] > 0
    assert history("test_accuracy") == [(4, test["accuracy"])]  # the final metrics, at the last step
    assert run.data.metrics["test_loss"] == pytest.approx(test["loss"], rel=1e-12)


def test_mlflow_run_logs_to_a_local_file_store_by_default(results_dir, monkeypatch):
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")  # MLflow 3 opens a file store only with it
    result, _ = run(results_dir, "tracking=mlflow")
    client = mlflow_client(results_dir / "mlruns")
    experiment = client.get_experiment_by_name("lorasweep")  # tracking.experiment, for single runs
    [found] = client.search_runs([experiment.experiment_id])
    assert_mlflow_run_is(client, found.info.run_id, result)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def mlflow_server(tmp_path):
    """A real MLflow tracking server on loopback (its own store in tmp_path), stopped at the end."""
    port = _free_port()
    env = {**os.environ, "MLFLOW_ALLOW_FILE_STORE": "true"}
    server = subprocess.Popen([sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port),
                               "--workers", "1", "--backend-store-uri", str(tmp_path / "server-store")],
                              env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                with urllib.request.urlopen(f"{url}/health", timeout=2) as answer:
                    if answer.status == 200:
                        break
            except OSError:
                pass
            if server.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"the MLflow server did not start (exit {server.poll()})")
            time.sleep(0.5)
        yield url
    finally:
        os.killpg(server.pid, signal.SIGTERM)  # the server and the workers it started, in its own session
        server.wait(timeout=30)


def test_mlflow_run_logs_to_a_server_url(results_dir, mlflow_server):
    result, _ = run(results_dir, "tracking=mlflow", f"tracking.uri={mlflow_server}")
    assert not (results_dir / "mlruns").exists()
    client = mlflow_client(mlflow_server)
    [found] = client.search_runs([client.get_experiment_by_name("lorasweep").experiment_id])
    assert_mlflow_run_is(client, found.info.run_id, result)


# --- the runs of one sweep, grouped -------------------------------------------------------------------

SWEEP = ["-m", "lora.r=4,8", "lora.proj=qk", *TRACKED]
# the group: the sweep's command line, less results_dir and tracking; past 120 characters cut, with a hash
TYPED = " ".join(SWEEP[1:])
SWEEP_NAME = f"{TYPED[:110]} {hashlib.sha1(TYPED.encode()).hexdigest()[:9]}"


def _results(results_dir):
    return {r["run_key"]: r for r in (json.loads(p.read_text()) for p in results_dir.glob("*/result.json"))}


def test_a_sweep_s_runs_share_one_tensorboard_folder(tmp_path):
    results_dir = tmp_path / "results"
    proc = launch(SWEEP + ["tracking=tensorboard", f"results_dir={results_dir}"], cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = _results(results_dir)
    [sweep] = list((results_dir / "tensorboard").iterdir())
    assert sweep.name == folder_name(SWEEP_NAME)
    assert sweep.name.startswith("lora.r=4,8_lora.proj=qk_model=tiny-bert_task=wordnet_topics_train.max_steps=4")
    assert sorted(p.name for p in sweep.iterdir()) == sorted(f"{r['slug']}-{k}" for k, r in results.items())
    for key, result in results.items():
        [final] = tensorboard_events(sweep / f"{result['slug']}-{key}").Scalars("test_accuracy")
        assert final.value == pytest.approx(result["metrics"]["test"]["accuracy"], abs=1e-7)


def test_a_sweep_s_runs_share_one_mlflow_experiment(tmp_path, monkeypatch):
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    results_dir = tmp_path / "results"
    proc = launch(SWEEP + ["tracking=mlflow", f"results_dir={results_dir}"], cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    client = mlflow_client(results_dir / "mlruns")
    [experiment] = client.search_experiments()  # one for the sweep; none named lorasweep
    assert experiment.name == SWEEP_NAME
    runs = client.search_runs([experiment.experiment_id])
    results = _results(results_dir)
    assert sorted(r.data.tags["lorasweep.run_key"] for r in runs) == sorted(results)
    for found in runs:
        result = results[found.data.tags["lorasweep.run_key"]]
        assert found.data.tags["lorasweep.sweep"] == SWEEP_NAME and found.info.status == "FINISHED"
        assert found.data.metrics["test_accuracy"] == result["metrics"]["test"]["accuracy"]
        assert found.data.params["lora.r"] == str(result["config"]["lora"]["r"])


def test_a_tracker_that_cannot_work_is_said_before_anything_trains(tmp_path):
    """A server URL that does not answer fails the run in one line before a weight is read (MLflow's
    client would retry it for minutes, run after run); an unknown backend names the valid ones."""
    from lorasweep.errors import ConfigError
    from lorasweep.run.tracking import check_tracking

    with pytest.raises(ConfigError, match=r"tracking.uri=http://127.0.0.1:9 does not answer \(.*refused"):
        check_tracking({"backend": "mlflow", "uri": "http://127.0.0.1:9"})  # port 9 (discard): nothing listens
    with pytest.raises(ConfigError, match="choose one of none, wandb, tensorboard, mlflow"):
        check_tracking({"backend": "neptune"})
    proc = launch(["-m", "lora.r=4,8", *TINY_TOPICS, "tracking=mlflow", "tracking.uri=http://127.0.0.1:9"], cwd=tmp_path)
    assert proc.returncode != 0 and proc.stderr.count("invalid: tracking.uri=http://127.0.0.1:9 does not answer") == 2
    assert not list(tmp_path.glob("results/*/result.json"))


@pytest.mark.parametrize("fails_in", ["summary", "finish"])
def test_a_tracker_failing_after_the_run_finished_leaves_its_result_done(results_dir, monkeypatch, capsys, fails_in):
    """A tracker whose server answers 503 (or whose disk is full) as the run ends: said in one line;
    the run stays done, with its adapter, and is not trained again."""
    from lorasweep.run.tracking import TensorBoardTracker

    def unavailable(self, *args, **kwargs):
        raise RuntimeError("API request to .../runs/update failed (503)")

    monkeypatch.setattr(TensorBoardTracker, fails_in, unavailable)
    result, folder = run(results_dir, "tracking=tensorboard")
    assert result["status"] == "done" and (folder / "adapter" / "adapter_model.safetensors").exists()
    assert json.loads((folder / "result.json").read_text())["status"] == "done"
    said = capsys.readouterr().err
    assert f"{result['slug']}: the tracker failed to end its run (RuntimeError: API request to .../runs/update " \
           "failed (503)); the run's result stands" in said
    assert run(results_dir, "tracking=tensorboard")[0] == result  # finished: not trained again


def test_a_tracker_failing_while_the_run_trains_is_said_once_and_the_run_trains_on(results_dir, monkeypatch,
                                                                                   capsys):
    """A tracker whose server answers 503 at every step: said in one line (the backend and its error),
    once, not per step; the run trains to its end, done, with its whole curve."""
    from lorasweep.run.tracking import TensorBoardTracker

    calls = []

    def unavailable(self, metrics, step):
        calls.append(step)
        raise RuntimeError("API request to .../runs/log-batch failed (503)")

    monkeypatch.setattr(TensorBoardTracker, "log", unavailable)
    result, folder = run(results_dir, "tracking=tensorboard")  # was: the run failed with the tracker's error
    assert result["status"] == "done" and (folder / "adapter" / "adapter_model.safetensors").exists()
    assert [p["step"] for p in result["curve"] if "accuracy" in p] == [0, 2, 4]
    said = capsys.readouterr().err
    line = (f"{result['slug']}: the tracker (tensorboard) failed to log step {calls[0]} (RuntimeError: API request "
            f"to .../runs/log-batch failed (503)); training goes on, and it logs nothing more of this run")
    assert said.count("the tracker (tensorboard) failed") == 1 and line in said.splitlines()
    assert len(calls) == 1  # given up on after its failure: not asked again at every step


# --- packs: each run its own tracker run ---------------------------------------------------------------

def test_a_packs_runs_are_each_their_own_tensorboard_run(results_dir):
    from lorasweep.run.pack import run_pack

    cfgs = [compose_config(TRACKED + ["tracking=tensorboard", f"lora.r={r}", f"results_dir={results_dir}"])
            for r in (2, 8)]
    results = run_pack(cfgs)
    assert [r["pack"]["size"] for r in results] == [2, 2]
    for result in results:
        events = tensorboard_events(results_dir / "tensorboard" / f"{result['slug']}-{result['run_key']}")
        scalars = lambda tag: [(e.step, e.value) for e in events.Scalars(tag)]
        assert scalars("eval_accuracy") == [(s, pytest.approx(v, abs=1e-7)) for s, v in curve_of(result, "accuracy")]
        assert scalars("eval_loss") == [(s, pytest.approx(v, rel=1e-6)) for s, v in curve_of(result, "loss")]
        assert [s for s, _ in scalars("loss")] == [1, 2, 3, 4]  # the training loss, every logging step
        assert scalars("learning_rate")[0] == (1, pytest.approx(5e-2))  # the rate its first step took
        assert scalars("test_accuracy") == [(4, pytest.approx(result["metrics"]["test"]["accuracy"], abs=1e-7))]
        [text] = events.Tensors("config/text_summary")
        assert json.loads(text.tensor_proto.string_val[0].decode().strip("`\n")) == result["config"]


def test_a_packs_runs_are_each_their_own_wandb_run(results_dir):
    """wandb runs of one process at once (reinit="create_new"): the pack's first run is not ended
    when the second one's starts."""
    import wandb

    from lorasweep.run.pack import run_pack

    cfgs = [compose_config(TRACKED + ["tracking=wandb", f"lora.r={r}", f"results_dir={results_dir}"]) for r in (2, 8)]
    results = run_pack(cfgs)
    wandb.teardown()  # completes the offline logs (see the test above)
    for result in results:
        [log] = list((results_dir / f"{result['slug']}-{result['run_key']}" / "wandb").glob("offline-run-*/*.wandb"))
        data = log.read_bytes()
        assert b"eval_accuracy" in data and b"test_accuracy" in data
        assert json.dumps(result["metrics"]["test"]["accuracy"]).encode() in data
