"""Write tests/durations.json, each test file's seconds, from the JUnit XML of full suite runs.

    python scripts/test_durations.py run1.xml [run2.xml ...]

Make the XML with the README's test command and `--junitxml=FILE` (from a clean clone: a warm plan
cache makes some files faster than CI finds them). Several runs give each file's median. The suite
sends its longest files to its test processes first (tests/conftest.py), so that neither ends long
after the other: the figures only order the files, so refresh them when a file's cost changes a lot.
"""
from __future__ import annotations

import json
import statistics
import sys
import xml.etree.ElementTree as ET
from collections import Counter
from pathlib import Path

OUT = Path(__file__).resolve().parents[1] / "tests" / "durations.json"


def file_seconds(junit: Path) -> Counter:
    """{test file name: the seconds of its tests} in one JUnit XML (classname: tests.test_x[.Class])."""
    seconds: Counter = Counter()
    for case in ET.parse(junit).getroot().iter("testcase"):
        seconds[case.get("classname").split(".")[1] + ".py"] += float(case.get("time", 0))
    return seconds


def main(paths: list[str]) -> int:
    if not paths:
        print(__doc__, file=sys.stderr)
        return 2
    runs = [file_seconds(Path(p)) for p in paths]
    present = {p.name for p in OUT.parent.glob("test_*.py")}
    files = sorted({name for run in runs for name in run} & present)
    median = {name: round(statistics.median(run[name] for run in runs if name in run), 1) for name in files}
    OUT.write_text(json.dumps(dict(sorted(median.items(), key=lambda kv: -kv[1])), indent=1) + "\n")
    print(f"{OUT}: {len(median)} files, {sum(median.values()):.0f} s in all (median of {len(runs)} runs)")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
