"""The HTTP benchmark's instrument works end to end: real uvicorn processes, real wrk.

One short pair (a bare server and the pass-through configuration, one round of 1 s
each) on the plain server, and the access-log configuration to check that what the
server writes to its stdout pipe is drained and counted. No figure is compared with a
threshold: the machine is shared, only the shape and sign of the results are checked.
"""

from __future__ import annotations

import pytest

from bench.bench_http import main, render, run_benchmark
from tests.support import require_binary

pytestmark = [pytest.mark.slow, pytest.mark.realparts]


def test_one_pair_gives_a_table_row_with_positive_figures() -> None:
    require_binary("wrk")
    results = run_benchmark(["passthrough", "access_log"], ["plain"], duration=1, rounds=1)

    assert [(pair.config.name, pair.mode) for pair in results] == [
        ("passthrough", "plain"),
        ("access_log", "plain"),
    ]
    for pair in results:
        assert len(pair.bare) == len(pair.configured) == 1
        for run in (*pair.bare, *pair.configured):
            assert run.requests > 0
            assert run.rps > 0
            assert run.cpu_us > 0
        assert pair.kept > 0
    passthrough, access_log = results
    # One JSON line per request reached the pipe (a few requests may be in flight at the
    # end of a run, and the readiness probe logs too).
    assert access_log.log_lines_per_request == pytest.approx(1.0, abs=0.05)
    assert passthrough.log_lines_per_request == 0

    table = render(results, duration=1, rounds=1)
    lines = table.splitlines()
    assert lines[0] == "### uvicorn (h11, asyncio)"
    rows = [line for line in lines if line.startswith("| pass-through") or "AccessLog" in line]
    assert len(rows) == 2
    for row in rows:
        cells = [cell.strip() for cell in row.strip("|").split("|")]
        bare_rps, with_rps = (float(x) for x in cells[1].split(" → "))
        assert bare_rps > 0
        assert with_rps > 0
        assert float(cells[2]) > 0  # kept
        assert float(cells[3]) > 0  # CPU µs/request, bare
        assert float(cells[4]) > 0  # CPU µs/request, configured
    assert "uvicorn[standard]" not in table  # only the mode asked for


def test_unknown_configuration_is_a_clear_error(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["--only", "no_such_thing", "--duration", "1"])
    assert exited.value.code == 2
    err = capsys.readouterr().err
    assert "unknown configuration(s) no_such_thing" in err
    assert "instrument_10" in err  # the known names are listed
