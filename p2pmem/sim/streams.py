"""The simulated shell's side of a connection, as the trio node's writer and
reader tasks do it (p2pmem/node/shell.py): a write waits in the send buffer
and leaves at the link's rate while the peer's window has room, and the core
hears ``sent``; what arrives is read in order, up to READ_SIZE bytes a read,
a turn of the core's backlog at a time (``resume``), and not at all while the
core is under backpressure. The link model is p2pmem/sim/links.py.

:class:`Streams` is mixed into :class:`p2pmem.sim.network.SimNetwork`, whose
event loop (``_push``, ``_apply``, ``partitioned``, ``_delay``,
``_forget_conn``) and counters it uses.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from p2pmem.sim.links import FIN, RST, SimLink
from p2pmem.sim.schedule import DELIVER, LOST, READ, READ_SIZE, TX

if TYPE_CHECKING:
    from p2pmem.sim.network import SimNetwork, SimNode


class Streams:
    """Writes, the wire and reads of every simulated connection."""

    def _write(self: SimNetwork, node: SimNode, cid: int, data: bytes) -> None:
        end = self._open_end(node, cid)
        if end is None:
            return
        conn, side = end
        node.bytes_sent += len(data)
        conn.outq[side].append(data)
        if not conn.tx_busy[side]:
            self._transmit(conn, side)


    def _transmit(self: SimNetwork, conn: SimLink, side: int) -> None:
        """Start the next write of ``side``'s send buffer, unless the peer's
        receive window is full (its reads start it again)."""
        queue = conn.outq[side]
        if not queue or (queue[0] is not FIN and conn.unread[1 - side] >= self.link.window_bytes):
            conn.tx_busy[side] = False
            return
        item = queue.popleft()
        conn.tx_busy[side] = True
        size = len(item) if isinstance(item, bytes) else 0
        self._push(self.now_us + self.link.transmit_us(size), TX, (conn, side, item))


    def _on_tx(self: SimNetwork, conn: SimLink, side: int, item: object) -> None:
        """A write left ``side``'s send buffer: on the wire, and the core is told."""
        node, core = conn.nodes[side], conn.cores[side]
        if node.core is not core or core is None or not conn.tx_busy[side]:
            return  # the sender crashed, or a reset emptied its buffer meanwhile
        if isinstance(item, bytes):
            conn.unread[1 - side] += len(item)
            self._send_item(conn, side, item)
            self.counts["sent"] += 1
            core.sent(conn.cid, len(item), self.wall, wall_ms=self.wall_ms)
        else:
            self._send_item(conn, side, item)
        self._transmit(conn, side)
        if isinstance(item, bytes):
            self._apply(node)


    def _send_item(self: SimNetwork, conn: SimLink, from_side: int, item: object) -> None:
        """Put bytes, a FIN or a RST on the wire towards the other side."""
        dest = 1 - from_side
        if not conn.open[dest]:
            return
        if item is RST:
            if not self.partitioned(conn.nodes[0].index, conn.nodes[1].index):
                self._push(self.now_us + self._delay(conn.rng, conn.base_us), DELIVER, (conn, dest, -1, RST))
            return
        if item is not FIN and self.link.reset and conn.rng.random() < self.link.reset:
            # Lost: the stream cannot go on without it. Both ends see a reset.
            self.close_reasons["lost message (reset)"] = self.close_reasons.get("lost message (reset)", 0) + 1
            conn.drop_queues(from_side)
            conn.open[from_side] = False
            self._send_item(conn, from_side, RST)
            self._push(self.now_us, LOST, (conn, from_side))
            return
        seq = conn.send_seq[dest]
        conn.send_seq[dest] += 1
        self._schedule_item(conn, dest, seq, item)


    def _schedule_item(self: SimNetwork, conn: SimLink, dest: int, seq: int, item: object) -> None:
        self._push(self.now_us + self._delay(conn.rng, conn.base_us), DELIVER, (conn, dest, seq, item))


    def _on_deliver(self: SimNetwork, conn: SimLink, dest: int, seq: int, item: object) -> None:
        """Bytes reach ``dest``'s end: in order into its inbox, then read."""
        node = conn.nodes[dest]
        core = conn.cores[dest]
        if not conn.open[dest] or node.core is not core or core is None:
            if isinstance(item, bytes):  # a closed socket takes no more: the sender is not held up
                conn.unread[dest] -= len(item)
                self._credit(conn, 1 - dest)
            return
        if item is RST:
            conn.open[dest] = False
            conn.drop_queues(dest)
            node.stalled.pop(conn.cid, None)
            core.connection_lost(conn.cid, self.wall)
            self._apply(node)
            self._forget_conn(conn)
            return
        if self.partitioned(conn.nodes[0].index, conn.nodes[1].index):
            conn.held[dest].append((seq, item))
            return
        buffer = conn.reorder[dest]
        buffer[seq] = item
        inbox = conn.inbox[dest]
        while conn.next_seq[dest] in buffer:
            inbox.append(buffer.pop(conn.next_seq[dest]))
            conn.next_seq[dest] += 1
        if not conn.read_scheduled[dest]:
            self._read(conn, dest)


    def _schedule_read(self: SimNetwork, conn: SimLink, side: int) -> None:
        if not conn.read_scheduled[side]:
            conn.read_scheduled[side] = True
            self._push(self.now_us, READ, (conn, side))


    def _on_read(self: SimNetwork, conn: SimLink, side: int) -> None:
        """The reader's next turn: a turn of the core's backlog first (the
        shell yields between turns, as trio.sleep(0) does), then reads."""
        conn.read_scheduled[side] = False
        node, core = conn.nodes[side], conn.cores[side]
        if node.core is not core or core is None or not conn.open[side]:
            return
        if core.has_backlog(conn.cid):
            self.counts["resume"] += 1
            core.resume(conn.cid, self.wall, wall_ms=self.wall_ms)
            self._apply(node)
        self._read(conn, side)


    def _read(self: SimNetwork, conn: SimLink, side: int) -> None:
        """Hand ``side``'s core what arrived, up to READ_SIZE bytes a read
        (at least one whole write), while it reads: a backlog waits for the next turn, backpressure until the core
        is readable again (:meth:`_apply` looks)."""
        node, core = conn.nodes[side], conn.cores[side]
        assert core is not None
        cid = conn.cid
        inbox = conn.inbox[side]
        while conn.open[side] and node.core is core:
            if core.has_backlog(cid):
                self._schedule_read(conn, side)
                break
            if not inbox:
                break
            if not core.readable(cid):
                self.counts["stalls"] += 1
                node.stalled[cid] = conn
                break
            piece = inbox.popleft()
            if piece is FIN:
                conn.open[side] = False
                core.connection_lost(cid, self.wall)
                self._apply(node)
                break
            assert isinstance(piece, bytes)
            if inbox and isinstance(inbox[0], bytes) and len(piece) + len(inbox[0]) <= READ_SIZE:
                pieces = [piece]  # one read takes what arrived, as receive_some(READ_SIZE) does
                size = len(piece)
                while inbox and isinstance(inbox[0], bytes) and size + len(inbox[0]) <= READ_SIZE:
                    pieces.append(inbox.popleft())  # type: ignore[arg-type]
                    size += len(pieces[-1])
                piece = b"".join(pieces)
            conn.unread[side] -= len(piece)
            node.bytes_received += len(piece)
            self._wire.update(b"%d %d %d:" % (cid, side, len(piece)) + piece)
            core.data_received(cid, piece, self.wall, wall_ms=self.wall_ms)
            self._apply(node)
            self._credit(conn, 1 - side)
        self._forget_conn(conn)


    def _credit(self: SimNetwork, conn: SimLink, sender: int) -> None:
        """Room in the window again: the sender's next write may leave."""
        if not conn.tx_busy[sender] and conn.outq[sender]:
            self._transmit(conn, sender)
