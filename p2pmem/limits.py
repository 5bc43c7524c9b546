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
# The configuration file (p2pmem.toml): a real one is well under 1 KiB; a list
# (bootstrap peers) holds at most this many items, from the file, a variable
# or repeated flags.
MAX_CONFIG_BYTES = 64 * 1024
MAX_CONFIG_LIST = 64

# --- log lines (p2pmem/node/logs.py) ---------------------------------------
# The same event about the same peer or address is written at most
# LOG_REPEAT_LINES times a window; the rest become one "suppressed K similar
# lines" line when the window ends, so a peer that fails in a loop cannot fill
# the disk or drown the other lines. Keys remembered at once (least recently
# seen dropped), and the characters of a message or field written (a peer's
# words reach some lines).
LOG_REPEAT_LINES = 10
LOG_REPEAT_WINDOW_S = 60.0
LOG_REPEAT_KEYS = 1024
LOG_FIELD_CHARS = 1024

# --- transport -----------------------------------------------------------
MAX_FRAME = 65535  # one Noise message, the 2-byte length prefix's maximum
MAX_MESSAGE = 1 << 20  # one reassembled wire message
HANDSHAKE_TIMEOUT_S = 10.0
MAX_RECONCILE_MESSAGE = 512 * 1024
MAX_RECORDS_PER_MESSAGE = 256
# Bytes of records we put in one records message: the rest of MAX_MESSAGE is
# headroom for the array and byte-string heads (5 bytes per record at most).
RECORDS_MESSAGE_BYTES = MAX_MESSAGE - 4096
MAX_HANDSHAKE_PROOF = 512  # the identity proof in a Noise handshake (~110 bytes used)
# --- wire messages (p2pmem/protocol/wire.py) --------------------------------
MAX_INTEREST_AUTHORS = 4096  # authors named in one hello or interest
MAX_FEATURES = 32  # feature names in a hello
MAX_FEATURE = 64  # characters of one feature name
MAX_BYE_REASON = 256  # characters of a goodbye's reason (longer ones we cut)

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
# How long a client of the control socket waits for an ask beyond its query
# timeout: the asker's merge of megabytes of answers takes seconds on a busy machine.
ASK_RANK_GRACE_S = 30.0
MAX_QUERY_AUTHORS = 16  # authors a query may name
MAX_QUERY_MESSAGE = 4096  # a query is small (text, topics, authors); anything larger is hostile
# Records a relay passes back for one query, and distinct records the asker
# keeps for one of its own: enough for every node within reach to fill a few
# answers, small enough that one query cannot make a node carry an unbounded
# volume (amplification); the asker's bytes are bounded below too.
MAX_RELAYED_RECORDS = MAX_QUERY_HITS * 8
MAX_COLLECTED_RECORDS = MAX_QUERY_HITS * 8
# How long the results of a finished own query stay readable if the node never
# calls finish().
QUERY_RESULT_LINGER_S = 30.0
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

# --- what one peer can cause (issue #11: every resource bounded) -----------
# Each limit below is counted under its own name in `status --json`
# ("limits": {name: times it bit}) whenever it refuses, delays or drops
# something. docs/threat-model.md lists each with the test that proves it.

# Bytes queued to one peer. Above MAX_SEND_QUEUE we stop reading that peer
# (a peer that does not read cannot make us buffer: it stalls itself); below
# SEND_QUEUE_LOW optional traffic (pushes) resumes. 4 MiB is four maximal wire
# messages: one reconciliation reply (512 KiB) plus a full records message
# always fit, so an honest bulk sync never waits on the mark, while 16 peers
# at the mark cost 64 MiB at worst.
MAX_SEND_QUEUE = 4 * 1024 * 1024
SEND_QUEUE_LOW = 1024 * 1024

# Records a peer made us owe it (our `have`, found by reconciliation), waiting
# to be pushed. One reconciliation reply can name ~16,000 ids; past this many
# we stop reading the peer until they drain (about 3 MiB of ids and set
# entries).
MAX_PUSH_PENDING = 20_000
# Bytes of records pushed to one peer per second (token bucket). The ingest of
# a receiver is ~5-10 MB/s per core, so an honest sync is not slowed; an
# attacker that asks again and again costs us at most this much disk reading.
PUSH_BYTES_PER_S = 8 * 1024 * 1024
PUSH_BURST_BYTES = 16 * 1024 * 1024
# An operator may lower the rate (`serve --push-rate`, p2pmem.toml push_rate)
# on a metered or slow uplink, down to this: two of the largest records a
# second, so a sync slows down but never stalls. Raising it past
# PUSH_BYTES_PER_S would widen what one peer can make us read from disk.
MIN_PUSH_BYTES_PER_S = 256 * 1024

# Reconciliations a peer may open (token bucket). Honest peers open
# one per resync (30 s) and one per interest change (at most one per
# INTEREST_MIN_INTERVAL_S); a peer above this is closed.
RECON_STARTS_PER_S = 0.5
RECON_STARTS_BURST = 10
# Interest messages a peer may send (token bucket); each one may make us build
# a new reconciliation index. Honest nodes send at most one per
# INTEREST_MIN_INTERVAL_S (changes are coalesced).
INTEREST_PER_S = 0.5
INTEREST_BURST = 8
INTEREST_MIN_INTERVAL_S = 5.0

# Bytes of received records one peer may have waiting in the ingest pipeline
# (verification and storage run beside the event loop); past this we stop
# reading that peer until they are stored. Two maximal records messages.
MAX_INGEST_PENDING = 2 * MAX_MESSAGE
# The serving node's ingest pipeline (p2pmem/node/ingest.py): records per task
# of a verification worker (~5 ms of work, so IPC stays small beside it); jobs
# (one records message each, <= MAX_RECORDS_PER_MESSAGE) whose chunks are in
# the workers, and verified jobs waiting for the writer (enough to keep every
# worker busy through a commit); records the writer stores in one transaction.
INGEST_CHUNK = 64
# A job smaller than this is verified in the writer thread instead: a task's
# round trip to a worker costs more than the check itself (one record: 107 us
# in the worker plus 80 us in the node, against 78 us in line; 64: 77 + 3).
# Eager pushes of single records, the steady state of gossip, are such jobs.
INGEST_POOL_MIN_RECORDS = 16
INGEST_VERIFYING_JOBS = 16
INGEST_VERIFIED_JOBS = 16
INGEST_GROUP_RECORDS = 4096

# --- connections ---------------------------------------------------------
# Connections whose handshake (Noise and hello) is not complete. A stalled
# handshake holds a descriptor for HANDSHAKE_TIMEOUT_S; these caps keep
# descriptors for honest peers whatever strangers do. Past the per-address cap
# the newcomer is refused; past the total cap the oldest pending handshake is
# dropped (an honest handshake completes in one round trip, so a flood of
# stalled ones cannot keep it out).
MAX_PENDING_HANDSHAKES = 64
MAX_PENDING_PER_HOST = 8
# New incoming connections accepted per second from one address, and in total
# (token buckets): a Noise handshake costs ~0.3 ms of X25519 and Ed25519 work.
HANDSHAKES_PER_HOST_PER_S = 10.0
HANDSHAKES_PER_HOST_BURST = 20
HANDSHAKES_PER_S = 100.0
HANDSHAKES_BURST = 200
# A newcomer is let in when every slot is taken by evicting a random incoming
# peer (HyParView's rule), at most once per this many seconds, so churning
# fresh identities cannot flush honest peers out faster than they reconnect.
EVICT_INTERVAL_S = 10.0

# --- address book ----------------------------------------------------------
# Addresses learnt from others (peer exchange, hello) are unverified until a
# handshake there succeeds. Unverified ones are bounded in total and per
# source, and dropped after UNVERIFIED_MAX_FAILURES failed dials; verified
# ones after VERIFIED_MAX_FAILURES (bootstrap addresses are never dropped).
MAX_UNVERIFIED_ADDRESSES = 256
MAX_ADDRESSES_PER_SOURCE = 32
UNVERIFIED_MAX_FAILURES = 1
VERIFIED_MAX_FAILURES = 8
# Outgoing dials per second (token bucket), and dial-failure log lines per
# minute (the rest are counted, not logged).
DIALS_PER_S = 2.0
DIALS_BURST = 8
DIAL_LOGS_PER_S = 0.2
DIAL_LOGS_BURST = 10

# --- replication state per node ----------------------------------------------
# Reconciliation indexes kept, one per distinct shared scope (our interest
# meet a peer's): interests rarely differ much, and one costs ~40 bytes a key.
MAX_CACHED_INDEXES = 64
# Reconciliations a peer may have open with us at once (an honest one runs
# one, and a second only while a late reply of the first is in flight).
MAX_CONCURRENT_RECONS = 2
# Parsed Ed25519 public keys kept by the record decoder (a node sees the
# same authors again and again; parsing is a fair share of a verification).
PUBLIC_KEY_CACHE = 4096

# --- CPU per message ---------------------------------------------------------
# Our reconciliation messages are cut at this size (a local choice: a long
# answer continues in the next round), so one 7-byte "send me everything"
# costs us ~2,000 ids of work, not max_message's ~16,000.
RECON_REPLY_BYTES = 64 * 1024
# Work done for one connection before the shell lets other tasks run: a cheap
# message costs 1, one that makes us read the store or reconcile (Recon,
# Interest, Query) costs EXPENSIVE_MESSAGE_COST. What a read holds
# beyond this waits (and the peer is not read meanwhile).
WORK_PER_TURN = 16
EXPENSIVE_MESSAGE_COST = 8
# Records messages (<= MAX_RECORDS_PER_MESSAGE each) pushed to one peer per
# turn: enough to keep a loopback socket busy while the writer drains, small
# enough (~20-40 ms of store reads and encryption) not to stall the loop.
PUSH_BATCHES_PER_TURN = 4

# --- records that replicate everywhere (stranger quotas) ---------------------
# Profiles, follows, endorsements and sealed messages go to every node, so
# any identity (and identities are free) could fill every disk. Each author
# may hold at most this many of each kind on any node; past it the oldest by
# (ts, id) are evicted (p2pmem/model/quota.py). The rule depends only on the records,
# never on who follows whom or on arrival order, so honest nodes keep the same
# set and reconciliation does not carry evicted records back and forth.
# A stranger thus costs each node at most ~80 KB (profiles) + 512 follows
# (~90 KB) + 256 endorsements (~55 KB) + 256 KiB of messages: under 0.5 MB.
MAX_PROFILES_PER_AUTHOR = 4  # last writer wins: older profiles say nothing; a few spare
MAX_FOLLOWS_PER_AUTHOR = 512
MAX_ENDORSEMENTS_PER_AUTHOR = 256
MAX_MESSAGES_PER_SENDER = 16
MAX_MESSAGE_BYTES_PER_SENDER = 256 * 1024

# --- relaying messages to one recipient (a rate, not a storage rule) ---------
# Sealed messages go to every node, and the quotas above bound what each
# sender may have stored, not how fast: a sender's newer messages evict its
# older ones, and Sybil senders each get a quota, so a flood aimed at one
# recipient could make every node relay it without end. Each node therefore
# sends the messages addressed to one recipient, to all its peers together
# (eager pushes and reconciliation pushes alike), within a token bucket of
# bytes. It is a local rate, not a rule on what is stored, so nodes need not
# agree on it and the quotas stay confluent: a message over the budget is
# only delayed (the next reconciliation, every RESYNC_S, carries it), never
# dropped. Messages sent by or addressed to this node's own agent are exempt.
# Sizes: the largest honest message is a ~67 KiB record (MAX_BODY of text,
# sealed), and an eager push sends it to up to MAX_ACTIVE_PEERS peers, about
# 1.05 MiB; the 2 MiB burst holds two of those at once, or ~30 typical 4 KiB
# messages to every peer. 64 KiB/s sustained is ~4 KiB/s of distinct message
# bytes to one recipient fanned out to 16 peers (~14 MiB an hour): far above
# any conversation, while a flood costs each node at most this per recipient.
MESSAGE_RELAY_BYTES_PER_S = 64 * 1024
MESSAGE_RELAY_BURST_BYTES = 2 * 1024 * 1024
# Recipients whose relay bucket is kept (least recently used evicted: a
# forgotten bucket starts full again, so a flood must address this many other
# recipients to reset one; ~1 MB of buckets at most).
MAX_RELAY_RECIPIENTS = 4096
