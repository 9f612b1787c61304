"""pytest plugin: one JSON line per test outcome, appended as the run goes.

    PYTEST_OUTCOMES=out.jsonl python -m pytest -p pytest_outcomes ...   (benchmarks/ on sys.path)

Each line is {"nodeid", "when", "outcome", "reason"}; outcome is one of passed, failed,
skipped, xfailed, xpassed, error (a failing setup or teardown, or a file that does not
collect). Lines are flushed one by one, so a run stopped at its time limit still leaves
the outcome of every test that finished (a junit XML report appears only at the end).
Under pytest-xdist only the controller writes (the workers' reports reach it too).
"""
import json
import os

_state = {"path": None}


def pytest_configure(config):
    if not hasattr(config, "workerinput"):  # an xdist worker has workerinput
        _state["path"] = os.environ.get("PYTEST_OUTCOMES") or None


def _reason(report):
    longrepr = report.longrepr
    if isinstance(longrepr, tuple) and len(longrepr) == 3:  # skips: (path, line, "Skipped: why")
        return str(longrepr[2])
    lines = str(longrepr).strip().splitlines() if longrepr else []
    if not lines:
        return ""
    errors = [ln[1:].strip() for ln in lines if ln.startswith("E ")]  # the assertion's own words
    where = lines[-1].strip()
    return (f"{errors[0]} ({where})" if errors else where)[:500]


def _write(nodeid, when, outcome, reason):
    if _state["path"] is None:
        return
    with open(_state["path"], "a") as fh:
        fh.write(json.dumps({"nodeid": nodeid, "when": when, "outcome": outcome, "reason": reason}) + "\n")


def pytest_runtest_logreport(report):
    xfail = hasattr(report, "wasxfail")
    if report.when == "call":
        if xfail:
            outcome = "xfailed" if report.skipped else "xpassed"
        else:
            outcome = report.outcome
    elif report.failed:
        outcome = "error"
    elif report.skipped and report.when == "setup":
        outcome = "xfailed" if xfail else "skipped"
    else:
        return  # a passing setup or teardown says nothing new
    _write(report.nodeid, report.when, outcome, _reason(report) if outcome != "passed" else "")


def pytest_collectreport(report):
    if report.failed:
        _write(report.nodeid, "collect", "error", _reason(report))
