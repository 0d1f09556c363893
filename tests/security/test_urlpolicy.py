"""The source URL policy against real loopback servers: refused URLs send nothing, accepted ones go where they were checked."""

from __future__ import annotations

import ssl
import threading
import time

import pytest
import requests

from clipqueue.exceptions import ForbiddenSource, SourceUnavailable
from clipqueue.media.http import MAX_REDIRECTS, checked_session, open_checked
from clipqueue.urlpolicy import SourcePolicy, check_playlist_text, check_playlist_uri, check_url
from tests.security.servers import CountingServer

STRICT = SourcePolicy()
PRIVATE_OK = SourcePolicy(allow_private=True)


@pytest.fixture
def server():
    with CountingServer("127.0.0.1", name="loopback") as server:
        yield server


@pytest.fixture
def server6():
    with CountingServer("::1", name="loopback6") as server:
        yield server


@pytest.fixture
def session():
    with checked_session() as session:
        yield session


def _refused(session, url: str, policy: SourcePolicy = STRICT) -> str:
    with pytest.raises(ForbiddenSource) as caught:
        open_checked(session, url, policy, timeout=2)
    assert str(caught.value).startswith("forbidden source"), caught.value
    return str(caught.value)


# Every spelling the issue lists, and more, of addresses the strict policy refuses.
# "{port}" is the loopback server's port: if a check let one through, the server would see it.
LOOPBACK_SPELLINGS = [
    "http://127.0.0.1:{port}/vod.m3u8",
    "http://localhost:{port}/vod.m3u8",
    "http://LOCALHOST.:{port}/vod.m3u8",
    "http://vod.localhost:{port}/vod.m3u8",
    "http://[::ffff:127.0.0.1]:{port}/vod.m3u8",
    "http://[::ffff:7f00:1]:{port}/vod.m3u8",
    "http://2130706433:{port}/vod.m3u8",
    "http://0x7f.1:{port}/vod.m3u8",
    "http://0x7f000001:{port}/vod.m3u8",
    "http://127.1:{port}/vod.m3u8",
    "http://127.0.1:{port}/vod.m3u8",
    "http://0177.0.0.1:{port}/vod.m3u8",
    "http://017700000001:{port}/vod.m3u8",
    "http://127.0.0.1.:{port}/vod.m3u8",
    "https://127.0.0.1:{port}/vod.m3u8",
    "http://0:{port}/vod.m3u8",
    "http://0.0.0.0:{port}/vod.m3u8",
    "file://127.0.0.1:{port}/etc/passwd",
    "file:///etc/passwd",
    "concat:http://127.0.0.1:{port}/a.ts|file:///etc/passwd",
    "ftp://127.0.0.1:{port}/vod.m3u8",
    "gopher://127.0.0.1:{port}/_GET",
    "http://user:pw@8.8.8.8@127.0.0.1:{port}/vod.m3u8",
    "http://127.0.0.1:{port}\\@8.8.8.8/vod.m3u8",
    "http://%31%32%37.0.0.1:{port}/vod.m3u8",
    "http://127.0.0.999:{port}/vod.m3u8",
]

# Addresses with no server behind them: the guard in conftest fails the test
# if anything tries to connect to them.
OTHER_FORBIDDEN = [
    "http://10.1.2.3/vod.m3u8",
    "http://172.16.0.1/vod.m3u8",
    "http://192.168.1.1/vod.m3u8",
    "http://169.254.169.254/latest/meta-data/",
    "http://0xa9fea9fe/latest/meta-data/",
    "http://[::ffff:169.254.169.254]/latest/meta-data/",
    "http://100.64.0.1/vod.m3u8",
    "http://198.18.0.1/vod.m3u8",
    "http://224.0.0.1/vod.m3u8",
    "http://240.0.0.1/vod.m3u8",
    "http://255.255.255.255/vod.m3u8",
    "http://192.0.2.1/vod.m3u8",
    "http://[fe80::1]/vod.m3u8",
    "http://[fe80::1%25eth0]/vod.m3u8",
    "http://[fc00::1]/vod.m3u8",
    "http://[ff02::1]/vod.m3u8",
    "http://[::]/vod.m3u8",
    "http://[::127.0.0.1]/vod.m3u8",
    "http://[64:ff9b::a9fe:a9fe]/vod.m3u8",
    "http://[2002:a9fe:a9fe::1]/vod.m3u8",
    "http://[2001::1]/vod.m3u8",
    "http://[2001:db8::1]/vod.m3u8",
]


@pytest.mark.parametrize("template", LOOPBACK_SPELLINGS)
def test_loopback_spelling_is_refused_and_the_server_sees_nothing(session, server, template):
    _refused(session, template.format(port=server.port))
    assert server.connections == 0
    assert server.requests == []


@pytest.mark.parametrize("template", ["http://[::1]:{port}/vod.m3u8", "http://[0:0::1]:{port}/vod.m3u8"])
def test_ipv6_loopback_is_refused_and_the_server_sees_nothing(session, server6, template):
    _refused(session, template.format(port=server6.port))
    assert server6.connections == 0


@pytest.mark.parametrize("url", OTHER_FORBIDDEN)
def test_private_link_local_and_reserved_addresses_are_refused_before_connecting(session, url):
    _refused(session, url)


@pytest.mark.parametrize("url", [
    "http://169.254.169.254/latest/meta-data/",
    "http://[fe80::1]/x",
    "http://0.0.0.0/x",
    "http://224.0.0.1/x",
    "file:///etc/passwd",
])
def test_allowing_private_sources_still_refuses_link_local_unspecified_multicast_and_other_schemes(session, url):
    _refused(session, url, PRIVATE_OK)


def test_public_looking_name_that_resolves_to_loopback_is_refused(session, server, fake_dns):
    lookups = fake_dns({"vod.cdn.example": ["127.0.0.1"]})
    message = _refused(session, f"http://vod.cdn.example:{server.port}/vod.m3u8")
    assert "127.0.0.1" in message and "loopback" in message
    assert lookups == ["vod.cdn.example"]
    assert server.connections == 0


def test_name_is_refused_if_any_of_its_addresses_is_private(session, server, fake_dns):
    fake_dns({"mixed.example": ["93.184.216.34", "127.0.0.1"]})
    _refused(session, f"http://mixed.example:{server.port}/vod.m3u8")
    assert server.connections == 0


def test_a_lookup_slower_than_the_dns_timeout_is_undecided_not_refused(fake_dns):
    answered = threading.Event()

    def hung_resolver() -> list[str]:
        answered.wait(10)
        return ["93.184.216.34"]

    fake_dns({"slow.example": hung_resolver})
    started = time.monotonic()
    try:
        with pytest.raises(SourceUnavailable, match="took longer than 0.3s"):
            check_url("http://slow.example/vod.m3u8", STRICT, dns_timeout=0.3)
        assert time.monotonic() - started < 2
    finally:
        answered.set()


def test_a_lookup_within_the_dns_timeout_is_checked_as_usual(fake_dns):
    fake_dns({"quick.example": lambda: (time.sleep(0.1), ["93.184.216.34"])[1],
              "inside.example": ["10.0.0.7"]})
    assert check_url("http://quick.example/vod.m3u8", STRICT, dns_timeout=5) == ["93.184.216.34"]
    with pytest.raises(ForbiddenSource, match="private"):
        check_url("http://inside.example/vod.m3u8", STRICT, dns_timeout=5)


def test_redirect_to_loopback_is_refused_after_only_the_allowed_hop(session, fake_dns):
    # The origin on 127.0.0.2 stands for a public CDN: the policy admits exactly that address.
    policy = SourcePolicy(allowed_networks=("127.0.0.2/32",))
    with CountingServer("127.0.0.1", name="internal") as internal, \
            CountingServer("127.0.0.2", name="origin") as origin:
        fake_dns({"origin.example": ["127.0.0.2"], "internal.example": ["127.0.0.1"]})
        targets = [
            f"http://127.0.0.1:{internal.port}/secret",
            f"http://2130706433:{internal.port}/secret",
            f"http://internal.example:{internal.port}/secret",
            f"http://localhost:{internal.port}/secret",
            "file:///etc/passwd",
        ]
        for target in targets:
            _refused(session, f"http://origin.example:{origin.port}/redirect?to={target}", policy)
        assert internal.connections == 0
        assert [path for path, _ in origin.requests] == ["/redirect"] * len(targets)


def test_redirect_within_allowed_sources_is_followed(session, server):
    response = open_checked(session, f"{server.url}/redirect?to=/vod.m3u8", PRIVATE_OK, timeout=2)
    with response:
        assert response.status_code == 200
        assert response.url == f"{server.url}/vod.m3u8"
    assert [path for path, _ in server.requests] == ["/redirect", "/vod.m3u8"]


def test_redirects_are_limited(session, server):
    message = _refused(session, f"{server.url}/loop", PRIVATE_OK)
    assert "redirects" in message
    assert len(server.requests) == MAX_REDIRECTS + 1


def test_connection_goes_to_the_checked_address_not_a_second_lookup(session, fake_dns):
    """DNS rebinding: the name answers an allowed address first and loopback afterwards."""
    policy = SourcePolicy(allowed_networks=("127.0.0.2/32",))
    with CountingServer("127.0.0.1", name="internal") as internal, \
            CountingServer("127.0.0.2", port=internal.port, name="origin") as origin:
        answers = iter([["127.0.0.2"]] + [["127.0.0.1"]] * 10)
        lookups = fake_dns({"rebind.example": lambda: next(answers)})
        response = open_checked(session, f"http://rebind.example:{origin.port}/vod.m3u8", policy, timeout=2)
        with response:
            assert response.text == "served by origin\n"
        assert lookups == ["rebind.example"]
        assert origin.requests == [("/vod.m3u8", f"rebind.example:{origin.port}")]
        assert internal.connections == 0


def test_a_name_that_only_the_policy_resolves_is_reached_with_its_host_header(session, server, fake_dns):
    # The system resolver knows nothing of this name: reaching the server at all proves the pin.
    fake_dns({"media.example": ["127.0.0.1"]})
    response = open_checked(session, f"http://media.example:{server.port}/seg/1.ts", PRIVATE_OK, timeout=2)
    with response:
        assert response.status_code == 200
    assert server.requests == [("/seg/1.ts", f"media.example:{server.port}")]


def test_checked_session_refuses_requests_that_skip_the_policy(session, server):
    with pytest.raises(ForbiddenSource):
        session.get(f"{server.url}/vod.m3u8", timeout=2)
    assert server.connections == 0


def test_open_checked_refuses_a_session_that_would_resolve_names_itself(server):
    with requests.Session() as plain, pytest.raises(TypeError):
        open_checked(plain, f"{server.url}/vod.m3u8", PRIVATE_OK)
    assert server.connections == 0


def test_https_keeps_the_name_for_sni_and_certificate_checks(session, fake_dns, tmp_path):
    trustme = pytest.importorskip("trustme")
    ca = trustme.CA()
    ca_file = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ca.issue_cert("media.example").configure_cert(context)
    seen_sni: list[str | None] = []
    context.sni_callback = lambda sock, name, ctx: seen_sni.append(name)
    with CountingServer("127.0.0.1", name="tls", tls=context) as server:
        fake_dns({"media.example": ["127.0.0.1"], "other.example": ["127.0.0.1"]})
        response = open_checked(session, f"https://media.example:{server.port}/v.m3u8", PRIVATE_OK,
                                timeout=2, verify=str(ca_file))
        with response:
            assert response.text == "served by tls\n"
        assert seen_sni == ["media.example"]
        # The certificate is for media.example, not for the name asked: refused.
        with pytest.raises(requests.exceptions.SSLError):
            open_checked(session, f"https://other.example:{server.port}/v.m3u8", PRIVATE_OK,
                         timeout=2, verify=str(ca_file))
        assert server.requests == [("/v.m3u8", f"media.example:{server.port}")]


def test_allowed_source_hosts_match_the_host_and_its_subdomains_only(fake_dns):
    fake_dns({name: ["93.184.216.34"] for name in ("cdn.example", "a.cdn.example", "evilcdn.example")})
    policy = SourcePolicy(allowed_hosts=("cdn.example",))
    assert check_url("https://cdn.example/v.m3u8", policy) == ["93.184.216.34"]
    assert check_url("https://A.CDN.example./v.m3u8", policy) == ["93.184.216.34"]
    for url in ("https://evilcdn.example/v.m3u8", "https://cdn.example.evil.test/v.m3u8", "https://93.184.216.34/"):
        with pytest.raises(ForbiddenSource):
            check_url(url, policy)


@pytest.mark.parametrize("url", [
    "https://93.184.216.34/vod.m3u8",
    "https://[2606:4700:4700::1111]/vod.m3u8",
    "https://[64:ff9b::5db8:d822]/vod.m3u8",
    "https://[::ffff:93.184.216.34]/vod.m3u8",
])
def test_public_addresses_pass_the_check(url):
    assert check_url(url, STRICT)


@pytest.mark.parametrize("uri", [
    "file:///etc/passwd",
    "FILE:/etc/passwd",
    "concat:http://127.0.0.1/a.ts|file:///etc/passwd",
    "data:text/plain;base64,aGk=",
    "subfile,,start,0,end,0,,:/etc/passwd",
    "crypto:file:///etc/passwd",
    "crypto+file:///etc/passwd",
    "pipe:0",
    "ftp://127.0.0.1/a.ts",
    "hls+http://127.0.0.1/a.m3u8",
    "//169.254.169.254/latest/meta-data/",
    "http://169.254.169.254/latest/meta-data/",
])
def test_playlist_entries_with_other_schemes_or_link_local_hosts_are_refused_even_with_private_allowed(uri):
    with pytest.raises(ForbiddenSource):
        check_playlist_uri(uri, "http://127.0.0.1:8000/hls/720p.m3u8", PRIVATE_OK)


def test_playlist_entries_relative_to_an_allowed_source_are_accepted():
    base = "http://127.0.0.1:8000/hls/720p.m3u8"
    assert check_playlist_uri("3.ts", base, PRIVATE_OK) == "http://127.0.0.1:8000/hls/3.ts"
    assert check_playlist_uri("/other/3.ts?sig=a:b", base, PRIVATE_OK) == "http://127.0.0.1:8000/other/3.ts?sig=a:b"


@pytest.mark.parametrize("smuggled", [
    "#EXTINF:10,\nfile:///etc/passwd",
    '#EXT-X-MAP:URI="file:///etc/passwd"',
    "#EXT-X-MAP:URI=concat:init.mp4|file:///etc/passwd",
    '#EXT-X-KEY:METHOD=AES-128,URI="http://169.254.169.254/key"',
    '#EXT-X-MEDIA:TYPE=AUDIO,GROUP-ID="a",NAME="x",URI="data:application/x-mpegurl,#EXTM3U"',
    '#EXT-X-PART:DURATION=1,URI="subfile,,start,0,end,0,,:/etc/passwd"',
    "#EXTINF:10,\r/ok.ts\rfile:///etc/passwd",
])
def test_whole_playlist_text_is_refused_for_one_smuggled_entry(smuggled):
    text = f"#EXTM3U\n#EXT-X-TARGETDURATION:10\n#EXTINF:10,\n0.ts\n{smuggled}\n#EXT-X-ENDLIST\n"
    with pytest.raises(ForbiddenSource):
        check_playlist_text(text, "http://127.0.0.1:8000/hls/720p.m3u8", PRIVATE_OK)


def test_clean_playlist_text_passes_with_one_lookup_per_host(fake_dns):
    lookups = fake_dns({"cdn.example": ["93.184.216.34"]})
    text = "#EXTM3U\n" + "".join(f"#EXTINF:10,\nseg{i}.ts\n" for i in range(50)) + "#EXT-X-ENDLIST\n"
    check_playlist_text(text, "https://cdn.example/vod/720p.m3u8", STRICT)
    assert lookups == ["cdn.example"]
