"""The demo app `multiplex demo` serves: a plain ASGI 3 app with no framework.

It is meant to be read. Every route is a small coroutine taking the ASGI `scope`,
`receive` and `send`, and each shows one thing worth seeing in a browser's network
panel or with curl:

    GET  /                  a page that says which HTTP version you are using and
                            loads a dozen tiles at once (multiplexing on HTTP/2 and 3)
    GET  /api/info          the request as JSON
    POST /echo              streams the request body back as it arrives
    POST /echo?sha256       the body's sha256 and size instead
    GET  /stream?n=&interval=  n lines, one every interval seconds, each flushed
    WebTransport /wt        (HTTP/3) echoes datagrams and streams; the page tries it

Try `curl --cacert certs/ca.pem https://localhost:8443/stream -N` or
`curl --cacert certs/ca.pem -X POST -T big.file 'https://localhost:8443/echo?sha256'`.
"""

from __future__ import annotations

import asyncio
import hashlib
import html
import json
import math
import time
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any
from urllib.parse import parse_qs

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
Handler = Callable[[Scope, Receive, Send], Awaitable[None]]

TILES = 12
STREAM_MAX_LINES = 1000
STREAM_MAX_INTERVAL = 5.0


async def app(scope: Scope, receive: Receive, send: Send) -> None:
    """The ASGI 3 entry point: `multiplex multiplex.demo:app`."""
    if scope["type"] == "lifespan":
        await lifespan(scope, receive, send)
    elif scope["type"] == "http":
        await route(scope, receive, send)
    elif scope["type"] == "websocket":
        # Closing before accepting makes the server reject the handshake (403).
        await send({"type": "websocket.close", "code": 1000})
    elif scope["type"] == "webtransport":
        await webtransport_echo(scope, receive, send)


async def webtransport_echo(scope: Scope, receive: Receive, send: Send) -> None:
    """WebTransport at /wt: every datagram comes back as it is, every bidirectional
    stream's bytes come back on it, every unidirectional stream's on a new one."""
    await receive()  # webtransport.connect
    if scope["path"] != "/wt":
        await send({"type": "webtransport.close", "status": 404})
        return
    await send({"type": "webtransport.accept"})
    incoming: dict[int, bytearray] = {}
    while True:
        message = await receive()
        kind = message["type"]
        if kind == "webtransport.disconnect":
            return
        if kind == "webtransport.datagram.receive":
            await send({"type": "webtransport.datagram.send", "data": message["data"]})
        elif kind == "webtransport.stream.receive":
            stream, data, end = message["stream"], message["data"], message["end"]
            if stream % 4 == 2:  # the browser's unidirectional stream: answer on our own
                buffered = incoming.setdefault(stream, bytearray())
                buffered += data
                if end:
                    del incoming[stream]
                    await send(
                        {
                            "type": "webtransport.stream.open",
                            "unidirectional": True,
                            "data": bytes(buffered),
                            "end": True,
                        }
                    )
            else:
                await send(
                    {"type": "webtransport.stream.send", "stream": stream, "data": data, "end": end}
                )
        elif kind == "webtransport.stream.reset":
            incoming.pop(message["stream"], None)


async def lifespan(scope: Scope, receive: Receive, send: Send) -> None:
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            # Servers copy `state` into every request scope: /api/info shows this.
            if "state" in scope:
                scope["state"]["started_at"] = time.time()
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await send({"type": "lifespan.shutdown.complete"})
            return


# --- routing -----------------------------------------------------------------------------


async def route(scope: Scope, receive: Receive, send: Send) -> None:
    path: str = scope["path"]
    method: str = scope["method"]
    handlers = ROUTES.get(path)
    if handlers is None and path.startswith("/static/tile/"):
        handlers = {"GET": tile}
    if handlers is None:
        await respond(send, 404, b"Not found\n", method=method)
        return
    allowed = {*handlers, "HEAD"} if "GET" in handlers else set(handlers)
    handler = handlers.get("GET" if method == "HEAD" else method)
    if handler is None:
        allow = ", ".join(sorted(allowed))
        await respond(send, 405, b"Method not allowed\n", [(b"allow", allow.encode())])
        return
    await handler(scope, receive, send)


async def respond(
    send: Send,
    status: int,
    body: bytes,
    headers: list[tuple[bytes, bytes]] | None = None,
    *,
    content_type: bytes = b"text/plain; charset=utf-8",
    method: str = "GET",
) -> None:
    """Send a whole response at once. For HEAD, the headers describe the body that a
    GET would get, but no body is sent."""
    all_headers = [
        (b"content-type", content_type),
        (b"content-length", str(len(body)).encode()),
        # No caching: every reload fetches the tiles again, so the multiplexing stays
        # visible in the browser's network panel.
        (b"cache-control", b"no-store"),
        *(headers or []),
    ]
    await send({"type": "http.response.start", "status": status, "headers": all_headers})
    await send({"type": "http.response.body", "body": b"" if method == "HEAD" else body})


def query(scope: Scope) -> dict[str, str]:
    """The query string as a dict, the last value winning; `?sha256` gives {"sha256": ""}."""
    pairs = parse_qs(scope["query_string"].decode("latin-1"), keep_blank_values=True)
    return {name: values[-1] for name, values in pairs.items()}


def protocol_name(scope: Scope) -> str:
    return "HTTP/" + str(scope.get("http_version", "1.1"))


def header(scope: Scope, name: bytes) -> bytes | None:
    for key, value in scope["headers"]:
        if key.lower() == name:
            return bytes(value)
    return None


# --- pages ---------------------------------------------------------------------------------


async def index(scope: Scope, receive: Receive, send: Send) -> None:
    client = scope.get("client")
    client_text = f"{client[0]} port {client[1]}" if client else "unknown"
    tiles = "\n".join(
        f'      <img src="/static/tile/{n}.svg" width="64" height="64" alt="tile {n}">'
        for n in range(TILES)
    )
    page = INDEX_HTML.format(
        protocol=html.escape(protocol_name(scope)),
        scheme=html.escape(scope.get("scheme", "http")),
        client=html.escape(client_text),
        tiles=tiles,
    )
    await respond(
        send,
        200,
        page.encode(),
        content_type=b"text/html; charset=utf-8",
        method=scope["method"],
    )


async def info(scope: Scope, receive: Receive, send: Send) -> None:
    client, server = scope.get("client"), scope.get("server")
    data: dict[str, Any] = {
        "http_version": protocol_name(scope),
        "scheme": scope.get("scheme", "http"),
        "client": list(client) if client else None,
        "server": list(server) if server else None,
        "method": scope["method"],
        "path": scope["path"],
        "headers": len(scope["headers"]),
    }
    tls = scope.get("extensions", {}).get("tls")
    if tls is not None and tls.get("tls_version") is not None:
        data["tls_version"] = f"0x{tls['tls_version']:04x}"
    state = scope.get("state")
    if state and "started_at" in state:
        data["started_at"] = state["started_at"]
    body = json.dumps(data, indent=2).encode() + b"\n"
    await respond(send, 200, body, content_type=b"application/json", method=scope["method"])


async def static(scope: Scope, receive: Receive, send: Send) -> None:
    content_type, body = STATIC[scope["path"]]
    await respond(send, 200, body, content_type=content_type, method=scope["method"])


async def tile(scope: Scope, receive: Receive, send: Send) -> None:
    name = scope["path"].removeprefix("/static/tile/")
    number = name.removesuffix(".svg")
    if not name.endswith(".svg") or not number.isdigit() or int(number) >= TILES:
        await respond(send, 404, b"Not found\n", method=scope["method"])
        return
    n = int(number)
    hue = n * 360 // TILES
    svg = TILE_SVG.format(hue=hue, n=n, protocol=html.escape(protocol_name(scope)))
    await respond(send, 200, svg.encode(), content_type=b"image/svg+xml", method=scope["method"])


# --- streaming -------------------------------------------------------------------------------


async def echo(scope: Scope, receive: Receive, send: Send) -> None:
    """Stream the body back chunk by chunk, never holding more than one chunk."""
    if "sha256" in query(scope):
        await echo_sha256(scope, receive, send)
        return
    content_type = header(scope, b"content-type") or b"application/octet-stream"
    # Receive before sending the response head: on HTTP/1.1 the first receive() is
    # what makes the server answer `Expect: 100-continue`, and a client waiting for
    # that 100 would never send the body if it got a 200 first.
    message = await receive()
    if message["type"] == "http.disconnect":
        return
    await send(
        {
            "type": "http.response.start",
            "status": 200,
            "headers": [(b"content-type", content_type), (b"cache-control", b"no-store")],
        }
    )
    while True:
        chunk = message.get("body", b"")
        if chunk:
            await send({"type": "http.response.body", "body": chunk, "more_body": True})
        if not message.get("more_body", False):
            break
        message = await receive()
        if message["type"] == "http.disconnect":
            return
    await send({"type": "http.response.body", "body": b"", "more_body": False})


async def echo_sha256(scope: Scope, receive: Receive, send: Send) -> None:
    digest = hashlib.sha256()
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return
        chunk = message.get("body", b"")
        digest.update(chunk)
        size += len(chunk)
        if not message.get("more_body", False):
            break
    body = json.dumps({"sha256": digest.hexdigest(), "bytes": size}).encode() + b"\n"
    await respond(send, 200, body, content_type=b"application/json")


async def stream(scope: Scope, receive: Receive, send: Send) -> None:
    """n lines, one every `interval` seconds, each in its own body message so the server
    flushes it: watch them arrive with `curl -N`."""
    params = query(scope)
    try:
        n = int(params.get("n", "10"))
        interval = float(params.get("interval", "0.2"))
    except ValueError:
        await respond(send, 400, b"n must be an integer and interval a number\n")
        return
    if not 0 <= n <= STREAM_MAX_LINES:
        await respond(send, 400, f"n must be between 0 and {STREAM_MAX_LINES}\n".encode())
        return
    if not (math.isfinite(interval) and 0 <= interval <= STREAM_MAX_INTERVAL):
        message = f"interval must be between 0 and {STREAM_MAX_INTERVAL:g} seconds\n"
        await respond(send, 400, message.encode())
        return

    if scope["method"] == "HEAD":
        n = 0  # the same head as a GET, without the lines

    # Stop as soon as the client goes away instead of sleeping through the rest: a
    # background task watches `receive` for http.disconnect.
    disconnected = asyncio.Event()

    async def watch() -> None:
        while (await receive())["type"] != "http.disconnect":
            pass
        disconnected.set()

    watcher = asyncio.ensure_future(watch())
    try:
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [
                    (b"content-type", b"text/plain; charset=utf-8"),
                    (b"cache-control", b"no-store"),
                    # Ask proxies such as nginx not to buffer the stream.
                    (b"x-accel-buffering", b"no"),
                ],
            }
        )
        start = time.monotonic()
        for i in range(1, n + 1):
            if i > 1:
                try:
                    await asyncio.wait_for(disconnected.wait(), interval)
                    return  # the client left
                except asyncio.TimeoutError:
                    pass
            line = f"line {i}/{n} at {time.monotonic() - start:.3f}s\n"
            await send({"type": "http.response.body", "body": line.encode(), "more_body": True})
        await send({"type": "http.response.body", "body": b"", "more_body": False})
    finally:
        watcher.cancel()


# --- content -----------------------------------------------------------------------------------

INDEX_HTML = """\
<!doctype html>
<html lang="en">
<head>
  <meta charset="utf-8">
  <title>multiplex demo</title>
  <link rel="stylesheet" href="/static/style.css">
  <script src="/static/app.js" defer></script>
</head>
<body>
  <h1>You are speaking <span class="protocol">{protocol}</span></h1>
  <p>Scheme <b>{scheme}</b>, client <b>{client}</b>.</p>

  <h2>Twelve tiles, one connection?</h2>
  <p>Open the network panel (add the Protocol column) and reload: over HTTP/2 or
  HTTP/3 every tile shares one connection; over HTTP/1.1 the browser opens several.</p>
  <div class="tiles">
{tiles}
  </div>

  <h2>/api/info, fetched by app.js</h2>
  <pre id="info">loading...</pre>

  <h2>Echo</h2>
  <form method="post" action="/echo" enctype="text/plain">
    <textarea name="text" rows="3" cols="60">Hello, multiplex!</textarea>
    <button>POST to /echo</button>
  </form>
  <form method="post" action="/echo?sha256" enctype="multipart/form-data" id="upload">
    <input type="file" name="file">
    <button>sha256 of an upload</button>
  </form>
  <pre id="digest"></pre>

  <h2>WebTransport (HTTP/3)</h2>
  <p>A session to <code>/wt</code> on this server over HTTP/3: one datagram and one
  bidirectional stream, echoed. <button id="wt-run">Run again</button></p>
  <pre id="wt">not run</pre>

  <h2>Streaming</h2>
  <p><a href="/stream?n=20&amp;interval=0.25">/stream?n=20&amp;interval=0.25</a>:
  twenty lines, a quarter second apart, each sent as it is written.</p>
</body>
</html>
"""

STYLE_CSS = b"""\
body { font-family: system-ui, sans-serif; max-width: 50rem; margin: 2rem auto;
       padding: 0 1rem; line-height: 1.5; color: #222; }
.protocol { color: #0a6; }
.tiles { display: grid; grid-template-columns: repeat(6, 64px); gap: 8px; }
pre { background: #f4f4f4; padding: 0.75rem; overflow-x: auto; }
form { margin: 0.5rem 0; }
"""

APP_JS = b"""\
// Show /api/info, and hash uploads with /echo?sha256 by sending the file itself as
// the body (the plain form would hash the multipart encoding around it).
fetch("/api/info")
  .then((response) => response.json())
  .then((info) => {
    document.getElementById("info").textContent = JSON.stringify(info, null, 2);
  })
  .catch((error) => {
    document.getElementById("info").textContent = "failed: " + error;
  });

// WebTransport: a datagram and a bidirectional stream to /wt, echoed by the server.
// The result also lands in window.wtResult, which the tests read.
async function webTransportEcho() {
  const out = document.getElementById("wt");
  if (!("WebTransport" in window)) {
    out.textContent = "this browser has no WebTransport";
    return (window.wtResult = { error: "no WebTransport" });
  }
  out.textContent = "connecting...";
  try {
    const started = performance.now();
    const session = new WebTransport("https://" + location.host + "/wt");
    await session.ready;
    const writer = session.datagrams.writable.getWriter();
    const reader = session.datagrams.readable.getReader();
    await writer.write(new TextEncoder().encode("datagram ping"));
    const datagram = new TextDecoder().decode((await reader.read()).value);
    const stream = await session.createBidirectionalStream();
    const streamWriter = stream.writable.getWriter();
    await streamWriter.write(new TextEncoder().encode("stream ping"));
    await streamWriter.close();
    let echoed = "";
    const streamReader = stream.readable.getReader();
    for (;;) {
      const { value, done } = await streamReader.read();
      if (done) break;
      echoed += new TextDecoder().decode(value);
    }
    const ms = Math.round(performance.now() - started);
    session.close();
    out.textContent = "datagram: " + datagram + "\\nstream: " + echoed + "\\n" + ms + " ms";
    return (window.wtResult = { datagram, stream: echoed, ms });
  } catch (error) {
    out.textContent = "WebTransport failed: " + error;
    return (window.wtResult = { error: String(error) });
  }
}
document.getElementById("wt-run").addEventListener("click", webTransportEcho);
window.webTransportEcho = webTransportEcho;
if (location.protocol === "https:") webTransportEcho();

document.getElementById("upload").addEventListener("submit", async (event) => {
  const file = event.target.elements.file.files[0];
  if (!file) return;
  event.preventDefault();
  const out = document.getElementById("digest");
  out.textContent = "uploading " + file.size + " bytes...";
  const response = await fetch("/echo?sha256", { method: "POST", body: file });
  const result = await response.json();
  out.textContent = file.name + ": " + result.bytes + " bytes, sha256 " + result.sha256;
});
"""

TILE_SVG = """\
<svg xmlns="http://www.w3.org/2000/svg" width="64" height="64" viewBox="0 0 64 64">
  <rect width="64" height="64" rx="8" fill="hsl({hue}, 70%, 55%)"/>
  <text x="32" y="30" font-family="sans-serif" font-size="20" fill="#fff"
        text-anchor="middle">{n}</text>
  <text x="32" y="50" font-family="sans-serif" font-size="10" fill="#fff"
        text-anchor="middle">{protocol}</text>
</svg>
"""

STATIC: dict[str, tuple[bytes, bytes]] = {
    "/static/style.css": (b"text/css; charset=utf-8", STYLE_CSS),
    "/static/app.js": (b"text/javascript; charset=utf-8", APP_JS),
}

ROUTES: dict[str, dict[str, Handler]] = {
    "/": {"GET": index},
    "/api/info": {"GET": info},
    "/echo": {"POST": echo},
    "/stream": {"GET": stream},
    **{path: {"GET": static} for path in STATIC},
}
