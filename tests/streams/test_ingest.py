"""The devices' ingest endpoint tried as devices and attackers would: real HTTPS with a CA made
here (and mutual TLS), the real broker, crafted requests. An unpaired device's POST is refused
and its reading never reaches Kafka; a paired device's reading does, once, answered 202."""

from __future__ import annotations

import datetime as dt
import ipaddress
import json
import ssl
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import msgspec
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from streams import fhir, messages, supervise, topics
from streams.errors import ConfigError
from streams.ingest import RateLimit, add_device, serve
from tests.conftest import admit, wait_until
from tests.streams.test_webhooks import _consume

pytestmark = [pytest.mark.broker]


def _cert(path: Path, name: str, issuer: tuple | None = None, ca: bool = False,
          ip: str | None = None) -> tuple:
    """A key and certificate (PEM files `path`.pem, `path`.key), signed by `issuer` (a key and
    certificate) or self-signed."""
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = dt.datetime.now(dt.UTC)
    b = (x509.CertificateBuilder().subject_name(subject)
         .issuer_name(issuer[1].subject if issuer else subject)
         .public_key(key.public_key()).serial_number(x509.random_serial_number())
         .not_valid_before(now - dt.timedelta(minutes=5))
         .not_valid_after(now + dt.timedelta(days=1))
         .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))
    if ip:
        b = b.add_extension(x509.SubjectAlternativeName([x509.IPAddress(
            ipaddress.ip_address(ip))]), critical=False)
    cert = b.sign(issuer[0] if issuer else key, hashes.SHA256())
    path.with_suffix(".pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    path.with_suffix(".key").write_bytes(key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption()))
    return key, cert


@pytest.fixture
def pki(tmp_path: Path) -> Path:
    ca = _cert(tmp_path / "ca", "patient-twin test CA", ca=True)
    _cert(tmp_path / "server", "127.0.0.1", issuer=ca, ip="127.0.0.1")
    _cert(tmp_path / "device", "D1", issuer=ca)
    other = _cert(tmp_path / "rogue-ca", "rogue CA", ca=True)
    _cert(tmp_path / "rogue", "D1", issuer=other)
    return tmp_path


def _serve(s, pki: Path, client_ca: bool = False) -> Iterator[str]:
    stop, ready = threading.Event(), threading.Event()
    urls: list[str] = []

    def on_ready(url: str) -> None:
        urls.append(url)
        ready.set()

    th = threading.Thread(target=serve, args=(s, str(pki / "server.pem"), str(pki / "server.key"),
                                              str(pki / "ca.pem") if client_ca else None),
                          kwargs={"on_ready": on_ready, "stop": stop}, daemon=True)
    th.start()
    assert ready.wait(30)
    try:
        yield urls[0]
    finally:
        stop.set()
        th.join(15)


@pytest.fixture
def ingest(request, settings_factory, tmp_path: Path, pki: Path):
    """A running ingest endpoint; `request.param` (indirect) is its rate per device (5/s)."""
    rate = getattr(request, "param", 5.0)
    s = settings_factory(devices_file=str(tmp_path / "devices.jsonl"),
                         ingest_port=supervise.free_port(), ingest_rate_per_device=rate)
    topics.ensure(s)
    admit(s, {"P1": "D1"})  # D1 paired with P1; D2 has a credential but no patient
    tokens = {d: add_device(s.devices_file, d) for d in ("D1", "D2")}
    assert tokens["D1"] not in Path(s.devices_file).read_text()  # hashed at rest
    from streams.registry import Registry

    reg = Registry(s).start("test-ingest-wait")
    assert wait_until(lambda: reg.paired("P1") is not None, timeout=30)
    reg.stop()
    gen = _serve(s, pki)
    url = next(gen)
    yield s, url, tokens
    next(gen, None)


def _reading(device: str, patient: str, seq: int, ahead_s: float = 0.0) -> bytes:
    return messages.encode(messages.reading(device, patient, seq,
                                            messages.utc(time.time() + ahead_s),
                                            {"hr": 72.0, "spo2": 97.0}))


def _post(url: str, pki: Path, token: str | None, body: bytes,
          cert: tuple[str, str] | None = None) -> httpx.Response:
    """POST as a device: it trusts the site's CA only, and shows `cert` if given."""
    headers = {"Content-Type": "application/json"}
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    ctx = ssl.create_default_context(cafile=str(pki / "ca.pem"))
    if cert is not None:
        ctx.load_cert_chain(*cert)
    with httpx.Client(verify=ctx) as c:
        return c.post(url, content=body, headers=headers)


def test_paired_devices_in_unpaired_and_forged_out(ingest, pki):
    s, url, tokens = ingest
    d1, d2 = tokens["D1"], tokens["D2"]
    r = _post(url, pki, d1, _reading("D1", "P1", 1))
    assert (r.status_code, r.json()) == (202, {"accepted": 1})
    bundle = msgspec.json.encode(fhir.encode_reading("D1", "P1", 2, messages.utc(
        time.time()).isoformat().replace("+00:00", "Z"), {"hr": 80.0}))
    assert _post(url, pki, d1, bundle).status_code == 202  # FHIR R4 too
    refused = [
        (_post(url, pki, d2, _reading("D2", "P1", 1)), 403, "unpaired_device"),
        (_post(url, pki, d2, _reading("D1", "P1", 3)), 403, "wrong_device"),  # D2 poses as D1
        (_post(url, pki, d1, _reading("D1", "P404", 4)), 403, "unpaired_device"),
        (_post(url, pki, None, _reading("D1", "P1", 5)), 401, "unauthenticated"),
        (_post(url, pki, d1 + "x", _reading("D1", "P1", 6)), 401, "unauthenticated"),
        (_post(url, pki, "not-a-token", _reading("D1", "P1", 7)), 401, "unauthenticated"),
        (_post(url, pki, d1, b'{"schema": "patient-twin.reading/1", "values": '), 400, None),
        (_post(url, pki, d1, b"\xff\xfe garbage"), 400, None),
        (_post(url, pki, d1, b"[" + b"1," * 200_000 + b"1]"), 413, "oversized"),
        (_post(url, pki, d1, _reading("D1", "P1", 8, ahead_s=86_400)), 400, "ts_out_of_range"),
    ]
    for r, status, kind in refused:
        assert r.status_code == status, (r.status_code, r.text)
        if kind is not None:
            assert r.json()["kind"] == kind
    # exactly the two accepted messages reached Kafka, keyed by their patient
    got = _consume(s, s.topic_vitals_raw, 10, timeout=5)
    assert [(m.key, m.offset >= 0) for m in got] == [(b"P1", True), (b"P1", True)]
    assert json.loads(got[0].value)["seq"] == 1


@pytest.mark.parametrize("ingest", [1.0], indirect=True)
def test_a_device_flooding_is_slowed_and_others_are_not(ingest, pki):
    """One message a second (bursts of two) per device. Each post here is a new TLS connection:
    on a loaded machine one can take longer than a refill at the default 5/s, so the flood is
    measured against 1/s, which 30 posts outrun however slow they are."""
    s, url, tokens = ingest
    answers = [_post(url, pki, tokens["D1"], _reading("D1", "P1", k)) for k in range(1, 31)]
    statuses = [r.status_code for r in answers]
    assert 202 in statuses and 429 in statuses, statuses
    # every refusal says when to try again
    assert all(int(r.headers["Retry-After"]) >= 1 for r in answers if r.status_code == 429)
    # another device's bucket is its own (D2 is refused for pairing, not for D1's flood)
    assert _post(url, pki, tokens["D2"], _reading("D2", "P1", 1)).status_code == 403


def test_the_rate_limit_refills_and_its_store_is_bounded():
    lim = RateLimit(rate=2.0, burst=2.0, max_keys=10)
    assert [lim.wait("d", 0.0) for _ in range(3)] == [0.0, 0.0, 0.5]
    assert lim.wait("d", 1.0) == 0.0  # two tokens back after a second
    for i in range(1000):
        lim.wait(f"x{i}", 0.0)
    assert len(lim._buckets) <= 10


def test_mutual_tls_refuses_a_device_without_a_certificate_of_the_ca(settings_factory,
                                                                     tmp_path, pki):
    s = settings_factory(devices_file=str(tmp_path / "devices.jsonl"),
                         ingest_port=supervise.free_port())
    topics.ensure(s)
    token = add_device(s.devices_file, "D1")
    gen = _serve(s, pki, client_ca=True)
    url = next(gen)
    try:
        for cert in (None, (str(pki / "rogue.pem"), str(pki / "rogue.key"))):
            with pytest.raises((httpx.ConnectError, httpx.ReadError, httpx.RemoteProtocolError,
                                ssl.SSLError)):
                _post(url, pki, token, _reading("D1", "P1", 1), cert=cert)
        # with the CA's certificate the request is heard (and refused: D1 is paired to nobody)
        r = _post(url, pki, token, _reading("D1", "P1", 1),
                  cert=(str(pki / "device.pem"), str(pki / "device.key")))
        assert r.status_code == 403
    finally:
        next(gen, None)


def test_plain_http_and_a_missing_devices_file_stop_with_one_line(settings_factory, tmp_path):
    with pytest.raises(ConfigError, match="DEVICES_FILE"):
        serve(settings_factory())
    with pytest.raises(ConfigError, match="--cert"):
        serve(settings_factory(devices_file=str(tmp_path / "d.jsonl")))
    with pytest.raises(ConfigError, match="device id"):
        add_device(str(tmp_path / "d.jsonl"), "D1\nforged")
