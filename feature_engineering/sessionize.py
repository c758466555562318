"""Sessions by inactivity, for events whose log carries no session_id."""

from __future__ import annotations

from pyspark.sql import DataFrame, Window
from pyspark.sql import functions as F


def sessionize(events: DataFrame, gap_minutes: int) -> DataFrame:
    """Fill a null ``session_id`` with ``<user_id>-s<N>``; given session ids are kept.

    Among a user's events without a session id, ordered by (ts, event_id), a gap
    of more than ``gap_minutes`` starts a new session. N is the session's first
    event time in epoch seconds, not a counter, so the id of a session does not
    depend on which days a run reads: re-running one day reproduces it exactly
    (given the context days before it, see ``SilverConfig.context_days``).
    """
    missing = F.col("session_id").isNull()
    by_user = Window.partitionBy("user_id", missing).orderBy("ts", "event_id")
    so_far = by_user.rowsBetween(Window.unboundedPreceding, Window.currentRow)
    gap_seconds = gap_minutes * 60
    previous = F.lag("ts").over(by_user)
    starts = previous.isNull() | (
        F.unix_micros("ts") - F.unix_micros(previous) > gap_seconds * 1_000_000
    )
    marked = events.withColumn("_session_start", F.when(starts, F.col("ts")))
    session_start = F.last("_session_start", ignorenulls=True).over(so_far)
    derived = F.concat(F.col("user_id"), F.lit("-s"), F.unix_seconds(session_start).cast("string"))
    return marked.withColumn("session_id", F.coalesce("session_id", derived)).drop("_session_start")
