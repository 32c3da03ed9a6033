"""WebSocket echo load, lean enough that the server, not this client, is what is measured.

    python -m interop.benchmarks.ws_client ws://127.0.0.1:PORT/ [-c 10] [-w 1]
        (--duration 5 | -n 2000) [--size 32]

C connections each keep W text messages in flight (W = 1: send, wait for the echo, send
the next; W > 1: pipelined), either for a time (`--duration`) or for N messages each
(`-n`). Prints `<rate> msg/s (...)`: echoed messages per second over all connections,
timed from the moment every connection is open until the last echo of the last message
sent has arrived (after the time is up, no new message is sent and those in flight are
waited for, so every message counted was answered).

Why not a WebSocket library: the `websockets` client this harness used before spent more
CPU per message than the servers it measured, so every server looked alike at half a
core. This one speaks RFC 6455 on a raw asyncio Protocol (uvloop when installed), with
every frame built before the clock starts: a ring of K distinct payloads (a counter in
each, so a lost, repeated or reordered echo shows), each masked with its own random key,
and beside it the ring of the unmasked frames the server must send back. Sending M
messages is one `write` of a slice of the first ring; checking M echoes is one byte
comparison of what arrived with the slice of the second ring where they must be. Every
echo is checked, byte for byte, header included. Anything else (a ping, which is
answered; a frame split across reads; anything wrong, which fails the run) goes through a
plain frame parser. permessage-deflate is not offered: framing, not zlib, is measured.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import hashlib
import os
import time
from typing import cast
from urllib.parse import urlsplit

_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
RING = 4096  # distinct messages before the payloads repeat; at least the window


class EchoError(RuntimeError):
    pass


def _mask(payload: bytes, key: bytes) -> bytes:
    return bytes(b ^ key[i & 3] for i, b in enumerate(payload))


def _header(first: int, length: int, masked: bool) -> bytes:
    bit = 0x80 if masked else 0
    if length <= 125:
        return bytes((first, bit | length))
    if length <= 0xFFFF:
        return bytes((first, bit | 126)) + length.to_bytes(2, "big")
    return bytes((first, bit | 127)) + length.to_bytes(8, "big")


def client_frame(first: int, payload: bytes) -> bytes:
    """One masked frame, as a client must send it (RFC 6455 5.3)."""
    key = os.urandom(4)
    return _header(first, len(payload), True) + key + _mask(payload, key)


class Rings:
    """The K masked frames to send and the K frames the echo must be, each twice in a
    row, so that any run of up to K frames from any position is one slice."""

    def __init__(self, size: int) -> None:
        payloads = [(b"%d " % i).ljust(size, b"x")[:size] for i in range(RING)]
        if len(set(payloads)) != RING:
            raise SystemExit(f"--size {size} is too small to number {RING} distinct messages")
        sends = [client_frame(0x81, p) for p in payloads]
        echoes = [_header(0x81, size, False) + p for p in payloads]
        self.frame = len(sends[0])  # bytes per frame sent (all the same length)
        self.echo = len(echoes[0])  # bytes per echo frame
        self.send = b"".join(sends) * 2
        self.expect = b"".join(echoes) * 2
        self.payloads = payloads


class EchoConnection(asyncio.Protocol):
    def __init__(self, rings: Rings, host: str, path: str, window: int, count: int) -> None:
        self.rings = rings
        self.window = window
        self.count = count  # messages to send in all; 0: until stop()
        self.key = base64.b64encode(os.urandom(16))
        self.request = (
            b"GET %s HTTP/1.1\r\nHost: %s\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            b"Sec-WebSocket-Key: %s\r\nSec-WebSocket-Version: 13\r\n\r\n"
            % (path.encode(), host.encode(), self.key)
        )
        self.transport: asyncio.Transport | None = None
        self.buffer = b""
        self.opened = False
        self.stopping = False
        self.closing = False
        self.sent = 0
        self.echoed = 0
        loop = asyncio.get_running_loop()
        self.open_future: asyncio.Future[None] = loop.create_future()
        self.drained: asyncio.Future[None] = loop.create_future()
        self.closed: asyncio.Future[None] = loop.create_future()

    # --- asyncio.Protocol ----------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # a TCP connection's
        self.transport.write(self.request)

    def data_received(self, data: bytes) -> None:
        try:
            if self.opened:
                self._frames(data)
            else:
                self._handshake(data)
        except EchoError as exc:
            self._fail(exc)

    def connection_lost(self, exc: Exception | None) -> None:
        error = EchoError(f"connection lost after {self.echoed} echoes: {exc}")
        for future in (self.open_future, self.drained):
            if not future.done():
                future.set_exception(error)
        if not self.closed.done():
            if self.closing:
                self.closed.set_result(None)
            else:
                self.closed.set_exception(error)

    # --- the run -------------------------------------------------------------------------

    def start(self) -> None:
        self._send(self.window if not self.count else min(self.window, self.count))

    def stop(self) -> None:
        """Send nothing more; `drained` completes once every message sent is echoed."""
        self.stopping = True
        self._check_drained()

    def close(self) -> None:
        """The close handshake (code 1000); `closed` completes when the server ends TCP."""
        assert self.transport is not None
        self.closing = True
        self.transport.write(client_frame(0x88, (1000).to_bytes(2, "big")))

    # --- inside ----------------------------------------------------------------------------

    def _fail(self, exc: Exception) -> None:
        for future in (self.open_future, self.drained, self.closed):
            if not future.done():
                future.set_exception(exc)
        if self.transport is not None:
            self.transport.abort()

    def _handshake(self, data: bytes) -> None:
        self.buffer += data
        end = self.buffer.find(b"\r\n\r\n")
        if end < 0:
            if len(self.buffer) > 65536:
                raise EchoError("handshake response too long")
            return
        head, rest = self.buffer[:end].decode("latin-1"), self.buffer[end + 4 :]
        self.buffer = b""
        lines = head.split("\r\n")
        if not lines[0].startswith("HTTP/1.1 101"):
            raise EchoError(f"handshake refused: {lines[0]!r}")
        fields = {}
        for line in lines[1:]:
            name, _, value = line.partition(":")
            fields[name.strip().lower()] = value.strip()
        accept = base64.b64encode(hashlib.sha1(self.key + _GUID).digest()).decode()
        if fields.get("sec-websocket-accept") != accept:
            raise EchoError(f"wrong Sec-WebSocket-Accept: {fields!r}")
        if "sec-websocket-extensions" in fields:
            raise EchoError("the server accepted an extension that was not offered")
        self.opened = True
        self.open_future.set_result(None)
        if rest:
            self._frames(rest)

    def _send(self, n: int) -> None:
        if n <= 0:
            return
        rings = self.rings
        frame = rings.frame
        start = (self.sent % RING) * frame
        self.sent += n
        assert self.transport is not None
        self.transport.write(rings.send[start : start + n * frame])

    def _frames(self, data: bytes) -> None:
        if self.buffer:
            data = self.buffer + data
            self.buffer = b""
        rings = self.rings
        size = rings.echo
        whole = len(data) - len(data) % size
        # The common case: only whole echoes, each where it must be.
        if whole and not self.closing:
            start = (self.echoed % RING) * size
            echoes = whole // size
            if echoes <= self.sent - self.echoed and rings.expect.startswith(
                data if whole == len(data) else data[:whole], start
            ):
                self.echoed += echoes
                if whole != len(data):
                    self.buffer = data[whole:]
                self._answered(echoes)
                return
        self._parse(data)

    def _answered(self, n: int) -> None:
        if self.stopping:
            self._check_drained()
        elif self.count:
            self._send(min(n, self.count - self.sent))
            if self.sent == self.echoed == self.count:
                self.stopping = True
                self._check_drained()
        else:
            self._send(n)

    def _check_drained(self) -> None:
        if self.echoed == self.sent and not self.drained.done():
            self.drained.set_result(None)

    def _parse(self, data: bytes) -> None:
        """Frame by frame: echoes, pings (answered), the close; anything else fails."""
        pos = 0
        n = len(data)
        answered = 0
        while n - pos >= 2:
            first, second = data[pos], data[pos + 1]
            if second & 0x80:
                raise EchoError("the server masked a frame")
            length = second & 0x7F
            head = pos + 2
            if length == 126:
                if n - head < 2:
                    break
                length = int.from_bytes(data[head : head + 2], "big")
                head += 2
            elif length == 127:
                if n - head < 8:
                    break
                length = int.from_bytes(data[head : head + 8], "big")
                head += 8
            end = head + length
            if end > n:
                break
            payload = data[head:end]
            pos = end
            if first == 0x89:  # ping: answer with the same payload
                assert self.transport is not None
                self.transport.write(client_frame(0x8A, payload))
            elif first == 0x8A:  # an unsolicited pong: allowed, ignored
                pass
            elif first == 0x88:
                if not self.closing:
                    raise EchoError(f"the server closed: {payload!r}")
                if not self.closed.done():
                    self.closed.set_result(None)
            elif self.closing:
                pass  # the server may finish a message before it reads our close
            elif self.echoed >= self.sent:
                raise EchoError(f"an echo of nothing sent: {first:#x} {payload[:40]!r}")
            else:
                want = self.rings.payloads[self.echoed % RING]
                if first != 0x81 or payload != want:
                    raise EchoError(
                        f"echo {self.echoed}: got {first:#x} {payload[:40]!r}, want {want!r}"
                    )
                self.echoed += 1
                answered += 1
        self.buffer = data[pos:]
        if answered:
            self._answered(answered)


async def _watch(conns: list[EchoConnection], stall: float) -> None:
    """Fail when echoes are owed and none has come for `stall` seconds: a lost echo
    (one message in flight waits for it forever) or a server that stopped answering."""
    last, quiet = -1, 0.0
    while True:
        await asyncio.sleep(0.25)
        echoed = sum(c.echoed for c in conns)
        owed = any(c.sent > c.echoed for c in conns)
        quiet = quiet + 0.25 if echoed == last and owed else 0.0
        last = echoed
        if quiet >= stall:
            error = EchoError(f"no echo for {stall:g}s, {echoed} so far: one was lost")
            for conn in conns:
                conn._fail(error)
            return


async def run(
    url: str,
    connections: int,
    window: int,
    messages: int,
    duration: float,
    size: int,
    stall: float = 10.0,
) -> tuple[float, int, float]:
    """(messages per second, messages, client CPU in cores while timed); raises if any
    echo is missing, extra or wrong."""
    parts = urlsplit(url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 80
    path = parts.path or "/"
    rings = Rings(size)
    if window > RING:
        raise SystemExit(f"--window is at most {RING}")
    loop = asyncio.get_running_loop()
    conns: list[EchoConnection] = []
    for _ in range(connections):
        _, conn = await loop.create_connection(
            lambda: EchoConnection(rings, host, path, window, messages), host, port
        )
        conns.append(conn)
    try:
        await asyncio.wait_for(asyncio.gather(*(c.open_future for c in conns)), 30)
        cpu = time.process_time()
        started = time.monotonic()
        watchdog = asyncio.ensure_future(_watch(conns, stall))
        try:
            for conn in conns:
                conn.start()
            if not messages:
                await asyncio.sleep(duration)
                for conn in conns:
                    conn.stop()
            await asyncio.gather(*(c.drained for c in conns))
        finally:
            watchdog.cancel()
        elapsed = time.monotonic() - started
        cpu = time.process_time() - cpu
        for conn in conns:
            conn.close()
        await asyncio.wait_for(asyncio.gather(*(c.closed for c in conns)), 10)
    finally:
        for conn in conns:
            if conn.transport is not None:
                conn.transport.close()
    total = sum(c.echoed for c in conns)
    return total / elapsed, total, cpu / elapsed


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("url")
    parser.add_argument("-c", "--connections", type=int, default=10)
    parser.add_argument("-w", "--window", type=int, default=1, help="messages in flight each")
    how = parser.add_mutually_exclusive_group(required=True)
    how.add_argument("-n", "--messages", type=int, default=0, help="per connection")
    how.add_argument("--duration", type=float, default=0.0, help="seconds of load")
    parser.add_argument("--size", type=int, default=32, help="bytes of text per message")
    args = parser.parse_args()
    try:
        import uvloop  # type: ignore[import-not-found,unused-ignore]
    except ImportError:
        runner = asyncio.run
    else:
        runner = uvloop.run
    rate, total, cores = runner(
        run(args.url, args.connections, args.window, args.messages, args.duration, args.size)
    )
    print(f"{rate:.1f} msg/s ({total} messages, client CPU {cores:.2f} cores)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
