"""The closed set of log events, and the one call that logs one.

Every log line of p2pmem names an :class:`LogEvent`; its fields (``peer``,
``addr``, ``reason``...) travel beside the message, so the JSON format gives
them as keys and the text format as ``key=value``. Like ``errors`` and
``limits`` this module is pure (only the stdlib ``logging``): the sans-IO
core logs through it too. How lines are written (timestamps, text or JSON,
rate limits) is p2pmem/node/logs.py. docs/operations.md ("Logs") lists the
events; tests/test_logs.py checks that the list and this enum agree.
"""

from __future__ import annotations

import enum
import logging
from typing import Any


class LogEvent(enum.StrEnum):
    # the node's life
    NODE_STARTED = "node_started"  # addr, peer (our own id)
    NODE_STOPPING = "node_stopping"  # signal
    NODE_STOPPED = "node_stopped"
    SERVE_FAILED = "serve_failed"  # error: why the node could not run
    # connections and peers
    DIAL_FAILED = "dial_failed"  # addr, reason
    PEER_READY = "peer_ready"  # peer, addr
    PEER_CLOSED = "peer_closed"  # conn, addr, reason, detail
    # queries
    QUERY_DROPPED = "query_dropped"  # reason (debug)
    # the ingest pipeline and the search index
    INGEST_WORKERS = "ingest_workers"  # error: verification falls back to the writer thread
    INGEST_FAILED = "ingest_failed"  # error: received records could not be stored
    INDEX_FAILED = "index_failed"  # error
    # local interfaces
    CONTROL_FAILED = "control_failed"  # a control request hit a bug (with the trace)
    METRICS_STARTED = "metrics_started"  # addr: the Prometheus endpoint listens
    METRICS_FAILED = "metrics_failed"  # a metrics snapshot hit a bug (with the trace)
    MCP_STARTED = "mcp_started"  # peer (our id), session
    MCP_STORE_BROKEN = "mcp_store_broken"  # error
    TOOL_FAILED = "tool_failed"  # tool (with the trace)
    # the log itself
    LOG_SUPPRESSED = "log_suppressed"  # of, count (and the suppressed lines' key)
    OTHER = "other"  # a line of another library (logger)


# Fields an event's line may carry, in the order the text format shows them.
FIELDS = ("peer", "addr", "conn", "reason", "detail", "signal", "session", "tool", "error",
          "of", "count", "logger")


def log_event(logger: logging.Logger, level: int, event: LogEvent, message: str, /, **fields: Any) -> None:
    """Log ``message`` as ``event`` with ``fields`` (each one of FIELDS).
    ``exc_info=True`` among them attaches the current exception."""
    exc_info = fields.pop("exc_info", False)
    if logger.isEnabledFor(level):
        logger.log(level, "%s", message, exc_info=exc_info, stacklevel=2,
                   extra={"event": event, "fields": fields})
