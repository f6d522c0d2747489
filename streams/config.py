"""All configuration, in one typed place, read from environment variables.

Every field of `Settings` is read from the environment variable of the same name in upper case
(`kafka_partitions` <- `KAFKA_PARTITIONS`). The table in README.md is generated from `FIELDS` and
checked by a test, so it cannot drift from this file; each row's meaning is the field's `doc(...)`.
"""

from __future__ import annotations

import os
import re
import ssl
import typing
from collections.abc import Mapping
from typing import Annotated, Any, Literal

import msgspec

from streams.errors import ConfigError
from twin.policy import DEFAULT_TOLERANCE_S, AlertPolicy


class Secret:
    """A string that never shows itself in repr, logs or `--help`."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def get(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return "Secret('********')"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(self._value)


Port = Annotated[int, msgspec.Meta(ge=1, le=65535)]
Positive = Annotated[int, msgspec.Meta(ge=1)]
PositiveFloat = Annotated[float, msgspec.Meta(gt=0)]
TopicName = Annotated[str, msgspec.Meta(pattern=r"^[A-Za-z0-9._-]{1,249}$")]


def doc(text: str) -> msgspec.Meta:
    """A setting's meaning for users (README table, config errors), kept on its field."""
    return msgspec.Meta(description=text)


class Settings(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=False):
    # Kafka. Unset bootstrap servers = start the embedded broker (demo) on BROKER_PORT.
    kafka_bootstrap_servers: Annotated[str | None, doc(
        "Kafka bootstrap servers, comma-separated host:port; unset: the demo starts the "
        "embedded broker")] = None
    kafka_security_protocol: Annotated[
        Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"],
        doc("PLAINTEXT, SSL, SASL_PLAINTEXT or SASL_SSL")] = "PLAINTEXT"
    kafka_sasl_mechanism: Annotated[
        Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] | None,
        doc("PLAIN, SCRAM-SHA-256 or SCRAM-SHA-512 (required with SASL_*)")] = None
    kafka_sasl_username: Annotated[str | None, doc("SASL user name")] = None
    kafka_sasl_password: Annotated[Secret | None, doc(
        "SASL password (secret: never logged)")] = None
    kafka_ssl_cafile: Annotated[str | None, doc(
        "PEM file of the CA that signed the brokers' certificates")] = None
    kafka_ssl_certfile: Annotated[str | None, doc("PEM client certificate for mutual TLS")] = None
    kafka_ssl_keyfile: Annotated[str | None, doc(
        "PEM private key of the client certificate")] = None
    kafka_ssl_key_password: Annotated[Secret | None, doc(
        "password of the client key (secret)")] = None
    # zstd by default: the worker's producer (aiokafka) keeps one produce request in flight per
    # broker, so at 10,000 patients x 1 Hz the bytes of twin.state and the changelog (~37 MB/s
    # uncompressed) were what a batch waited for: p99 0.95-2.1 s uncompressed (6 runs), 0.53-0.54
    # s with lz4 (3), 0.36-0.37 s with zstd (2), the worker's CPU the same within noise; and the
    # embedded broker, which keeps every byte, holds 27 % less than with lz4
    # (docs/performance.md, session 19 and "Broker memory").
    kafka_compression: Annotated[Literal["none", "lz4", "zstd", "gzip"], doc(
        "compression of produced batches: none, lz4, zstd or gzip (the worker's outputs are "
        "JSON and twin records, several times smaller compressed, and its producer's rate is "
        "bounded by the bytes it sends: docs/performance.md)")] = "zstd"
    kafka_partitions: Annotated[Positive, doc("partitions of each topic the project creates")] = 4
    kafka_replication_factor: Annotated[Positive, doc(
        "replication factor of created topics (3 on a real cluster)")] = 1
    broker_port: Annotated[Port, doc("loopback port of the embedded broker")] = 9092
    # The embedded broker keeps each record batch as an object of its own, ~1 KB besides its
    # bytes, for good (docs/tansu.md): the producers that write in bulk wait a little to fill them.
    # The demo's simulated devices send each second together: at 40 patients 30 ms put 0.36
    # vitals.raw batches a reading (was 0.91), as 100 and 250 ms did, and added no latency that
    # the benchmark could tell (docs/performance.md, "Broker memory"). A longer wait would gather
    # more from devices that send on their own clocks, and cap the ingest endpoint lower.
    broker_linger_ms: Annotated[int, msgspec.Meta(ge=0, le=1000), doc(
        "on the embedded broker, which keeps every record batch at about 1 KB of memory besides "
        "its bytes, the producers that write in bulk (the ingest endpoint, the MQTT bridge, the "
        "simulator) wait up to this long, milliseconds, for more records to send in one batch: "
        "a device message waits up to this much longer, and one ingest endpoint answers at most "
        "INGEST_THREADS messages per wait (0: no wait). Not used with a Kafka cluster")] = 30
    # Tansu's memory storage deletes nothing (docs/tansu.md), so the demo and `broker` watch it.
    broker_memory_warn_fraction: Annotated[float, msgspec.Meta(gt=0, le=1), doc(
        "the demo and `patient-twin broker` warn when the embedded broker holds this share of "
        "the memory it could grow into (its own plus what is available), and again each time "
        "half of the rest is gone")] = 0.5
    training: Annotated[bool, doc(
        "a training ward (`patient-twin train`): every topic name gets the prefix `training.` "
        "and the Faust app id `-training`, so training patients never meet real ones; every "
        "view and message says TRAINING")] = False
    app_id: Annotated[str, msgspec.Meta(pattern=r"^[A-Za-z0-9._-]+$"), doc(
        "Faust application id; also the consumer group of the workers")] = "patient-twin"
    worker_instance_id: Annotated[
        Annotated[str, msgspec.Meta(pattern=r"^[A-Za-z0-9._-]{1,249}$")] | None, doc(
        "static consumer-group membership on a Kafka cluster (group.instance.id): an id unique "
        "to this worker slot that stays the same across its restarts, e.g. `<host>-<slot>`; a "
        "restarted worker takes its partitions back at once instead of after the session "
        "timeout. Unset: dynamic membership. Never give two running workers the same id. "
        "Ignored on the embedded broker")] = None
    # Topics.
    topic_vitals_raw: Annotated[TopicName, doc(
        "device readings in, keyed by patient id")] = "vitals.raw"
    topic_vitals_dlq: Annotated[TopicName, doc(
        "rejected device messages with the reason")] = "vitals.dlq"
    topic_twin_state: Annotated[TopicName, doc("latest twin state per patient")] = "twin.state"
    topic_alerts: Annotated[TopicName, doc("alert events")] = "alerts"
    topic_patients: Annotated[TopicName, doc("patient registry (compacted)")] = "patients"
    topic_observations: Annotated[TopicName, doc(
        "clinicians' manual observations")] = "observations"
    topic_alert_actions: Annotated[TopicName, doc(
        "acknowledge and silence requests, keyed by patient id")] = "alert.actions"
    topic_subscriptions: Annotated[TopicName, doc(
        "webhook subscriptions (compacted, key = subscription id)")] = "alert.subscriptions"
    topic_webhook_dlq: Annotated[TopicName, doc(
        "webhook deliveries that failed every attempt, with their log")] = "alert.webhook-dlq"
    topic_audit: Annotated[TopicName, doc(
        "who viewed which patient, who acknowledged or silenced what (append-only)")] = "audit"
    topic_sessions: Annotated[TopicName, doc(
        "dashboard sessions logged out, shared by every replica (compacted, key = session "
        "id)")] = "dashboard.sessions"
    topic_presence: Annotated[TopicName, doc(
        "who is in the VR ward or on the ward page, where they stand and look, and the calls to "
        "a bed, shared by every replica (compacted, key = presence or ward)")] = (
        "dashboard.presence")
    topic_workers: Annotated[TopicName, doc(
        "workers' heartbeats: the partitions each live worker holds (key = worker)")] = "workers"
    # Worker batching: at most this many events per twin step, waiting at most this long. The
    # window is live latency (a reading waits for it); a backlog still gets big batches from
    # catch-up batching below, so a short window costs no throughput (docs/performance.md).
    worker_batch_max: Annotated[Positive, doc("most events per vectorised twin step")] = 5000
    worker_batch_seconds: Annotated[PositiveFloat, doc(
        "longest wait to fill a batch, seconds")] = 0.1
    # While behind (a backlog), batches of up to this many events, an event held up to this long
    # (streams.worker.catchup); 0 seconds: never hold.
    worker_catchup_max: Annotated[Positive, doc(
        "most events per twin step while the worker is behind (a backlog)")] = 20_000
    worker_catchup_seconds: Annotated[float, msgspec.Meta(ge=0, le=30), doc(
        "while behind, longest an event is held for a bigger batch, seconds (0: off)")] = 2.0
    worker_catchup_behind_s: Annotated[float, msgspec.Meta(ge=0, le=600), doc(
        "the worker counts as behind (and holds takes) only when a take's newest message is "
        "at least this many seconds old, by its Kafka timestamp")] = 1.0
    # A reading up to this much older than its twin is applied in time order (twin.history);
    # an older one is counted late and skipped. 0: every out-of-order reading is late.
    worker_late_tolerance_s: Annotated[float, msgspec.Meta(ge=0, le=600), doc(
        "a reading up to this many seconds older than its twin is applied in time order; older "
        "ones are counted late and skipped (0: off)")] = DEFAULT_TOLERANCE_S
    # twin.state is for people and the dashboard: one per patient per interval is what they can
    # take in; readings faster than that replace the waiting state (streams.worker.coalesce).
    twin_state_interval_s: Annotated[float, msgspec.Meta(ge=0, le=60), doc(
        "a patient's twin.state goes out at most once per this many seconds of its readings' "
        "time (and never twice within half of it on the worker's clock); the latest waits for "
        "its turn, except a patient's first state, a NEWS2 band change, an alert change or a "
        "clinician's observation, which go out at once (0: every state at once)")] = 1.0
    # Kafka Streams' commit interval: the twin table's changelog gets each patient's latest
    # record once per interval (not once per batch), and offsets follow once it is written.
    worker_commit_interval_s: Annotated[float, msgspec.Meta(gt=0, le=300), doc(
        "the worker writes its twins' changed records to the table's changelog and commits its "
        "offsets about this often, seconds; a crash re-reads about this much")] = 2.8
    # What a device may send (everything from outside is bounded): readings dated this far
    # before or after the worker's clock, messages this large, this many readings in one.
    ingest_ts_max_age_s: Annotated[float, msgspec.Meta(gt=0, le=30 * 86_400), doc(
        "a device reading dated more than this many seconds before the worker's clock is dead-"
        "lettered (`ts_out_of_range`)")] = 86_400.0
    ingest_ts_max_ahead_s: Annotated[float, msgspec.Meta(ge=0, le=86_400), doc(
        "a device reading dated more than this many seconds after the worker's clock is dead-"
        "lettered (`ts_out_of_range`): one reading from the future would make every later one "
        "late")] = 300.0
    ingest_max_message_bytes: Annotated[int, msgspec.Meta(ge=1024, le=8 * 1024 * 1024), doc(
        "largest device message, bytes (`oversized` beyond)")] = 256 * 1024
    ingest_max_readings: Annotated[int, msgspec.Meta(ge=1, le=10_000), doc(
        "most readings in one device message (a gateway upload; FHIR: readings, of at most one "
        "Observation per channel)")] = 500
    reject_alert_per_min: Annotated[float, msgspec.Meta(ge=0), doc(
        "a patient's readings rejected (late, duplicate, out of the time window) at this rate "
        "or more raise the technical alert `rejected_readings` with the cause (0: never)")] = 10.0
    # The devices' ingest endpoint (streams.ingest, `patient-twin ingest`).
    devices_file: Annotated[str | None, doc(
        "file of device credential hashes (`patient-twin devices add DEVICE_ID`); the ingest "
        "endpoint needs it")] = None
    ingest_host: Annotated[str, doc("ingest endpoint bind address")] = "127.0.0.1"
    ingest_port: Annotated[Port, doc("ingest endpoint port")] = 8060
    ingest_threads: Annotated[int, msgspec.Meta(ge=2, le=1024), doc(
        "ingest endpoint threads (each holds a request until Kafka has it)")] = 32
    ingest_rate_per_device: Annotated[float, msgspec.Meta(gt=0, le=1000), doc(
        "messages a second one device may send to the ingest endpoint (bursts of twice "
        "that); beyond: 429")] = 5.0
    ingest_allow_http: Annotated[bool, doc(
        "development only: take device readings over plain http or mqtt:// (the demo sets "
        "it; otherwise TLS: --cert and --key, mqtts://)")] = False
    mqtt_url: Annotated[str | None, doc(
        "the devices' MQTT broker for `patient-twin mqtt-bridge`, mqtts://host:port")] = None
    mqtt_username: Annotated[str, doc("the bridge's MQTT user")] = "patient-twin-bridge"
    mqtt_password: Annotated[Secret | None, doc("the bridge's MQTT password (secret)")] = None
    mqtt_ca_file: Annotated[str | None, doc(
        "PEM CA of the MQTT broker's certificate (default: the system's)")] = None
    mqtt_password_file: Annotated[str | None, doc(
        "Mosquitto's password file: `devices add` also writes the device's credential there, "
        "hashed in Mosquitto's format (its user name is the device id)")] = None
    # Worker metrics and health (/metrics, /healthz) on loopback; 0 = off.
    worker_metrics_port: Annotated[int, msgspec.Meta(ge=0, le=65535), doc(
        "port of the worker's /metrics and /healthz (0: off)")] = 9464
    worker_metrics_host: Annotated[str, doc("bind address of /metrics and /healthz")] = "127.0.0.1"
    # Liveness: exit (for the supervisor to restart) when stalled or out of the group this long.
    liveness_stall_seconds: Annotated[PositiveFloat, doc(
        "a worker with unread messages whose position has not moved this long exits non-zero "
        "for its supervisor to restart it")] = 60.0
    liveness_unassigned_seconds: Annotated[PositiveFloat, doc(
        "a worker with no partition while the topic grows this long exits non-zero")] = 120.0
    # InfluxDB sink. Unset INFLUX_URL = sink off.
    influx_url: Annotated[str | None, doc(
        "InfluxDB URL (http:// or https://); unset: sink off")] = None
    influx_token: Annotated[Secret | None, doc("InfluxDB API token (secret)")] = None
    influx_org: Annotated[str | None, doc("InfluxDB organisation")] = None
    influx_bucket: Annotated[str | None, doc("InfluxDB bucket")] = None
    influx_ca_cert: Annotated[str | None, doc(
        "PEM CA file for an InfluxDB behind a private CA")] = None
    influx_verify_ssl: Annotated[bool, doc("verify InfluxDB's TLS certificate (true/false)")] = True
    influx_max_buffer: Annotated[Positive, doc(
        "points buffered while InfluxDB is down; beyond it the oldest are dropped and "
        "counted")] = 100_000
    alert_trend_raise: Annotated[float, msgspec.Meta(ge=0.5, le=1.0), doc(
        "the drift trends' part of the predictive `news2_forecast` alert rises at this trend "
        "index (P(NEWS2 trigger within the hour) if the trends go on; not calibrated): lower "
        "gives more lead and more false alerts (docs/alerts.md); 1.0: almost never")] = \
        AlertPolicy.trend_raise
    alert_sepsis_risk: Annotated[bool, doc(
        "raise the predictive `sepsis_risk` alert at the shipped model's operating point "
        "(docs/validation.md); the risk is published in twin.state either way")] = True
    # A site's own fit (`patient-twin fit`) in place of the packaged one; checked at start-up.
    risk_params_file: Annotated[str | None, doc(
        "the risk models' parameter file the worker, `analyze` and `evaluate` use, e.g. a "
        "site's own from `patient-twin fit sepsis2019` (docs/risk-model.md); unset: the "
        "packaged twin/risk_params.json. A file without a usable `sepsis_risk` model stops "
        "every command but `fit` and `validate` at start")] = None
    alert_silence_max_minutes: Annotated[int, msgspec.Meta(ge=1, le=24 * 60), doc(
        "longest silence of a patient's alerts a clinician may set, minutes (the dashboard "
        "offers no longer, the API and the worker refuse longer)")] = \
        int(AlertPolicy.max_silence_s // 60)
    # The dispatcher's watchdog: a partition no live worker has held this long leaves its
    # patients unmonitored, which raises `monitoring_stopped` for each (streams.watchdog).
    watchdog_silent_s: Annotated[float, msgspec.Meta(ge=5, le=3600), doc(
        "the dispatcher raises `monitoring_stopped` for every admitted patient of a partition "
        "no live worker has held this many seconds (worker heartbeats every 5 s)")] = 15.0
    # Alert subscribers: webhooks and the HTTP API.
    api_tokens_file: Annotated[str | None, doc(
        "file of API token hashes (`patient-twin tokens add NAME`); unset: the HTTP API refuses"
        " every request")] = None
    api_max_subscriptions: Annotated[int, msgspec.Meta(ge=1, le=10_000), doc(
        "webhook subscriptions one API token may hold")] = 20
    webhook_max_attempts: Annotated[Positive, doc(
        "delivery attempts per webhook before its dead letter")] = 5
    webhook_backoff_seconds: Annotated[PositiveFloat, doc(
        "first retry delay; doubles per attempt")] = 1.0
    webhook_timeout_seconds: Annotated[PositiveFloat, doc(
        "HTTP timeout of one webhook delivery")] = 5.0
    webhook_allow_loopback_http: Annotated[bool, doc(
        "development only: let webhooks use plain http to a loopback address (otherwise "
        "https to a public address only)")] = False
    # Dashboard.
    dashboard_host: Annotated[str, doc("dashboard bind address")] = "127.0.0.1"
    dashboard_port: Annotated[Port, doc("dashboard port")] = 8050
    # Web server threads. An open patient page's live push (and an API alert stream) holds one;
    # live pushes take at most half, pages beyond that poll instead.
    dashboard_threads: Annotated[int, msgspec.Meta(ge=8, le=1024), doc(
        "web server threads; each open patient page's live push holds one (pushes use at most "
        "half; pages beyond that poll every 0.5 s instead)")] = 64
    session_idle_minutes: Annotated[int, msgspec.Meta(ge=1, le=24 * 60), doc(
        "a dashboard session ends after this long without its user doing anything (pages "
        "polling by themselves do not count)")] = 15
    session_max_hours: Annotated[int, msgspec.Meta(ge=1, le=7 * 24), doc(
        "a dashboard session ends this long after its login, whatever its use")] = 12
    dashboard_allow_http: Annotated[bool, doc(
        "development only: serve the dashboard over plain http with cookies not marked "
        "Secure (the demo sets it; otherwise use --https or a TLS proxy)")] = False
    users_file: Annotated[str | None, doc(
        "clinician accounts (`patient-twin users add NAME`), passwords hashed with scrypt; the "
        "dashboard needs it (no anonymous access)")] = None
    dashboard_origins: Annotated[str | None, doc(
        "comma-separated origins (scheme://host[:port]) whose pages may send the dashboard "
        "state-changing requests besides its own host, e.g. the address of a TLS proxy that "
        "rewrites the Host header; a browser request from any other origin is refused (403)")] \
        = None
    dashboard_secret_key: Annotated[Secret | None, doc(
        "key that signs session cookies (secret); set the same value on every replica; unset: a"
        " random key per process (sessions end on restart)")] = None
    dashboard_tls_dir: Annotated[str, doc(
        "where `dashboard --https` keeps its generated self-signed "
        "certificate")] = "~/.patient-twin/tls"
    log_level: Annotated[Literal["DEBUG", "INFO", "WARNING", "ERROR"], doc(
        "DEBUG, INFO, WARNING or ERROR")] = "INFO"

    @property
    def embedded_broker(self) -> bool:
        return self.kafka_bootstrap_servers is None

    @property
    def bootstrap(self) -> str:
        return self.kafka_bootstrap_servers or f"127.0.0.1:{self.broker_port}"

    @property
    def influx_enabled(self) -> bool:
        return self.influx_url is not None


def _descriptions() -> dict[str, str]:
    hints = typing.get_type_hints(Settings, include_extras=True)
    return {f: next(m.description for m in getattr(hints[f], "__metadata__", ())
                    if isinstance(m, msgspec.Meta) and m.description)
            for f in Settings.__struct_fields__}


# What each variable means, from the fields' `doc(...)`: the README table and every config error
# quote it, so it is written once, beside the field.
DOCS: dict[str, str] = _descriptions()
FIELDS: tuple[str, ...] = Settings.__struct_fields__
SECRETS = frozenset(f for f in FIELDS if "password" in f or "token" in f or "secret" in f)


def env_name(field: str) -> str:
    return field.upper()


def _dec_hook(tp: type, obj: Any) -> Any:
    if tp is Secret and isinstance(obj, str):
        return Secret(obj)
    raise NotImplementedError


def to_env(settings: Settings, base: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment that makes a child process load exactly these settings (secrets in
    clear: for child processes only). `base` (default os.environ) minus any project variable."""
    prefixes = tuple({env_name(f).split("_")[0] + "_" for f in FIELDS})
    env = {k: v for k, v in (os.environ if base is None else base).items()
           if not k.startswith(prefixes)}
    for f in FIELDS:
        v = getattr(settings, f)
        if v is None:
            continue
        env[env_name(f)] = v.get() if isinstance(v, Secret) else str(v).lower() \
            if isinstance(v, bool) else str(v)
    env["PYTHONUNBUFFERED"] = "1"
    return env


def load(environ: Mapping[str, str] | None = None) -> Settings:
    """Read `Settings` from `environ` (default: the process environment).

    Raises ConfigError with one line naming the variable and what it expects. An empty variable
    counts as unset.
    """
    environ = os.environ if environ is None else environ
    raw = {f: environ[env_name(f)] for f in FIELDS if environ.get(env_name(f), "") != ""}
    try:
        settings = msgspec.convert(raw, Settings, strict=False, dec_hook=_dec_hook)
    except msgspec.ValidationError as exc:
        msg = str(exc)
        m = re.search(r"at `\$\.(\w+)`", msg)
        field = m.group(1) if m else ""
        what = msg.split(" - at ")[0].replace("`", "")
        shown = "***" if field in SECRETS else raw.get(field, "")
        raise ConfigError(
            f"{env_name(field)}={shown!s}: {what.lower()} ({DOCS.get(field, '')})"
        ) from exc
    _check(settings)
    return training_namespace(settings) if settings.training else settings


TRAINING_PREFIX = "training."


def training_namespace(s: Settings) -> Settings:
    """The same settings on the training ward's own topics and consumer group: nothing a
    training worker, dashboard or simulator reads or writes is a real patient's topic."""
    topics = {f: TRAINING_PREFIX + getattr(s, f) for f in FIELDS
              if f.startswith("topic_") and not getattr(s, f).startswith(TRAINING_PREFIX)}
    app_id = s.app_id if s.app_id.endswith("-training") else s.app_id + "-training"
    return msgspec.structs.replace(s, app_id=app_id, **topics)


def _check(s: Settings) -> None:
    if s.kafka_bootstrap_servers is not None:
        for hp in s.kafka_bootstrap_servers.split(","):
            if not re.fullmatch(r"[^\s:,]+:\d{1,5}", hp.strip()):
                raise ConfigError(
                    f"KAFKA_BOOTSTRAP_SERVERS: {hp.strip()!r} is not host:port "
                    "(expected comma-separated host:port pairs)")
    if s.kafka_security_protocol.startswith("SASL"):
        if not (s.kafka_sasl_mechanism and s.kafka_sasl_username and s.kafka_sasl_password):
            raise ConfigError(
                f"KAFKA_SECURITY_PROTOCOL={s.kafka_security_protocol} needs "
                "KAFKA_SASL_MECHANISM, KAFKA_SASL_USERNAME and KAFKA_SASL_PASSWORD")
    for f in ("kafka_ssl_cafile", "kafka_ssl_certfile", "kafka_ssl_keyfile", "influx_ca_cert"):
        path = getattr(s, f)
        if path is not None and not os.path.isfile(path):
            raise ConfigError(f"{env_name(f)}={path}: no such file ({DOCS[f]})")
    if s.dashboard_secret_key is not None and len(s.dashboard_secret_key.get()) < 32:
        # it signs session cookies: a short key can be guessed offline from one cookie
        raise ConfigError("DASHBOARD_SECRET_KEY: use at least 32 random characters, e.g. the "
                          "output of: python3 -c 'import secrets; print(secrets.token_hex(32))'")
    if (s.kafka_ssl_certfile is None) != (s.kafka_ssl_keyfile is None):
        raise ConfigError("KAFKA_SSL_CERTFILE and KAFKA_SSL_KEYFILE must be set together")
    if s.influx_url is not None:
        if not re.fullmatch(r"https?://[^\s/]+(/\S*)?", s.influx_url):
            raise ConfigError(f"INFLUX_URL={s.influx_url}: expected http://host:port or https://…")
        missing = [env_name(f) for f in ("influx_token", "influx_org", "influx_bucket")
                   if getattr(s, f) is None]
        if missing:
            raise ConfigError(f"INFLUX_URL is set, so {', '.join(missing)} must be set too")


def ssl_context(s: Settings) -> ssl.SSLContext | None:
    """The one TLS context both Kafka clients use (None for PLAINTEXT / SASL_PLAINTEXT)."""
    if s.kafka_security_protocol not in ("SSL", "SASL_SSL"):
        return None
    ctx = ssl.create_default_context(cafile=s.kafka_ssl_cafile)
    if s.kafka_ssl_certfile:
        pw = s.kafka_ssl_key_password.get() if s.kafka_ssl_key_password else None
        ctx.load_cert_chain(s.kafka_ssl_certfile, s.kafka_ssl_keyfile, password=pw)
    return ctx


def kafka_python_config(s: Settings) -> dict[str, Any]:
    """Connection settings for kafka-python clients (producer, consumer, admin)."""
    cfg: dict[str, Any] = {
        "bootstrap_servers": s.bootstrap.split(","),
        "security_protocol": s.kafka_security_protocol,
    }
    ctx = ssl_context(s)
    if ctx is not None:
        cfg["ssl_context"] = ctx
    if s.kafka_security_protocol.startswith("SASL"):
        cfg["sasl_mechanism"] = s.kafka_sasl_mechanism
        cfg["sasl_plain_username"] = s.kafka_sasl_username
        cfg["sasl_plain_password"] = s.kafka_sasl_password.get() if s.kafka_sasl_password else ""
    return cfg


# The embedded Tansu broker answers a fetch only when the fetch's max wait runs out, even when
# records arrive sooner: measured at Faust's 1,500 ms a record took 388 ms (median) to be
# delivered, 743 ms at most; at 100 ms, 23 ms. Consumers wait 100 ms there; real Kafka answers
# as soon as data arrives and keeps the clients' defaults.
EMBEDDED_FETCH_MAX_WAIT_MS = 100


def kafka_python_consumer_config(s: Settings) -> dict[str, Any]:
    """kafka-python consumer settings: the connection plus what the broker needs."""
    cfg = kafka_python_config(s)
    # A topic is created by `patient-twin topics` (or the broker command) with its partitions
    # and config, never by a reader asking for it: after a restart of a memory-only broker, a
    # metadata request that may create topics made them with the broker's default partition
    # count and no config before `topics` could (tried, docs/tansu.md).
    cfg["allow_auto_create_topics"] = False
    if s.embedded_broker:
        cfg["fetch_max_wait_ms"] = EMBEDDED_FETCH_MAX_WAIT_MS
    return cfg


def kafka_python_producer_config(s: Settings, *, streamed: bool = False) -> dict[str, Any]:
    """kafka-python producer settings: the connection plus what the broker needs.

    streamed: for topics read only by stream consumers, which take every record they fetch and
    never stop at the high watermark (vitals.raw, observations: the worker's agent), which keep
    normal batching on the embedded broker too, and there wait BROKER_LINGER_MS to fill their
    batches (the producers that write in bulk: ingest endpoint, MQTT bridge, simulator).
    """
    cfg = kafka_python_config(s)
    cfg["compression_type"] = None if s.kafka_compression == "none" else s.kafka_compression
    cfg["allow_auto_create_topics"] = False  # as for consumers
    if s.embedded_broker:
        # An idempotent producer keeps its producer id across a broker restart and asks to bump
        # its epoch; the restarted memory-only Tansu does not know the id and answers every
        # InitProducerId with UnknownError, so the producer stayed failed for good (the
        # simulator's every send, tried). Real clusters keep producer ids and idempotence.
        cfg["enable_idempotence"] = False
    if s.embedded_broker and streamed:
        # It keeps every batch, ~1 KB each besides its bytes, and can delete none; one batch per
        # device message made 1.5 batches a reading at 40 patients (docs/performance.md, "Broker
        # memory"). A record waits up to BROKER_LINGER_MS for others to join its batch.
        cfg["linger_ms"] = s.broker_linger_ms
    if s.embedded_broker and not streamed:
        # The embedded Tansu broker reports a high watermark of the last record batch's base
        # offset + 1, so the tail of a multi-record batch stays invisible to consumers that stop at
        # the watermark (Faust's table recovery). One record per batch keeps it exact
        # (docs/tansu.md). Real Kafka keeps normal batching.
        cfg["batch_size"] = 1
    return cfg


def faust_broker_config(s: Settings) -> dict[str, Any]:
    """The same connection settings, in the form faust.App takes them."""
    import faust  # heavy import kept out of the CLI's fast path

    cfg: dict[str, Any] = {
        "broker": ";".join(f"kafka://{hp.strip()}" for hp in s.bootstrap.split(",")),
    }
    if s.kafka_compression != "none":
        cfg["producer_compression_type"] = s.kafka_compression
    ctx = ssl_context(s)
    if s.kafka_security_protocol.startswith("SASL"):
        cfg["broker_credentials"] = faust.SASLCredentials(
            username=s.kafka_sasl_username,
            password=s.kafka_sasl_password.get() if s.kafka_sasl_password else "",
            mechanism=s.kafka_sasl_mechanism,
            ssl_context=ctx,
        )
    elif ctx is not None:
        cfg["broker_credentials"] = ctx
    return cfg


def markdown_table() -> str:
    """The configuration table of README.md (a test keeps the two identical)."""
    defaults = Settings()
    lines = ["| variable | default | meaning |", "| --- | --- | --- |"]
    for f in FIELDS:
        d = getattr(defaults, f)
        shown = "unset" if d is None else str(d).lower() if isinstance(d, bool) else str(d)
        lines.append(f"| `{env_name(f)}` | {shown} | {DOCS[f]} |")
    return "\n".join(lines)
