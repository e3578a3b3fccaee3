"""tests/durations.json, by which the suite hands out its longest files first (conftest.py), has a
figure for each test file and none for a file that is gone."""
import json

from conftest import DURATIONS


def test_every_test_file_has_its_seconds_and_no_other_file_has():
    seconds = json.loads(DURATIONS.read_text())
    files = {p.name for p in DURATIONS.parent.glob("test_*.py")}
    assert seconds.keys() == files, (
        f"tests/durations.json lacks {sorted(files - seconds.keys())} and names gone files "
        f"{sorted(seconds.keys() - files)}: refresh it (scripts/test_durations.py on a CI run's "
        "--junitxml), or give a new file its seconds by hand")
    assert all(isinstance(s, (int, float)) and s >= 0 for s in seconds.values())
