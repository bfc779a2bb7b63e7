"""Safe fetching of untrusted http(s) URLs: no private targets, bounded size and time.

Every hop of a fetch (the first request and each redirect, followed by hand) is checked the same
way: scheme, host, and every address the host resolves to. The request then goes to the checked
address itself, so a second DNS answer (DNS rebinding) cannot redirect it; the original host name
still goes in the Host header and, for https, in SNI and certificate verification.

The URLs of one request (a search's URL parts, an add's URLs) are fetched several at a time
under one shared :class:`Deadline`, so a request's URL work ends after ``policy.deadline``
seconds however many URLs it names.
"""

from __future__ import annotations

import contextlib
import functools
import ipaddress
import re
import socket
import ssl
import threading
import time
from collections import deque
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor, as_completed
from dataclasses import dataclass
from typing import Any

import certifi
import httpx

from .errors import FetchError

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

MAX_URL_LENGTH = 8192
_DEFAULT_PORTS = {"http": 80, "https": 443}
_NUMERIC_HOST = re.compile(r"[0-9a-fx.]+")  # candidates for inet_aton ("127.1", "0x7f000001")
_UNIQUE_LOCAL = ipaddress.ip_network("fc00::/7")
_NAT64 = ipaddress.ip_network("64:ff9b::/96")
_HINT = "(set allow_private_urls to fetch from private networks)"


@dataclass(frozen=True)
class FetchPolicy:
    """Limits of one fetch; the defaults suit untrusted URLs."""

    allow_private: bool = False  # allow loopback/private/link-local/etc targets
    max_bytes: int = 64 * 1024 * 1024
    connect_timeout: float = 5.0
    read_timeout: float = 10.0
    total_timeout: float = 30.0  # wall clock for the whole fetch incl. redirects and body
    deadline: float | None = 60.0  # wall clock for all the URLs of one request; None: none
    parallel: int = 8  # URLs of one request fetched at once
    max_redirects: int = 5
    user_agent: str = "lookalike/0.1 (+https://github.com/lookalike)"


DEFAULT_POLICY = FetchPolicy()


def is_url(text: str) -> bool:
    """True when `text` is an http:// or https:// URL (scheme compared case-insensitively)."""
    return isinstance(text, str) and text[:8].lower().startswith(("http://", "https://"))


def check_address(ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> str | None:
    """Why `ip` must be refused by default ("loopback", "private", ...), or None if it is public.

    IPv6 addresses that embed an IPv4 one (IPv4-mapped, 6to4, Teredo, NAT64) are refused when the
    embedded address is, e.g. "IPv4-mapped loopback" for ::ffff:127.0.0.1.
    """
    if isinstance(ip, ipaddress.IPv6Address):
        for kind, embedded in _embedded_ipv4(ip):
            reason = check_address(embedded)
            if reason:
                return f"{kind} {reason}"
        if ip.ipv4_mapped is not None or ip in _NAT64:
            return None  # a public IPv4 address in disguise; the v6 range itself is not global
    if ip.is_unspecified:
        return "unspecified"
    if ip.is_loopback:
        return "loopback"
    if ip.is_link_local:
        return "link-local"
    if ip.is_multicast:
        return "multicast"
    if ip in _UNIQUE_LOCAL:
        return "unique-local"
    if isinstance(ip, ipaddress.IPv6Address) and ip.is_site_local:
        return "site-local"
    if ip.is_reserved:
        return "reserved"
    if ip.is_private:
        return "private"
    if not ip.is_global:
        return "non-public"  # shared (CGNAT), documentation, benchmarking, ... ranges
    return None


def fetch(
    url: str, policy: FetchPolicy = DEFAULT_POLICY, deadline: Deadline | None = None
) -> bytes:
    """GET `url` and return the body, following at most `policy.max_redirects` redirects.

    Raises FetchError, and nothing else, when the URL is malformed or not http(s), a hop targets
    a refused address (unless `policy.allow_private`), the server answers non-2xx or compressed,
    the body exceeds `policy.max_bytes`, or a timeout or the shared `deadline` runs out.
    """
    if deadline is None:
        watchdog = _Watchdog(policy.total_timeout)
    else:
        watchdog = deadline.watchdog(policy.total_timeout)
    try:
        return _fetch(url, policy, watchdog)
    except FetchError:
        raise
    except Exception as exc:  # nothing but FetchError may escape
        raise FetchError(f"fetch failed: {type(exc).__name__}: {exc}") from exc
    finally:
        watchdog.cancel()
        if deadline is not None:
            deadline.forget(watchdog)


def fetch_all(
    urls: Sequence[str], policy: FetchPolicy = DEFAULT_POLICY, deadline: Deadline | None = None
) -> list[bytes]:
    """The bodies of `urls`, fetched `policy.parallel` at a time within one deadline.

    The deadline is `policy.deadline` from now unless one is given. The first failure is
    raised as soon as it happens, and the fetches still running are stopped.
    """
    deadline = deadline or Deadline(policy.deadline)
    if len(urls) <= 1:
        return [fetch(url, policy, deadline) for url in urls]
    with ThreadPoolExecutor(min(policy.parallel, len(urls)), "lookalike-fetch") as pool:
        futures = [pool.submit(fetch, url, policy, deadline) for url in urls]
        for future in as_completed(futures):
            if future.exception() is not None:
                deadline.cancel("cancelled: another URL of this request failed")
                raise future.exception()  # type: ignore[misc]
        return [future.result() for future in futures]


def fetch_each(
    urls: Iterable[str], policy: FetchPolicy = DEFAULT_POLICY, deadline: Deadline | None = None
) -> Iterator[bytes | FetchError]:
    """For each of `urls` in order, its body or the FetchError it failed with.

    Fetches `policy.parallel` at a time, all within one deadline (`policy.deadline` from the
    first fetch unless given), holding at most that many bodies ahead of the consumer.
    """
    deadline = deadline or Deadline(policy.deadline)
    pending: deque[Future[bytes]] = deque()
    with ThreadPoolExecutor(policy.parallel, "lookalike-fetch") as pool:
        try:
            for url in urls:
                pending.append(pool.submit(fetch, url, policy, deadline))
                if len(pending) >= policy.parallel:
                    yield _outcome(pending.popleft())
            while pending:
                yield _outcome(pending.popleft())
        except BaseException:  # abandoned (GeneratorExit) or failed: stop what was started
            deadline.cancel("cancelled: the request was abandoned")
            raise


def _outcome(future: Future[bytes]) -> bytes | FetchError:
    error = future.exception()
    if error is None:
        return future.result()
    if isinstance(error, FetchError):
        return error
    raise error


class Deadline:
    """One wall-clock budget shared by all the fetches of one request.

    Each fetch under it ends when its own `total_timeout` or the deadline runs out, whichever
    comes first; :meth:`cancel` ends the running ones at once.
    """

    def __init__(self, seconds: float | None) -> None:
        self.seconds = seconds
        self._end = time.monotonic() + seconds if seconds is not None else None
        self._lock = threading.Lock()
        self._running: set[_Watchdog] = set()
        self._cancelled: str | None = None

    @property
    def message(self) -> str:
        """Why a fetch cut short by this deadline failed."""
        return (
            self._cancelled or f"timed out: this request's URLs took more than {self.seconds:g} s"
        )

    def left(self) -> float | None:
        """Seconds left (None: no deadline); raises FetchError when none are."""
        if self._cancelled:
            raise FetchError(self._cancelled)
        if self._end is None:
            return None
        left = self._end - time.monotonic()
        if left <= 0:
            raise FetchError(self.message)
        return left

    def watchdog(self, total_timeout: float) -> _Watchdog:
        """The watchdog of one fetch under this deadline, stopped by :meth:`cancel` too."""
        with self._lock:
            left = self.left()
            if left is None or total_timeout <= left:
                watchdog = _Watchdog(total_timeout)
            else:
                watchdog = _Watchdog(left, self.message)
            self._running.add(watchdog)
        return watchdog

    def forget(self, watchdog: _Watchdog) -> None:
        """A fetch under this deadline has ended."""
        with self._lock:
            self._running.discard(watchdog)

    def cancel(self, reason: str) -> None:
        """Stop every fetch under this deadline, running or still to start."""
        with self._lock:
            if self._cancelled is None:
                self._cancelled = reason
            running, self._running = self._running, set()
        for watchdog in running:
            watchdog.fire(reason)


def _fetch(url: str, policy: FetchPolicy, watchdog: _Watchdog) -> bytes:
    for _ in range(policy.max_redirects + 1):
        target = _parse_url(url)
        addresses = _addresses(target, policy)
        try:
            location, body = _get(target, addresses, policy, watchdog)
        except FetchError:
            raise
        except (httpx.HTTPError, OSError, ValueError) as exc:
            raise FetchError(_describe(exc, target, policy, watchdog)) from exc
        if location is None:
            return body
        try:
            url = str(target.join(location))
        except (httpx.InvalidURL, ValueError) as exc:
            raise FetchError(f"invalid redirect location {_shorten(location)!r}: {exc}") from None
    raise FetchError(f"too many redirects (more than {policy.max_redirects})")


def _parse_url(url: str) -> httpx.URL:
    if len(url) > MAX_URL_LENGTH:
        raise FetchError(f"URL longer than {MAX_URL_LENGTH} characters")
    try:
        parsed = httpx.URL(url)
        port = parsed.port
    except (httpx.InvalidURL, ValueError) as exc:  # UnicodeError is a ValueError
        raise FetchError(f"invalid URL {_shorten(url)!r}: {exc}") from None
    if not parsed.scheme:
        raise FetchError(f"not a URL: {_shorten(url)!r} (expected http:// or https://)")
    if parsed.scheme not in _DEFAULT_PORTS:
        raise FetchError(f"unsupported URL scheme {parsed.scheme!r}")
    if not parsed.raw_host:
        raise FetchError(f"URL has no host: {_shorten(url)!r}")
    if parsed.userinfo:
        raise FetchError("URLs with credentials (user:password@) are not supported")
    if port is not None and not 0 < port < 65536:
        raise FetchError(f"invalid port {port}")
    return parsed


def _addresses(url: httpx.URL, policy: FetchPolicy) -> list[IPAddress]:
    """Every address `url`'s host stands for, refusing the lot if any one is refused."""
    host = url.raw_host.decode("ascii")
    literal = _literal_address(host)
    if literal is not None:
        addresses = [literal]
    else:
        try:
            addresses = _resolve(host, url.port or _DEFAULT_PORTS[url.scheme])
        except (OSError, UnicodeError):  # socket.gaierror is an OSError
            raise FetchError(f"cannot resolve host {host!r}") from None
        if not addresses:
            raise FetchError(f"cannot resolve host {host!r}")
    if not policy.allow_private:
        for ip in addresses:
            reason = check_address(ip)
            if reason:
                raise _refusal(host, ip, reason)
    return addresses


def _refusal(host: str, ip: IPAddress, reason: str) -> FetchError:
    try:
        ipaddress.ip_address(host)
        name = host  # an address in a standard spelling speaks for itself
    except ValueError:
        name = f"{host} ({ip})"  # a name, or an odd spelling such as 2130706433
    article = "an" if reason[0] in "aeiouAEIOU" and not reason.startswith("uni") else "a"
    return FetchError(f"refused: {name} is {article} {reason} address {_HINT}")


def _literal_address(host: str) -> IPAddress | None:
    """The address a host written as an IP literal stands for, in any spelling inet_aton knows."""
    host = host.removesuffix(".")  # "127.0.0.1." is still an address, not a name to look up
    with contextlib.suppress(ValueError):
        return ipaddress.ip_address(host)
    if _NUMERIC_HOST.fullmatch(host.lower()):
        with contextlib.suppress(OSError):
            return ipaddress.IPv4Address(socket.inet_aton(host))
    return None


def _resolve(host: str, port: int) -> list[IPAddress]:
    """Look `host` up (tests replace this to avoid DNS); addresses in order, without repeats."""
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    addresses = [ipaddress.ip_address(info[4][0]) for info in infos]
    return list(dict.fromkeys(addresses))


def _embedded_ipv4(ip: ipaddress.IPv6Address) -> list[tuple[str, ipaddress.IPv4Address]]:
    found = []
    if ip.ipv4_mapped is not None:
        found.append(("IPv4-mapped", ip.ipv4_mapped))
    if ip.sixtofour is not None:
        found.append(("6to4-embedded", ip.sixtofour))
    if ip.teredo is not None:
        found.extend(("Teredo-embedded", v4) for v4 in ip.teredo)
    if ip in _NAT64:
        found.append(("NAT64-embedded", ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)))
    return found


def _get(
    url: httpx.URL, addresses: list[IPAddress], policy: FetchPolicy, watchdog: _Watchdog
) -> tuple[str | None, bytes]:
    """GET `url` from the first of `addresses` that accepts a connection.

    Returns (Location, b"") for a redirect, else (None, body).
    """
    headers = {
        "Host": url.netloc.decode("ascii"),
        "User-Agent": policy.user_agent,
        "Accept": "*/*",
        "Accept-Encoding": "identity",
    }
    extensions: dict[str, Any] = {"trace": watchdog.trace}
    if url.scheme == "https":  # verify the certificate against the name, not the address
        extensions["sni_hostname"] = url.raw_host.decode("ascii")
    for index, ip in enumerate(addresses):
        pinned = url.copy_with(host=str(ip))
        try:
            with (
                _client(policy, watchdog) as client,
                client.stream("GET", pinned, headers=headers, extensions=extensions) as response,
            ):
                if response.is_redirect:
                    return response.headers["location"], b""
                if not response.is_success:
                    raise FetchError(f"HTTP {response.status_code} from {_shorten(str(url))}")
                return None, _read_body(response, policy, watchdog)
        except httpx.ConnectError:
            if index == len(addresses) - 1:
                raise
    raise AssertionError("unreachable: addresses is never empty")


def _client(policy: FetchPolicy, watchdog: _Watchdog) -> httpx.Client:
    left = watchdog.remaining()
    connect, read = min(policy.connect_timeout, left), min(policy.read_timeout, left)
    return httpx.Client(
        timeout=httpx.Timeout(connect=connect, read=read, write=read, pool=connect),
        follow_redirects=False,
        trust_env=False,  # no proxies from the environment: they would bypass the checks
        verify=_ssl_context(),
    )


@functools.cache
def _ssl_context() -> ssl.SSLContext:
    """The certificate store for https (tests replace this to trust their own CA)."""
    return ssl.create_default_context(cafile=certifi.where())


def _read_body(response: httpx.Response, policy: FetchPolicy, watchdog: _Watchdog) -> bytes:
    _refuse_encoded(response)
    too_large = f"response larger than {policy.max_bytes} bytes"
    declared = response.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > policy.max_bytes:
        raise FetchError(too_large)
    body = bytearray()
    for chunk in response.iter_raw():  # the bytes as sent: never inflated past the size check
        body += chunk
        if len(body) > policy.max_bytes:
            raise FetchError(too_large)
        watchdog.remaining()
    return bytes(body)


def _refuse_encoded(response: httpx.Response) -> None:
    """Refuse a compressed body (sent despite Accept-Encoding: identity).

    A few kilobytes of nested gzip inflate to gigabytes, so no decoder is ever run on one.
    """
    listed = response.headers.get_list("content-encoding", split_commas=True)
    encodings = [e.strip() for e in listed if e.strip().lower() not in ("", "identity")]
    if encodings:
        raise FetchError(
            f"refused: compressed response (Content-Encoding: {_shorten(', '.join(encodings))}); "
            "only uncompressed (identity) responses are fetched"
        )


def _describe(exc: Exception, url: httpx.URL, policy: FetchPolicy, watchdog: _Watchdog) -> str:
    host = url.host
    if watchdog.expired:
        return watchdog.message
    if isinstance(exc, httpx.ConnectTimeout):
        return f"timed out after {policy.connect_timeout:g} s connecting to {host}"
    if isinstance(exc, httpx.TimeoutException):
        return f"timed out after {policy.read_timeout:g} s waiting for {host}"
    if isinstance(exc, httpx.ConnectError):
        return f"could not connect to {host}: {exc}"
    if isinstance(exc, (httpx.InvalidURL, ValueError)):
        return f"invalid URL {_shorten(str(url))!r}: {exc}"
    return f"fetch from {host} failed: {exc or type(exc).__name__}"


def _shorten(text: str, limit: int = 200) -> str:
    return text if len(text) <= limit else text[:limit] + "..."


class _Watchdog:
    """The wall-clock budget of one fetch.

    Checked between hops and body chunks; when it runs out during a blocking read (a server that
    trickles its headers, say) a timer shuts the live socket down, which ends the read at once.
    """

    def __init__(self, seconds: float, message: str | None = None) -> None:
        self.message = message or f"timed out after {seconds:g} s"
        self._end = time.monotonic() + seconds
        self._lock = threading.Lock()
        self._socket: socket.socket | None = None
        self._fired = False
        self._timer = threading.Timer(min(max(seconds, 0.0), threading.TIMEOUT_MAX), self._expire)
        self._timer.daemon = True
        self._timer.start()

    @property
    def expired(self) -> bool:
        return self._fired or time.monotonic() >= self._end

    def remaining(self) -> float:
        """Seconds left; raises FetchError when none are."""
        left = self._end - time.monotonic()
        if left <= 0 or self._fired:
            raise FetchError(self.message)
        return left

    def trace(self, event: str, info: dict[str, Any]) -> None:
        """httpcore's `trace` request extension: note the socket of each new connection."""
        if event in ("connection.connect_tcp.complete", "connection.start_tls.complete"):
            with self._lock:
                self._socket = info["return_value"].get_extra_info("socket")
                if self._fired:
                    self._shutdown()

    def cancel(self) -> None:
        self._timer.cancel()

    def fire(self, message: str | None = None) -> None:
        """End the fetch now, failing it with `message` (by default the timeout's)."""
        with self._lock:
            if not self._fired and message:
                self.message = message
            self._fired = True
            self._shutdown()
        self._timer.cancel()

    def _expire(self) -> None:
        self.fire()

    def _shutdown(self) -> None:
        if self._socket is not None:
            with contextlib.suppress(OSError):  # plain socket method, also for an SSLSocket
                socket.socket.shutdown(self._socket, socket.SHUT_RDWR)
