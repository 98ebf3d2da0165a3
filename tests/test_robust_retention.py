"""History retention against a wrong clock: real SQLite on disk, the writer thread with an injected clock.

A daemon started with its clock 400 days ahead used to delete the whole tag history at its first
prune (everything was "older than 90 days"). The rule is now bounded (``sinks.history.plan_prune``).
"""

from __future__ import annotations

import logging
import sqlite3
import time
from contextlib import closing

from _helpers_dashboard import changed, state
from test_history import wait_for

from genre_stream.history.reader import HistoryReader
from genre_stream.sinks.history import History, HistoryConfig, plan_prune, prune

DAY = 86400.0
NOW = 1_790_000_000.0  # the true time of these tests (fixed: the clocks are injected)
RETENTION_DAYS = 90


def record(tmp_path, clock: float, stamps: list[float], **config) -> History:
    """Write one state per stamp with a writer whose wall clock says ``clock``; returns the closed writer."""
    history = History(HistoryConfig.in_state_dir(tmp_path, retention_days=RETENTION_DAYS, **config), clock=lambda: clock)
    history.start()
    for ts in stamps:
        history.publish(state("radio", "rock", 0.8, ts))
    history.close()
    return history


def stored(tmp_path) -> list[float]:
    reader = HistoryReader(tmp_path / "history.sqlite")
    return sorted(parse(s["timestamp"]) for s in reader.states(since=0, until=NOW + 1000 * DAY))


def parse(stamp: str) -> float:
    from genre_stream.sinks.messages import parse_payload_time

    return parse_payload_time(stamp)


def test_a_clock_400_days_ahead_does_not_wipe_the_history(tmp_path, caplog) -> None:
    # 60 days of history recorded with a right clock, one state an hour.
    real = [NOW - 60 * DAY + i * 3600.0 for i in range(60 * 24)]
    assert record(tmp_path, NOW, real).counters().pruned == 0
    # Restarted with the clock 400 days ahead: it prunes at start, then records (with the wrong clock) and
    # prunes again (every 0.2 s here), now with entries stamped 400 days ahead in the database.
    ahead = NOW + 400 * DAY
    caplog.set_level(logging.ERROR, logger="genre_stream.sinks.history")
    wrong = History(HistoryConfig.in_state_dir(tmp_path, retention_days=RETENTION_DAYS, prune_interval_seconds=0.2),
                    clock=lambda: ahead)
    wrong.start()
    for i in range(10):
        wrong.publish(state("radio", "jazz", 0.7, ahead + 5.0 * i))
    wrong.publish(changed("radio", "rock", "jazz", ahead))
    assert wait_for(lambda: wrong.counters().written == 11 and wrong.counters().prunes_withheld >= 2), wrong.counters()
    wrong.close()
    assert wrong.counters().pruned == 0
    assert stored(tmp_path) == real + [ahead + 5.0 * i for i in range(10)]  # nothing of the real history went
    warnings = [r.getMessage() for r in caplog.records if "looks wrong" in r.getMessage()]
    assert len(warnings) == 1, caplog.text  # said once, not at every pass
    assert "would delete 1440 of 1451 entries" in warnings[0] and "nothing was recorded for 400 days" in warnings[0]


def test_the_clock_put_right_again_prunes_normally(tmp_path) -> None:
    """After the wrong clock is corrected, the real entries older than the retention go as usual; the entries
    the wrong clock stamped in the future are kept (they are not older than anything)."""
    real = [NOW - 100.5 * DAY + i * DAY for i in range(100)]  # one a day for 100 days: 11 older than 90 days
    future = [NOW + 400 * DAY + i for i in range(5)]
    record(tmp_path, NOW + 400 * DAY, real + future, prune_interval_seconds=3600)
    history = record(tmp_path, NOW, [NOW])  # the right clock again
    assert history.counters().pruned == 11 and history.counters().prunes_withheld == 0
    assert stored(tmp_path) == real[11:] + [NOW] + future


def test_prune_rule_bounds(tmp_path) -> None:
    """plan_prune on a real database: continuous histories prune as the clock says; after a gap longer than
    the retention, old entries go only once the new ones outnumber them; a clock ahead by less than the
    retention costs at most that much."""
    path = tmp_path / "h.sqlite"
    History(HistoryConfig(path))._connect().close()  # the schema
    retention = RETENTION_DAYS * DAY

    def plan(stamps: list[float], now: float):
        with closing(sqlite3.connect(path)) as conn:
            conn.execute("DELETE FROM states")
            conn.executemany("INSERT INTO states (source, ts, state, genre, confidence, payload) "
                             "VALUES ('radio', ?, 'music', 'rock', 0.8, '{}')", [(t,) for t in stamps])
            conn.commit()
            return plan_prune(conn, now, retention)

    hourly = [NOW - 120 * DAY + i * 3600.0 for i in range(120 * 24 + 1)]  # up to NOW
    assert plan(hourly, NOW).cutoff == NOW - retention  # the usual case: by the clock
    assert plan(hourly, NOW + 400 * DAY).cutoff == NOW - retention  # clock ahead, nothing new: by the newest entry
    # a clock 30 days ahead that has recorded a day: 30 days more than due go, no more
    ahead = plan(hourly + [NOW + 30 * DAY + i * 3600.0 for i in range(24)], NOW + 31 * DAY)
    assert ahead.cutoff == NOW + 30 * DAY + 23 * 3600.0 - retention and ahead.withheld is None
    # entries stamped by a clock 400 days ahead: withheld while the old entries outnumber them...
    wrong = hourly + [NOW + 400 * DAY + i * 3600.0 for i in range(24)]
    withheld = plan(wrong, NOW + 401 * DAY)
    assert withheld.cutoff is None and "looks wrong" in (withheld.withheld or "")
    # ...and a daemon off for 400 days that has since recorded more than it had: the old entries go
    back = [NOW - 10 * DAY + i * 3600.0 for i in range(240)] + [NOW + 400 * DAY + i * 600.0 for i in range(300)]
    assert plan(back, NOW + 403 * DAY).cutoff == max(back) - retention
    assert plan([], NOW).cutoff is None
    with closing(sqlite3.connect(path)) as conn:
        assert plan_prune(conn, NOW, 0).cutoff is None  # retention 0 keeps everything
        assert prune(conn, NOW) == 0


def test_real_clock_default_still_prunes(tmp_path) -> None:
    """Without an injected clock the writer uses time.time(), as before."""
    now = time.time()
    history = History(HistoryConfig.in_state_dir(tmp_path, retention_days=0))  # keeps everything
    history.start()
    for ts in [now - 199.5 * DAY + i * DAY for i in range(199)] + [now]:  # 110 older than 90 days
        history.publish(state("radio", "rock", 0.8, ts))
    history.close()
    again = History(HistoryConfig.in_state_dir(tmp_path, retention_days=RETENTION_DAYS))
    again.start()
    assert wait_for(lambda: again.counters().pruned == 110), again.counters()
    again.close()
