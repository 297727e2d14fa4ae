"""The progress poller against a hostile worker: real HTTP servers on 127.0.0.1 that redirect,
answer 100 MB, drip slowly or lie about the content type (a job's image is its author's code).

Each case fails against a poller that follows redirects, reads the whole body or ignores the
content type; the slow drip and the well-formed answer guard what must keep working."""

from __future__ import annotations

import asyncio
import datetime as dt
import http.server
import json
import socket
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import aiohttp
import pytest

from kubetrain.api.progress import ProgressReport
from kubetrain.controller.progress import MAX_BODY_BYTES, ProgressPoller, Target, fetch

REPORT = {"step": 7, "loss": 3.0}
HUGE = 100 * 2**20  # 100 MB
TIMEOUT = 2.0


class Worker:
    """A ThreadingHTTPServer on 127.0.0.1 whose GET does whatever `answer` does; it counts
    requests and the body bytes it managed to hand to the socket."""

    def __init__(self, answer: Callable[[http.server.BaseHTTPRequestHandler, Worker], None]) -> None:
        self.hits = 0
        self.sent = 0
        self.finished = threading.Event()  # the handler returned (completed, or the client went away)
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def setup(self) -> None:
                super().setup()
                # A small send buffer: what was "sent" is close to what the client really took.
                self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 64 * 1024)

            def do_GET(self) -> None:
                outer.hits += 1
                try:
                    answer(self, outer)
                except (BrokenPipeError, ConnectionResetError):
                    pass
                finally:
                    outer.finished.set()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/progress"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def write(self, handler: http.server.BaseHTTPRequestHandler, data: bytes) -> None:
        handler.wfile.write(data)
        handler.wfile.flush()
        self.sent += len(data)

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def workers() -> Iterator[Callable[..., Worker]]:
    made: list[Worker] = []

    def make(answer: Callable[[http.server.BaseHTTPRequestHandler, Worker], None]) -> Worker:
        made.append(Worker(answer))
        return made[-1]

    yield make
    for w in made:
        w.close()


def json_answer(ctype: str = "application/json") -> Callable[[http.server.BaseHTTPRequestHandler, Worker], None]:
    def answer(h: http.server.BaseHTTPRequestHandler, w: Worker) -> None:
        body = json.dumps(REPORT).encode()
        h.send_response(200)
        h.send_header("Content-Type", ctype)
        h.send_header("Content-Length", str(len(body)))
        h.end_headers()
        w.write(h, body)
    return answer


def get(url: str, timeout: float = TIMEOUT) -> tuple[ProgressReport | None, float]:
    async def go() -> ProgressReport | None:
        async with aiohttp.ClientSession() as session:
            return await fetch(session, url, timeout)

    started = time.monotonic()
    report = asyncio.run(go())
    return report, time.monotonic() - started


def test_a_well_formed_answer_is_read(workers: Callable[..., Worker]) -> None:
    w = workers(json_answer("application/json; charset=utf-8"))
    report, _ = get(w.url)
    assert report == ProgressReport(step=7, loss=3.0)


def test_a_redirect_is_not_followed(workers: Callable[..., Worker]) -> None:
    """A worker answering 302 must not make the operator GET another URL (here a second
    loopback server that would answer a perfectly good report)."""
    elsewhere = workers(json_answer())

    def redirect(h: http.server.BaseHTTPRequestHandler, w: Worker) -> None:
        h.send_response(302)
        h.send_header("Location", elsewhere.url)
        h.send_header("Content-Length", "0")
        h.end_headers()

    hostile = workers(redirect)
    report, _ = get(hostile.url)
    assert hostile.hits == 1
    assert elsewhere.hits == 0, "the poller followed the redirect"
    assert report is None


def _huge(chunked: bool) -> Callable[[http.server.BaseHTTPRequestHandler, Worker], None]:
    """A 100 MB answer that is valid JSON and a valid report (unknown keys are ignored), so
    only a size cap can refuse it."""
    def answer(h: http.server.BaseHTTPRequestHandler, w: Worker) -> None:
        head, pad, tail = b'{"step": 7, "pad": "', b"x" * 2**20, b'"}'
        h.send_response(200)
        h.send_header("Content-Type", "application/json")
        if chunked:
            h.protocol_version = "HTTP/1.1"
            h.send_header("Transfer-Encoding", "chunked")
        else:
            h.send_header("Content-Length", str(len(head) + HUGE + len(tail)))
        h.end_headers()
        for piece in [head] + [pad] * (HUGE // len(pad)) + [tail]:
            w.write(h, b"%x\r\n%s\r\n" % (len(piece), piece) if chunked else piece)
        if chunked:
            w.write(h, b"0\r\n\r\n")
    return answer


@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
def test_a_100_mb_body_is_refused_without_reading_it(workers: Callable[..., Worker], chunked: bool) -> None:
    w = workers(_huge(chunked))
    report, took = get(w.url, timeout=30.0)
    assert report is None, "a 100 MB answer was accepted"
    # The server stops being able to write once the client stops reading: it got rid of far
    # less than the body (socket buffers, a few MB at most), and the call returned quickly.
    assert w.finished.wait(10), "the poller kept the connection open"
    assert w.sent < 16 * 2**20, f"the poller read {w.sent / 2**20:.0f} MiB"
    assert took < 5.0


def test_a_body_just_over_the_cap_is_refused(workers: Callable[..., Worker]) -> None:
    def answer(h: http.server.BaseHTTPRequestHandler, w: Worker) -> None:
        body = json.dumps({**REPORT, "pad": "x" * MAX_BODY_BYTES}).encode()
        h.send_response(200)
        h.send_header("Content-Type", "application/json")
        h.end_headers()  # no Content-Length: read until the connection closes
        w.write(h, body)

    w = workers(answer)
    report, _ = get(w.url)
    assert report is None


def test_a_slow_drip_gives_up_within_the_timeout(workers: Callable[..., Worker]) -> None:
    """A worker that trickles a valid report a byte at a time, slower than the timeout allows."""
    def drip(h: http.server.BaseHTTPRequestHandler, w: Worker) -> None:
        body = json.dumps(REPORT).encode()
        h.send_response(200)
        h.send_header("Content-Type", "application/json")
        h.send_header("Content-Length", str(len(body)))
        h.end_headers()
        for i in range(len(body)):
            w.write(h, body[i:i + 1])
            time.sleep(0.2)

    w = workers(drip)
    report, took = get(w.url, timeout=1.0)
    assert report is None
    assert took < 2.0


@pytest.mark.parametrize("ctype", ["text/html", "text/plain", "application/octet-stream", None])
def test_a_wrong_content_type_is_no_reading(workers: Callable[..., Worker], ctype: str | None) -> None:
    def answer(h: http.server.BaseHTTPRequestHandler, w: Worker) -> None:
        body = json.dumps(REPORT).encode()
        h.send_response(200)
        if ctype is not None:
            h.send_header("Content-Type", ctype)
        h.send_header("Content-Length", str(len(body)))
        h.end_headers()
        w.write(h, body)

    w = workers(answer)
    report, _ = get(w.url)
    assert report is None, f"a {ctype} answer was read as a report"


def test_the_poller_keeps_no_reading_from_a_hostile_pod(workers: Callable[..., Worker]) -> None:
    """Through the poller: the hostile pod leaves no reading, the honest one next to it does."""
    honest = workers(json_answer())
    hostile = workers(_huge(chunked=True))
    seen: list[str] = []

    async def scenario() -> ProgressPoller[str]:
        poller: ProgressPoller[str] = ProgressPoller(1.0, on_reading=seen.append, timeout=5.0,
                                                     clock=lambda: dt.datetime.now(dt.timezone.utc))
        poller.set_target("honest", Target(pod="a-0", url=honest.url))
        poller.set_target("hostile", Target(pod="b-0", url=hostile.url))
        async with aiohttp.ClientSession() as session:
            await poller.poll_once(session)
        return poller

    poller = asyncio.run(scenario())
    assert seen == ["honest"]
    assert set(poller.readings) == {"honest"}
