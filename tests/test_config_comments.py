"""conf/config.yaml's comments list the options a user may pick: they must stay the options that exist
(the methods lorasweep knows and conf/method/ holds, the task kinds, the trackers)."""
import re

from lorasweep.config.spec import METHODS, TASK_KINDS

from conftest import ROOT

CONFIG = (ROOT / "conf" / "config.yaml").read_text()


def listed(after: str) -> set[str]:
    """The names of an `a | b | c` list that follows `after` in conf/config.yaml's comments."""
    found = re.search(re.escape(after) + r"\s*\(?([\w\s|]+)", CONFIG)
    assert found, f"conf/config.yaml no longer says {after!r}"
    return {name.strip() for name in found.group(1).split("|")}


def stems(group: str) -> set[str]:
    return {p.stem for p in (ROOT / "conf" / group).glob("*.yaml")}


def test_the_methods_listed_are_the_methods_there_are():
    assert listed("conf/method/:") == set(METHODS) == stems("method")


def test_the_task_kinds_listed_are_the_task_kinds_there_are():
    assert listed("task kind") == set(TASK_KINDS)


def test_the_trackers_listed_are_the_trackers_there_are():
    assert listed("conf/tracking/:") == stems("tracking")
