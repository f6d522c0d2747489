import ssl
import subprocess

import pytest

from streams import config
from streams.errors import ConfigError


def test_defaults_mean_embedded_broker_and_sink_off():
    s = config.load({})
    assert s.embedded_broker and s.bootstrap == "127.0.0.1:9092"
    assert not s.influx_enabled
    assert s.kafka_partitions == 4 and s.topic_vitals_raw == "vitals.raw"


def test_values_are_typed():
    s = config.load({"KAFKA_PARTITIONS": "8", "INFLUX_VERIFY_SSL": "false",
                     "KAFKA_BOOTSTRAP_SERVERS": "k1:9093,k2:9093"})
    assert s.kafka_partitions == 8 and s.influx_verify_ssl is False
    assert not s.embedded_broker
    assert config.kafka_python_config(s)["bootstrap_servers"] == ["k1:9093", "k2:9093"]


@pytest.mark.parametrize("env,names", [
    ({"KAFKA_PARTITIONS": "many"}, "KAFKA_PARTITIONS"),
    ({"KAFKA_PARTITIONS": "0"}, "KAFKA_PARTITIONS"),
    ({"DASHBOARD_PORT": "70000"}, "DASHBOARD_PORT"),
    ({"KAFKA_SECURITY_PROTOCOL": "TLS"}, "KAFKA_SECURITY_PROTOCOL"),
    ({"KAFKA_BOOTSTRAP_SERVERS": "localhost"}, "KAFKA_BOOTSTRAP_SERVERS"),
    ({"KAFKA_SECURITY_PROTOCOL": "SASL_SSL"}, "KAFKA_SASL_MECHANISM"),
    ({"INFLUX_URL": "influx:8086"}, "INFLUX_URL"),
    ({"INFLUX_URL": "https://influx:8086"}, "INFLUX_TOKEN"),
    ({"KAFKA_SSL_CAFILE": "/nonexistent/ca.pem"}, "KAFKA_SSL_CAFILE"),
    ({"TOPIC_ALERTS": "bad topic"}, "TOPIC_ALERTS"),
    ({"LOG_LEVEL": "LOUD"}, "LOG_LEVEL"),
    ({"DASHBOARD_SECRET_KEY": "hunter2"}, "DASHBOARD_SECRET_KEY"),
    ({"ALERT_SILENCE_MAX_MINUTES": "5256000"}, "ALERT_SILENCE_MAX_MINUTES"),
])
def test_bad_value_is_one_line_naming_the_variable(env, names):
    with pytest.raises(ConfigError) as exc:
        config.load(env)
    msg = str(exc.value)
    assert names in msg and "\n" not in msg
    assert "hunter2" not in msg  # a secret's value is never echoed


def test_secrets_never_show():
    env = {"KAFKA_SECURITY_PROTOCOL": "SASL_PLAINTEXT", "KAFKA_SASL_MECHANISM": "PLAIN",
           "KAFKA_SASL_USERNAME": "svc", "KAFKA_SASL_PASSWORD": "hunter2-secret",
           "INFLUX_URL": "https://influx.example:8086", "INFLUX_TOKEN": "tok-very-secret",
           "INFLUX_ORG": "o", "INFLUX_BUCKET": "b"}
    s = config.load(env)
    assert "hunter2" not in repr(s) and "tok-very" not in repr(s)
    assert s.kafka_sasl_password.get() == "hunter2-secret"
    kp = config.kafka_python_config(s)
    assert kp["sasl_plain_password"] == "hunter2-secret" and kp["sasl_mechanism"] == "PLAIN"
    with pytest.raises(ConfigError) as exc:
        config.load({**env, "INFLUX_TOKEN": "tok-very-secret", "INFLUX_VERIFY_SSL": "perhaps"})
    assert "tok-very" not in str(exc.value)


def test_tls_context_is_shared_by_kafka_python_and_faust(tmp_path):
    ca = tmp_path / "ca.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
                    "-subj", "/CN=test-ca", "-keyout", str(tmp_path / "ca.key"), "-out", str(ca)],
                   check=True, capture_output=True)
    env = {"KAFKA_BOOTSTRAP_SERVERS": "k:9093", "KAFKA_SECURITY_PROTOCOL": "SASL_SSL",
           "KAFKA_SASL_MECHANISM": "SCRAM-SHA-512", "KAFKA_SASL_USERNAME": "u",
           "KAFKA_SASL_PASSWORD": "p", "KAFKA_SSL_CAFILE": str(ca)}
    s = config.load(env)
    kp = config.kafka_python_config(s)
    fc = config.faust_broker_config(s)
    assert kp["security_protocol"] == "SASL_SSL"
    assert isinstance(kp["ssl_context"], ssl.SSLContext)
    cred = fc["broker_credentials"]
    assert cred.mechanism.value == "SCRAM-SHA-512" and cred.username == "u"
    assert cred.protocol.value == "SASL_SSL" and isinstance(cred.ssl_context, ssl.SSLContext)
    assert fc["broker"] == "kafka://k:9093"


def test_bulk_producers_linger_on_the_embedded_broker_only():
    """BROKER_LINGER_MS: the producers that write in bulk (streamed) wait to fill batches on the
    embedded broker, which keeps every batch; the one-record batches of the producers whose
    readers stop at the end offset stay (docs/tansu.md); a Kafka cluster keeps the defaults."""
    embedded = config.load({})
    assert embedded.broker_linger_ms == 30
    bulk = config.kafka_python_producer_config(embedded, streamed=True)
    assert bulk["linger_ms"] == 30 and "batch_size" not in bulk
    exact = config.kafka_python_producer_config(embedded)
    assert exact["batch_size"] == 1 and "linger_ms" not in exact
    off = config.load({"BROKER_LINGER_MS": "0"})
    assert config.kafka_python_producer_config(off, streamed=True)["linger_ms"] == 0
    cluster = config.load({"KAFKA_BOOTSTRAP_SERVERS": "k:9092", "BROKER_LINGER_MS": "250"})
    assert "linger_ms" not in config.kafka_python_producer_config(cluster, streamed=True)
    with pytest.raises(ConfigError, match="BROKER_LINGER_MS"):
        config.load({"BROKER_LINGER_MS": "5000"})


def test_readme_configuration_table_is_current():
    from pathlib import Path

    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    assert config.markdown_table() in readme


def test_trend_raise_below_the_clear_level_is_refused():
    """Raising the trend alert below `p_clear` (0.5) would leave it nothing to clear under."""
    assert config.load({"ALERT_TREND_RAISE": "0.9"}).alert_trend_raise == 0.9
    with pytest.raises(ConfigError, match="ALERT_TREND_RAISE"):
        config.load({"ALERT_TREND_RAISE": "0.3"})
