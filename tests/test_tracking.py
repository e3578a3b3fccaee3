"""tracking=wandb logs a real (offline) wandb run beside the result; the default logs nothing."""
import json

from lorasweep.run.lifecycle import run_config

from conftest import TINY_TOPICS, compose_config


def test_wandb_offline_run_holds_the_curve_and_the_test_metrics(results_dir):
    cfg = compose_config(TINY_TOPICS + ["tracking=wandb", f"results_dir={results_dir}"])
    result = run_config(cfg)
    folder = results_dir / f"{result['slug']}-{result['run_key']}"
    [log] = list((folder / "wandb").glob("offline-run-*/*.wandb"))  # the event log `wandb sync` uploads
    # wandb 0.31 reads these logs only in its Go core; the protobuf records keep keys and JSON values as text
    data = log.read_bytes()
    for key in (b"loss", b"eval_accuracy", b"eval_accuracy_se", b"test_accuracy"):
        assert key in data
    assert json.dumps(result["metrics"]["test"]["accuracy"]).encode() in data


def test_no_tracking_by_default(results_dir):
    result = run_config(compose_config(TINY_TOPICS + [f"results_dir={results_dir}"]))
    assert not (results_dir / f"{result['slug']}-{result['run_key']}" / "wandb").exists()
