"""The HTTP transport of source fetches: connect only to the address the URL policy checked.

:func:`open_checked` vets each URL and redirect hop with
:func:`clipqueue.urlpolicy.vet_url`, then connects to the very address that was
checked (no second DNS lookup, so no DNS-rebinding gap), keeping the name for
the ``Host`` header and for TLS (SNI and certificate checks), and follows
redirects by hand.
"""

from __future__ import annotations

from dataclasses import replace
from urllib.parse import urljoin, urlsplit

import requests
from requests.adapters import HTTPAdapter

from clipqueue.exceptions import ForbiddenSource
from clipqueue.urlpolicy import CheckedURL, SourcePolicy, vet_url

MAX_REDIRECTS = 5
MAX_ADDRESSES_TRIED = 3  # of a name's checked addresses, on connection failures
USER_AGENT = "clipqueue/1"
# Headers that must not follow a redirect to another origin.
_CREDENTIAL_HEADERS = ("authorization", "cookie", "proxy-authorization")


class PinnedAdapter(HTTPAdapter):
    """A transport that connects only to the address :func:`open_checked` vetted.

    The connection pool is keyed by that address, the ``Host`` header and TLS
    (SNI and certificate name) use the URL's host, and proxies are never used.
    A request that did not come through :func:`open_checked` is refused, so a
    session built by :func:`checked_session` cannot fetch an unchecked URL.
    """

    def send(self, request, stream=False, timeout=None, verify=True, cert=None, proxies=None):
        target: CheckedURL | None = getattr(request, "clipqueue_target", None)
        if target is None or len(target.addresses) != 1:
            raise ForbiddenSource("forbidden source: request was not checked by the URL policy (use open_checked)")
        if proxies and any(proxies.values()):
            raise ForbiddenSource("forbidden source: checked requests never go through a proxy")
        request.headers["Host"] = target.host_header
        return super().send(request, stream=stream, timeout=timeout, verify=verify, cert=cert, proxies={})

    def build_connection_pool_key_attributes(self, request, verify, cert=None):
        _, pool_kwargs = super().build_connection_pool_key_attributes(request, verify, cert)
        target: CheckedURL = request.clipqueue_target
        if target.scheme == "https":
            pool_kwargs["server_hostname"] = target.host
            pool_kwargs["assert_hostname"] = target.host
        return {"scheme": target.scheme, "host": target.addresses[0], "port": target.port}, pool_kwargs


def checked_session(pool_maxsize: int = 10) -> requests.Session:
    """A ``requests.Session`` for source fetches: pinned connections, no proxies, no netrc.

    Use it only through :func:`open_checked`; a plain ``session.get`` is refused.
    """
    session = requests.Session()
    session.trust_env = False  # no proxies or .netrc from the environment
    adapter = PinnedAdapter(pool_connections=4, pool_maxsize=pool_maxsize, max_retries=0)
    session.mount("http://", adapter)
    session.mount("https://", adapter)
    session.headers["User-Agent"] = USER_AGENT
    return session


def _origin(url: str) -> tuple[str, str]:
    parts = urlsplit(url)
    return parts.scheme.lower(), parts.netloc.lower()


def open_checked(session: requests.Session, url: str, policy: SourcePolicy, *,
                 method: str = "GET", headers: dict[str, str] | None = None,
                 timeout: float | tuple[float, float] = 15.0, max_redirects: int = MAX_REDIRECTS,
                 stream: bool = True, verify: bool | str = True, data: bytes | None = None,
                 follow_redirects: bool = True) -> requests.Response:
    """Send ``method url`` through ``session`` (from :func:`checked_session`) if ``policy`` allows it.

    Connects to the address that was checked; redirects (301, 302, 303, 307,
    308) are followed by hand, up to ``max_redirects``, each hop checked
    again before anything is sent to it. Returns the first response that is
    not a redirect, unread when ``stream``; the caller closes it and judges
    its status. Raises ``ForbiddenSource`` when the URL or a hop is refused
    or there are too many redirects, and ``requests`` exceptions (timeouts,
    connection errors) as they come. ``data`` is the request body; without
    ``follow_redirects`` a redirect is returned like any other answer.
    """
    if not isinstance(session.get_adapter("http://"), PinnedAdapter) or \
            not isinstance(session.get_adapter("https://"), PinnedAdapter):
        raise TypeError("open_checked needs a session from checked_session()")
    headers = dict(headers or {})
    for _ in range(max_redirects + 1):
        target = vet_url(url, policy)
        response = _send_pinned(session, method, target, headers, timeout, stream, verify, data)
        if not follow_redirects or not (response.is_redirect and response.headers.get("location")):
            return response
        location = response.headers["location"]
        status = response.status_code
        response.close()
        next_url = urljoin(url, location)
        if _origin(next_url) != _origin(url):
            headers = {k: v for k, v in headers.items() if k.lower() not in _CREDENTIAL_HEADERS}
        if status == 303 and method != "HEAD":
            method = "GET"
        url = next_url
    raise ForbiddenSource(f"forbidden source: more than {max_redirects} redirects (last to {url[:200]})")


def _send_pinned(session: requests.Session, method: str, target: CheckedURL, headers: dict[str, str],
                 timeout, stream: bool, verify, data: bytes | None = None) -> requests.Response:
    candidates = target.addresses[:MAX_ADDRESSES_TRIED]
    for index, address in enumerate(candidates):
        prepared = session.prepare_request(requests.Request(method, target.url, headers=headers, data=data))
        prepared.clipqueue_target = replace(target, addresses=(address,))
        try:
            return session.send(prepared, allow_redirects=False, stream=stream, timeout=timeout,
                                verify=verify, proxies={})
        except requests.exceptions.ConnectionError:
            # Another checked address of the same name may answer (e.g. IPv6 unreachable here).
            if index == len(candidates) - 1:
                raise
    raise AssertionError("unreachable")  # pragma: no cover
