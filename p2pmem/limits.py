"""Every size and rate limit of p2pmem, in one place.

A limit that is not here does not exist: records, frames, queries, CLI input
and peers are all checked against these numbers, so a reviewer can see the
whole attack surface of "too big" at a glance.
"""

from __future__ import annotations

# --- records -------------------------------------------------------------
MAX_RECORD = 128 * 1024  # encoded COSE_Sign1 bytes
MAX_BODY = 64 * 1024  # memory text, UTF-8 bytes
MAX_TOPICS = 16
MAX_TOPIC = 64  # bytes per topic
MAX_REFS = 64  # ids a record may supersede or retract
MAX_SESSION = 128  # bytes
MAX_META = 16  # entries in the metadata map
MAX_META_KEY = 64
MAX_META_VALUE = 1024
MAX_NAME = 128  # profile name
MAX_DESCRIPTION = 2048
MAX_SKILLS = 32
MAX_SKILL = 64
MAX_ADDRESSES = 8
MAX_ADDRESS = 256
MAX_GRAPH_NAME = 1024  # an entity name, entity type or relation type, UTF-8 bytes
MAX_MESSAGE_CIPHERTEXT = MAX_BODY + 1024  # sealed message body
MAX_FUTURE_SKEW_MS = 10 * 60 * 1000  # records stamped further ahead are refused

# --- CLI and files -------------------------------------------------------
MAX_IMPORT_LINE = 4 * MAX_RECORD  # a JSON line of an export (base64 + fields)
MAX_BATCH_LINE = 4 * MAX_BODY  # a JSON line of `remember --batch`
MAX_RECALL_LIMIT = 1000
MAX_QUERY_TEXT = 1024

# --- transport -----------------------------------------------------------
MAX_FRAME = 65535  # one Noise message, the 2-byte length prefix's maximum
MAX_MESSAGE = 1 << 20  # one reassembled wire message
HANDSHAKE_TIMEOUT_S = 10.0
MAX_RECONCILE_MESSAGE = 512 * 1024
MAX_RECORDS_PER_MESSAGE = 256

# --- membership ----------------------------------------------------------
MAX_ACTIVE_PEERS = 16
MAX_KNOWN_ADDRESSES = 1024
MAX_PEER_EXCHANGE = 32  # addresses in one peer-exchange message

# --- queries -------------------------------------------------------------
DEFAULT_TTL = 4
MAX_TTL = 8
MAX_QUERY_HITS = 100  # hits one node returns for one query
SEEN_QUERY_CACHE = 10_000
QUERY_RATE_PER_PEER = 20.0  # queries per second, token bucket
QUERY_BURST_PER_PEER = 40
MAX_QUERY_TIMEOUT_S = 60.0
# Bytes of verified records the asker holds for one query while it waits. An
# answer returns at most MAX_RECALL_LIMIT memories and usually 10; 8 MiB holds
# thousands of typical memories (~1 KiB) or 64 of the largest records to rank,
# and caps what hostile answers can make the asker hold per query (it was
# 800 x 128 KiB = 100 MiB). Records past it are dropped unverified and counted
# in status (queries.records_over_budget).
MAX_QUERY_RESULT_BYTES = 8 * 1024 * 1024

# --- control socket ------------------------------------------------------
MAX_CONTROL_REQUEST = 4 * MAX_RECORD  # one request line; the largest real one is an ask (<2 KiB)
# Requests are flat (an object holding a list of topics: depth 2); the depth
# is checked before json.loads, whose recursion a deeply nested line (100,000
# brackets fit in the size above) would otherwise drive into RecursionError.
MAX_CONTROL_DEPTH = 8
# Control connections served at once. Each may hold an `ask` with its result
# budget (MAX_QUERY_RESULT_BYTES) for up to MAX_QUERY_TIMEOUT_S, so this bounds
# what local clients can make the node hold: 32 x 8 MiB. More wait-free get a
# "busy" error; the CLI and an MCP server use one connection per request.
MAX_CONTROL_CLIENTS = 32
