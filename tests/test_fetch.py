"""Tests of lookalike.fetch against real HTTP(S) servers on 127.0.0.1; nothing else is contacted."""

from __future__ import annotations

import functools
import gzip
import ipaddress
import shutil
import socket
import socketserver
import ssl
import subprocess
import sys
import threading
import time
import zlib
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pytest

import lookalike.fetch as fetch_module
from lookalike.errors import FetchError
from lookalike.fetch import (
    DEFAULT_POLICY,
    Deadline,
    FetchPolicy,
    check_address,
    fetch,
    fetch_all,
    fetch_each,
    is_url,
)

OPEN = FetchPolicy(allow_private=True)  # the test servers live on loopback


# --- guard: no test may reach anything but loopback, nor look a name up in real DNS -----------


@pytest.fixture(autouse=True)
def connections(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, int]]:
    """Every TCP connection attempted during the test; non-loopback ones are blocked and fail it."""
    attempted: list[tuple[str, int]] = []
    blocked: list[str] = []
    real_connect, real_getaddrinfo = socket.create_connection, socket.getaddrinfo

    def create_connection(address, *args, **kwargs):
        attempted.append(address[:2])
        if not ipaddress.ip_address(address[0]).is_loopback:
            blocked.append(f"connect {address}")
            raise OSError("test guard: non-loopback connection blocked")
        return real_connect(address, *args, **kwargs)

    def getaddrinfo(host, *args, **kwargs):
        try:
            ipaddress.ip_address(host)
        except ValueError:
            blocked.append(f"getaddrinfo {host!r}")
            raise socket.gaierror(socket.EAI_NONAME, "test guard: DNS lookup blocked") from None
        return real_getaddrinfo(host, *args, **kwargs)

    monkeypatch.setattr(socket, "create_connection", create_connection)
    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    yield attempted
    assert not blocked, f"the test tried to leave loopback: {blocked}"


@pytest.fixture
def resolver(monkeypatch: pytest.MonkeyPatch) -> dict[str, list[str]]:
    """A fake DNS: tests fill the table; lookups are logged under the key "calls"."""
    table: dict[str, list[str]] = {"calls": []}

    def resolve(host: str, port: int):
        table["calls"].append(host)
        if host not in table:
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        return [ipaddress.ip_address(a) for a in table[host]]

    monkeypatch.setattr(fetch_module, "_resolve", resolve)
    return table


# --- a local server with the routes the tests need --------------------------------------------


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: Server

    def log_message(self, format: str, *args: object) -> None:
        pass

    def do_GET(self) -> None:
        self.server.requests.append((self.path, dict(self.headers)))
        parts = urlsplit(self.path)
        route, _, arg = parts.path[1:].partition("/")
        try:
            getattr(self, "route_" + route.replace("-", "_"), self.route_404)(arg, parts.query)
        except (BrokenPipeError, ConnectionResetError, ssl.SSLError):
            self.close_connection = True

    def reply(self, status: int, body: bytes = b"", **headers: str) -> None:
        self.send_response(status)
        headers.setdefault("Content-Length", str(len(body)))
        for name, value in headers.items():
            self.send_header(name.replace("_", "-"), value)
        self.end_headers()
        self.wfile.write(body)

    def trickle(self, data: bytes, delay: float) -> None:
        for byte in data:
            if self.server.stop.wait(delay):
                return
            self.wfile.write(bytes([byte]))
            self.wfile.flush()

    def route_ok(self, arg: str, query: str) -> None:
        self.reply(200, b"hello", Content_Type="image/png")

    def route_host(self, arg: str, query: str) -> None:
        self.reply(200, self.headers["Host"].encode())

    def route_redirect(self, arg: str, query: str) -> None:  # relative: /redirect/3 -> 2 -> ...
        left = int(arg)
        self.reply(302, Location=str(left - 1) if left > 0 else "/ok")

    def route_redirect_to(self, arg: str, query: str) -> None:
        self.reply(302, Location=parse_qs(query)["u"][0])

    def route_sized(self, arg: str, query: str) -> None:
        self.reply(200, b"x" * int(arg))

    def route_chunked(self, arg: str, query: str) -> None:  # no Content-Length; -1: endless
        self.send_response(200)
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        left = int(arg)
        while left != 0 and not self.server.stop.is_set():
            size = 65536 if left < 0 else min(left, 65536)
            self.wfile.write(b"%x\r\n%s\r\n" % (size, b"x" * size))
            left = left - size if left > 0 else -1
        self.wfile.write(b"0\r\n\r\n")

    def route_big(self, arg: str, query: str) -> None:  # declares a terabyte
        self.send_response(200)
        self.send_header("Content-Length", str(10**12))
        self.end_headers()
        self.wfile.write(b"x" * 1000)

    def route_slow(self, arg: str, query: str) -> None:  # a byte every 0.1 s, 100 s in all
        self.send_response(200)
        self.send_header("Content-Length", "1000")
        self.end_headers()
        self.trickle(b"x" * 1000, 0.1)

    def route_slow_headers(self, arg: str, query: str) -> None:  # never finishes its headers
        self.trickle(b"HTTP/1.1 200 OK\r\nX-Padding: " + b"x" * 1000, 0.1)

    def route_stall(self, arg: str, query: str) -> None:  # headers, then silence
        self.send_response(200)
        self.send_header("Content-Length", "10")
        self.end_headers()
        self.wfile.flush()
        self.server.stop.wait(10)

    def route_gzip(self, arg: str, query: str) -> None:  # despite Accept-Encoding: identity
        self.reply(200, gzip.compress(b"hello"), Content_Encoding="gzip")

    def route_identity(self, arg: str, query: str) -> None:
        self.reply(200, b"hello", Content_Encoding="identity")

    def route_bomb(self, arg: str, query: str) -> None:  # a few KB that inflate to 256 MB
        self.reply(200, _gzip_bomb(), Content_Encoding="gzip, gzip")

    def route_delay(self, arg: str, query: str) -> None:  # answers after `arg` seconds
        if not self.server.stop.wait(float(arg)):
            self.reply(200, b"hello")

    def route_404(self, arg: str = "", query: str = "") -> None:
        self.reply(404, b"not here")


@functools.cache
def _gzip_bomb(inflated: int = 256 << 20) -> bytes:
    """`inflated` zero bytes gzipped twice: a few kilobytes on the wire."""
    inner = zlib.compressobj(1, zlib.DEFLATED, 31)  # wbits 31: the gzip format
    zeros = bytes(1 << 20)
    layer = b"".join([inner.compress(zeros) for _ in range(inflated >> 20)] + [inner.flush()])
    return gzip.compress(layer)


class Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self) -> None:
        self.requests: list[tuple[str, dict[str, str]]] = []
        self.stop = threading.Event()
        super().__init__(("127.0.0.1", 0), Handler)

    def server_bind(self) -> None:  # HTTPServer's would look the host name up
        socketserver.TCPServer.server_bind(self)
        self.server_name, self.server_port = self.server_address[:2]

    @property
    def paths(self) -> list[str]:
        return [path for path, _ in self.requests]

    def url(self, path: str, host: str = "127.0.0.1", scheme: str = "http") -> str:
        return f"{scheme}://{host}:{self.server_port}{path}"


def _serve(server: Server):
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05})
    thread.start()
    try:
        yield server
    finally:
        server.stop.set()
        server.shutdown()
        server.server_close()
        thread.join()


@pytest.fixture
def server():
    yield from _serve(Server())


# --- addresses ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("address", "reason"),
    [
        ("10.0.0.1", "private"),
        ("172.16.0.1", "private"),
        ("192.168.1.1", "private"),
        ("169.254.169.254", "link-local"),
        ("fe80::1", "link-local"),
        ("fc00::1", "unique-local"),
        ("fd12:3456::1", "unique-local"),
        ("::1", "loopback"),
        ("127.0.0.1", "loopback"),
        ("127.255.0.9", "loopback"),
        ("::", "unspecified"),
        ("0.0.0.0", "unspecified"),
        ("224.0.0.1", "multicast"),
        ("ff02::1", "multicast"),
        ("240.0.0.1", "reserved"),
        ("100.64.0.1", "non-public"),
        ("::ffff:127.0.0.1", "IPv4-mapped loopback"),
        ("::ffff:10.0.0.1", "IPv4-mapped private"),
        ("2002:7f00:1::", "6to4-embedded loopback"),
        ("64:ff9b::a9fe:a9fe", "NAT64-embedded link-local"),
        ("8.8.8.8", None),
        ("1.1.1.1", None),
        ("2606:4700:4700::1111", None),
        ("::ffff:8.8.8.8", None),
        ("64:ff9b::808:808", None),
    ],
)
def test_check_address(address: str, reason: str | None) -> None:
    assert check_address(ipaddress.ip_address(address)) == reason


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("http://example.com/a.jpg", True),
        ("https://example.com", True),
        ("HTTPS://EXAMPLE.COM/", True),
        ("HtTp://x", True),
        ("ftp://example.com/", False),
        ("file:///etc/passwd", False),
        ("/home/me/cat.jpg", False),
        ("http:/x", False),
        ("example.com", False),
        ("", False),
    ],
)
def test_is_url(text: str, expected: bool) -> None:
    assert is_url(text) is expected


# --- refusals before any connection ------------------------------------------------------------


def test_loopback_refused_by_default(server: Server, connections: list) -> None:
    with pytest.raises(FetchError, match=r"refused: 127\.0\.0\.1 is a loopback address"):
        fetch(server.url("/ok"))
    assert connections == []
    assert server.requests == []


def test_loopback_allowed_with_allow_private(server: Server) -> None:
    assert fetch(server.url("/ok"), OPEN) == b"hello"
    [(path, headers)] = server.requests
    assert path == "/ok"
    assert headers["Host"] == f"127.0.0.1:{server.server_port}"
    assert headers["User-Agent"] == DEFAULT_POLICY.user_agent


@pytest.mark.parametrize(
    "host",
    [
        "2130706433",
        "0x7f000001",
        "0177.0.0.1",
        "127.1",
        "0x7f.1",
        "017700000001",
        "127.0.0.1.",
        "[::1]",
        "[::ffff:127.0.0.1]",
        "[::ffff:7f00:1]",
        "0",
        "0.0.0.0",
        "[::]",
    ],
)
def test_odd_loopback_spellings_refused(
    host: str, server: Server, resolver: dict, connections: list
) -> None:
    with pytest.raises(FetchError, match=r"^(refused|invalid URL)"):
        fetch(server.url("/ok", host=host))
    assert connections == []
    assert resolver["calls"] == []  # recognised as literals, not looked up
    assert server.requests == []


def test_odd_spelling_is_checked_as_the_real_address(server: Server) -> None:
    with pytest.raises(FetchError, match=r"refused: 2130706433 \(127\.0\.0\.1\) is a loopback"):
        fetch(server.url("/ok", host="2130706433"))
    assert fetch(server.url("/ok", host="2130706433"), OPEN) == b"hello"  # and connects there


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("file:///etc/passwd", "unsupported URL scheme 'file'"),
        ("ftp://example.com/a.jpg", "unsupported URL scheme 'ftp'"),
        ("gopher://example.com/", "unsupported URL scheme 'gopher'"),
        ("javascript:alert(1)", "unsupported URL scheme 'javascript'"),
        ("data:image/png;base64,AAAA", "unsupported URL scheme 'data'"),
        ("http://", "no host"),
        ("http:///a.jpg", "no host"),
        ("https://:443/", "no host"),
        ("", "not a URL"),
        ("not a url at all", "not a URL"),
        ("//example.com/a.jpg", "not a URL"),
        ("http://user:secret@example.com/", "credentials"),
        ("http://127.0.0.1@example.com/", "credentials"),
        ("http://example.com:99999/", "invalid port"),
        ("http://[zz::1/", "invalid URL"),
        ("http://exa\x00mple.com/", "invalid URL"),
        ("http://example.com/\r\nX-Injected: 1", "invalid URL"),
        ("http://example.com/" + "a" * 9000, "longer than 8192"),
    ],
)
def test_bad_urls(url: str, message: str, resolver: dict, connections: list) -> None:
    with pytest.raises(FetchError, match=message):
        fetch(url)
    assert connections == []


def test_non_string_is_a_fetch_error() -> None:
    with pytest.raises(FetchError):
        fetch(None)  # type: ignore[arg-type]


# --- host names: every address is checked, and the connection is pinned to it -----------------


def test_name_resolving_to_private_address_refused(resolver: dict, connections: list) -> None:
    resolver["internal.test"] = ["10.0.0.1"]
    with pytest.raises(FetchError, match=r"refused: internal\.test \(10\.0\.0\.1\) is a private"):
        fetch("http://internal.test/a.jpg")
    assert connections == []


def test_every_resolved_address_checked(resolver: dict, connections: list) -> None:
    resolver["mixed.test"] = ["8.8.8.8", "2606:4700:4700::1111", "169.254.169.254"]
    with pytest.raises(FetchError, match="link-local"):
        fetch("https://mixed.test/a.jpg")
    assert connections == []


def test_unresolvable_name(resolver: dict, connections: list) -> None:
    with pytest.raises(FetchError, match=r"cannot resolve host 'nowhere\.test'"):
        fetch("http://nowhere.test/")
    assert connections == []


def test_connection_pinned_to_checked_address(server: Server, resolver: dict) -> None:
    resolver["pinned.test"] = ["127.0.0.1"]
    body = fetch(server.url("/host", host="pinned.test"), OPEN)
    assert body == f"pinned.test:{server.server_port}".encode()  # the name travels as Host
    assert resolver["calls"] == ["pinned.test"]  # one lookup; the guard fails any second one


def test_falls_back_to_next_address(server: Server, resolver: dict) -> None:
    with socket.socket() as closed:  # a port nobody listens on
        closed.bind(("127.0.0.1", 0))
        dead_port = closed.getsockname()[1]
    resolver["two.test"] = ["127.0.0.2", "127.0.0.1"]  # the server listens on 127.0.0.1 only
    assert fetch(server.url("/ok", host="two.test"), OPEN) == b"hello"
    with pytest.raises(FetchError, match="could not connect"):
        fetch(f"http://two.test:{dead_port}/", OPEN)


# --- redirects -----------------------------------------------------------------------------------


def test_redirects_followed(server: Server) -> None:
    assert fetch(server.url("/redirect/3"), OPEN) == b"hello"
    assert server.paths == ["/redirect/3", "/redirect/2", "/redirect/1", "/redirect/0", "/ok"]


def test_redirect_limit(server: Server) -> None:
    assert fetch(server.url("/redirect/4"), OPEN) == b"hello"  # 5 redirects: allowed
    server.requests.clear()
    with pytest.raises(FetchError, match=r"too many redirects \(more than 5\)"):
        fetch(server.url("/redirect/5"), OPEN)
    assert len(server.requests) == 6
    with pytest.raises(FetchError, match=r"too many redirects \(more than 0\)"):
        fetch(server.url("/redirect/0"), FetchPolicy(allow_private=True, max_redirects=0))


def test_redirect_to_other_scheme_refused(server: Server) -> None:
    with pytest.raises(FetchError, match="unsupported URL scheme 'file'"):
        fetch(server.url("/redirect-to?u=file:///etc/passwd"), OPEN)


@pytest.fixture
def only_test_server_allowed(monkeypatch: pytest.MonkeyPatch) -> None:
    """Default policy, but the address checker lets the test server's own address through."""
    real = check_address
    exempt = ipaddress.ip_address("127.0.0.1")
    monkeypatch.setattr(
        fetch_module, "check_address", lambda ip: None if ip == exempt else real(ip)
    )


@pytest.mark.parametrize(
    ("target", "reason"),
    [
        ("http://10.0.0.1/a.jpg", r"10\.0\.0\.1 is a private address"),
        ("http://127.0.0.2:{port}/ok", r"127\.0\.0\.2 is a loopback address"),
        ("http://[::1]:{port}/ok", r"::1 is a loopback address"),
        ("http://0x7f000002:{port}/ok", r"\(127\.0\.0\.2\) is a loopback address"),
        ("https://metadata.test/latest/", r"metadata\.test \(169\.254\.169\.254\) is a link-local"),
    ],
)
def test_each_redirect_hop_checked(
    target: str,
    reason: str,
    server: Server,
    resolver: dict,
    connections: list,
    only_test_server_allowed: None,
) -> None:
    resolver["metadata.test"] = ["169.254.169.254"]
    assert fetch(server.url("/ok")) == b"hello"  # the first hop passes the (patched) check
    location = target.format(port=server.server_port)
    with pytest.raises(FetchError, match="refused: .*" + reason):
        fetch(server.url("/redirect-to?u=" + location))
    assert connections == [("127.0.0.1", server.server_port)] * 2  # the /ok and the redirect
    assert server.paths == ["/ok", "/redirect-to?u=" + location]


# --- size, status, time ------------------------------------------------------------------------


def test_size_limit_with_content_length(server: Server) -> None:
    assert fetch(server.url("/sized/1000"), FetchPolicy(allow_private=True, max_bytes=1000)) == (
        b"x" * 1000
    )
    with pytest.raises(FetchError, match="response larger than 999 bytes"):
        fetch(server.url("/sized/1000"), FetchPolicy(allow_private=True, max_bytes=999))


def test_declared_length_over_limit_fails_fast(server: Server) -> None:
    start = time.monotonic()
    with pytest.raises(FetchError, match=f"response larger than {64 * 1024 * 1024} bytes"):
        fetch(server.url("/big"), OPEN)
    assert time.monotonic() - start < 2


def test_size_limit_without_content_length(server: Server) -> None:
    policy = FetchPolicy(allow_private=True, max_bytes=200_000)
    assert fetch(server.url("/chunked/200000"), policy) == b"x" * 200_000
    with pytest.raises(FetchError, match="response larger than 200000 bytes"):
        fetch(server.url("/chunked/-1"), policy)  # endless


def test_compressed_response_refused(server: Server) -> None:
    with pytest.raises(
        FetchError, match=r"refused: compressed response \(Content-Encoding: gzip\)"
    ):
        fetch(server.url("/gzip"), OPEN)
    assert fetch(server.url("/identity"), OPEN) == b"hello"
    assert server.requests[0][1]["Accept-Encoding"] == "identity"


# VmHWM, not ru_maxrss: Linux carries ru_maxrss across exec, so a child of a big test
# process would report its parent's peak
_PEAK_MEMORY = """
import sys
from lookalike.errors import FetchError
from lookalike.fetch import FetchPolicy, fetch

def status_kb(field):
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith(field))

idle = status_kb("VmRSS:")
try:
    print("fetched", len(fetch(sys.argv[1], FetchPolicy(allow_private=True))))
except FetchError as error:
    print(error)
print(status_kb("VmHWM:") - idle)
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc for memory use")
def test_compression_bomb_is_refused_before_inflating(server: Server) -> None:
    """A 2-layer gzip bomb (256 MB from a few KB) must not be inflated: peak memory stays flat."""
    assert len(_gzip_bomb()) < 10_000
    done = subprocess.run(
        [sys.executable, "-c", _PEAK_MEMORY, server.url("/bomb")],
        capture_output=True,
        text=True,
        timeout=60,
        encoding="utf-8",
    )
    assert done.returncode == 0, done.stderr
    message, peak_kb = done.stdout.splitlines()
    assert int(peak_kb) < 200 * 1024, f"peak memory grew by {int(peak_kb) // 1024} MB"
    assert "Content-Encoding: gzip, gzip" in message


def test_http_error_status(server: Server) -> None:
    url = server.url("/404")
    with pytest.raises(FetchError, match=f"HTTP 404 from {url}"):
        fetch(url, OPEN)


@pytest.mark.parametrize("route", ["/slow", "/slow-headers"])
def test_trickling_server_cut_at_total_timeout(route: str, server: Server) -> None:
    policy = FetchPolicy(allow_private=True, total_timeout=1.0, read_timeout=5.0)
    start = time.monotonic()
    with pytest.raises(FetchError, match=r"timed out after 1 s"):
        fetch(server.url(route), policy)
    assert 0.9 < time.monotonic() - start < 2


def test_read_timeout(server: Server) -> None:
    policy = FetchPolicy(allow_private=True, read_timeout=0.3, total_timeout=5.0)
    start = time.monotonic()
    with pytest.raises(FetchError, match=r"timed out after 0\.3 s waiting for 127\.0\.0\.1"):
        fetch(server.url("/stall"), policy)
    assert time.monotonic() - start < 2


# --- one deadline for all the URLs of a request --------------------------------------------------


def test_a_requests_urls_are_fetched_at_once(server: Server) -> None:
    start = time.monotonic()
    assert fetch_all([server.url("/delay/0.5")] * 4, OPEN) == [b"hello"] * 4
    assert time.monotonic() - start < 1.5  # one after another would take 2 s


def test_one_deadline_for_all_of_a_requests_urls(server: Server) -> None:
    policy = FetchPolicy(allow_private=True, deadline=1.0, total_timeout=30)
    start = time.monotonic()
    with pytest.raises(FetchError, match=r"timed out: this request's URLs took more than 1 s"):
        fetch_all([server.url("/slow"), server.url("/slow-headers")] * 3, policy)
    assert 0.9 < time.monotonic() - start < 2


def test_the_first_failure_stops_the_other_fetches(server: Server) -> None:
    start = time.monotonic()
    with pytest.raises(FetchError, match="HTTP 404"):
        fetch_all([server.url("/stall"), server.url("/slow"), server.url("/404")], OPEN)
    assert time.monotonic() - start < 1  # not the stall's 5 s read timeout, nor the deadline


def test_fetch_each_reports_every_url_within_one_deadline(server: Server) -> None:
    policy = FetchPolicy(allow_private=True, deadline=1.0, parallel=2)
    urls = [server.url(p) for p in ("/ok", "/slow", "/404", "/slow", "/ok", "/ok")]
    start = time.monotonic()
    outcomes = list(fetch_each(urls, policy))
    assert 0.9 < time.monotonic() - start < 2
    assert outcomes[0] == b"hello"
    assert [str(o) for o in outcomes[1:4:2]] == [
        "timed out: this request's URLs took more than 1 s"
    ] * 2
    assert "HTTP 404" in str(outcomes[2])
    assert all(isinstance(o, FetchError) for o in outcomes[1:4])
    # the fetches queued behind the slow ones start after the deadline and fail at once
    assert [type(o) for o in outcomes[4:]] == [FetchError, FetchError]


def test_a_cancelled_deadline_ends_running_fetches(server: Server) -> None:
    deadline = Deadline(None)
    threading.Timer(0.3, deadline.cancel, ["stopped by the test"]).start()
    start = time.monotonic()
    with pytest.raises(FetchError, match="stopped by the test"):
        fetch(server.url("/stall"), OPEN, deadline)
    assert time.monotonic() - start < 1
    with pytest.raises(FetchError, match="stopped by the test"):
        fetch(server.url("/ok"), OPEN, deadline)
    assert server.paths == ["/stall"]


# --- https: the address is pinned, the certificate is checked against the name ----------------


def _openssl(command: str, cwd: Path) -> None:
    subprocess.run(["openssl", *command.split()], cwd=cwd, check=True, capture_output=True)


@pytest.fixture(scope="module")
def tls_files(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A test CA (ca.pem) and a certificate for pinned.test signed by it (leaf.pem, leaf.key)."""
    if shutil.which("openssl") is None:
        pytest.skip("openssl command not available")
    d = tmp_path_factory.mktemp("tls")
    new_key = "-newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 2"
    _openssl(
        f"req -x509 {new_key} -keyout ca.key -out ca.pem -subj /CN=lookalike-test-CA"
        " -addext basicConstraints=critical,CA:TRUE -addext keyUsage=critical,keyCertSign",
        cwd=d,
    )
    _openssl(f"req {new_key} -keyout leaf.key -out leaf.csr -subj /CN=pinned.test", cwd=d)
    (d / "leaf.ext").write_text(
        "subjectAltName=DNS:pinned.test\nbasicConstraints=critical,CA:FALSE\n"
        "keyUsage=critical,digitalSignature\nextendedKeyUsage=serverAuth\n"
        "authorityKeyIdentifier=keyid\nsubjectKeyIdentifier=hash\n",
        encoding="utf-8",
    )
    _openssl(
        "x509 -req -in leaf.csr -CA ca.pem -CAkey ca.key -CAcreateserial -days 2"
        " -out leaf.pem -extfile leaf.ext",
        cwd=d,
    )
    return d


@pytest.fixture
def tls_server(tls_files: Path, monkeypatch: pytest.MonkeyPatch):
    client_context = ssl.create_default_context(cafile=str(tls_files / "ca.pem"))
    monkeypatch.setattr(fetch_module, "_ssl_context", lambda: client_context)
    server = Server()
    server.sni: list[str | None] = []
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(tls_files / "leaf.pem", tls_files / "leaf.key")
    context.sni_callback = lambda sock, name, ctx: server.sni.append(name)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    yield from _serve(server)


def test_https_pinned_with_name_verified(tls_server: Server, resolver: dict) -> None:
    resolver["pinned.test"] = ["127.0.0.1"]
    assert fetch(tls_server.url("/host", host="pinned.test", scheme="https"), OPEN) == (
        f"pinned.test:{tls_server.server_port}".encode()
    )
    assert tls_server.sni == ["pinned.test"]


@pytest.mark.parametrize("host", ["other.test", "127.0.0.1"])
def test_https_certificate_must_match_the_name(
    host: str, tls_server: Server, resolver: dict
) -> None:
    resolver["other.test"] = ["127.0.0.1"]
    with pytest.raises(FetchError, match=r"could not connect.*CERTIFICATE_VERIFY_FAILED"):
        fetch(tls_server.url("/ok", host=host, scheme="https"), OPEN)
    assert tls_server.requests == []
