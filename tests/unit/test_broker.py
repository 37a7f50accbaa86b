"""The one connection description every Kafka client is built from."""

from __future__ import annotations

import asyncio
import ssl
import time
from types import SimpleNamespace

import pytest
from pydantic import SecretStr, ValidationError

from runtime.faust_app import broker_credentials, broker_options
from runtime.settings import Settings
from storage.broker import (
    AzureTokenProvider,
    BrokerConnection,
    eventhubs_endpoint,
    explain,
)

CONN = ("Endpoint=sb://acme-pay.servicebus.windows.net/;SharedAccessKeyName=Root;"
        "SharedAccessKey=c2VjcmV0LWtleS1ub3QtcmVhbA==")


def settings(**env: str) -> Settings:
    return Settings(**{k.lower(): v for k, v in env.items()})


def test_a_connection_string_alone_means_sasl_ssl_plain_on_the_namespace():
    conn = settings(EVENTHUBS_CONNECTION_STRING=CONN).broker
    assert conn.bootstrap == "acme-pay.servicebus.windows.net:9093"
    assert (conn.security_protocol, conn.sasl_mechanism) == ("SASL_SSL", "PLAIN")
    assert conn.username == "$ConnectionString"
    assert conn.password is not None and conn.password.get_secret_value() == CONN
    assert conn.eventhubs
    kwargs = conn.client_kwargs()
    assert kwargs["sasl_plain_password"] == CONN
    assert isinstance(kwargs["ssl_context"], ssl.SSLContext)
    assert kwargs["metadata_max_age_ms"] < 240_000
    assert kwargs["connections_max_idle_ms"] < 240_000
    assert kwargs["request_timeout_ms"] == 60_000


def test_broker_url_replaces_only_the_address(tmp_path):
    ca = tmp_path / "ca.pem"
    ca.write_text("not read here")
    s = settings(EVENTHUBS_CONNECTION_STRING=CONN, BROKER_URL="kafka://127.0.0.1:19093",
                 BROKER_CA_FILE=str(ca))
    conn = s.broker
    assert conn.bootstrap == "127.0.0.1:19093"
    assert conn.username == "$ConnectionString" and conn.eventhubs
    assert conn.ca_file == str(ca)
    assert s.faust_broker_url == "kafka://127.0.0.1:19093"


def test_plain_kafka_by_default_and_no_event_hubs_limits():
    conn = settings(BROKER_URL="kafka://h1:9092;kafka://h2:9092").broker
    assert conn.bootstrap == "h1:9092,h2:9092"
    assert conn.security_protocol == "PLAINTEXT" and not conn.eventhubs
    assert "metadata_max_age_ms" not in conn.client_kwargs()
    options = broker_options(conn)
    assert options["broker_credentials"] is None and options["topic_allow_declare"]


def test_event_hubs_is_recognised_by_its_host_too():
    conn = settings(BROKER_URL="kafka://ns.servicebus.windows.net:9093",
                    BROKER_SECURITY_PROTOCOL="SASL_SSL",
                    BROKER_SASL_MECHANISM="OAUTHBEARER").broker
    assert conn.eventhubs
    assert conn.oauth_scope == "https://ns.servicebus.windows.net/.default"
    options = broker_options(conn)
    assert not options["topic_allow_declare"]
    assert options["broker_session_timeout"] == 30
    assert options["consumer_connections_max_idle_ms"] < 240_000
    assert type(options["broker_credentials"]).__name__ == "OAuthCredentials"


@pytest.mark.parametrize("env, message", [
    ({"BROKER_SECURITY_PROTOCOL": "SASL_PLAINTEXT"}, "BROKER_SECURITY_PROTOCOL must be one of"),
    ({"BROKER_SECURITY_PROTOCOL": "SSL", "BROKER_CA_FILE": "/nonexistent/ca.pem"},
     "BROKER_CA_FILE '/nonexistent/ca.pem' is not a readable file"),
    ({"BROKER_SECURITY_PROTOCOL": "SASL_SSL", "BROKER_SASL_MECHANISM": "SCRAM-SHA-512"},
     "BROKER_SASL_MECHANISM must be one of"),
    ({"BROKER_SECURITY_PROTOCOL": "SASL_SSL"}, "SASL PLAIN needs BROKER_SASL_USERNAME"),
    ({"EVENTHUBS_CONNECTION_STRING": "SharedAccessKey=abc-secret-value"}, "no Endpoint=sb://"),
    ({"EVENTHUBS_CONNECTION_STRING": "Endpoint=sb://x.servicebus.windows.net/;"
      "SharedAccessKeyName=abc-secret-value"}, "no SharedAccessKey"),
])
def test_bad_broker_settings_say_what_is_wrong_and_never_echo_a_secret(env, message):
    with pytest.raises(ValidationError) as err:
        settings(**env)
    assert message in str(err.value)
    assert "abc-secret-value" not in str(err.value)


def test_plain_credentials_for_faust_and_no_password_in_reprs():
    conn = BrokerConnection("h:9093", "SASL_SSL", "PLAIN", "user", SecretStr("pa55-word"))
    creds = broker_credentials(conn)
    assert type(creds).__name__ == "SASLCredentials"
    assert creds.password == "pa55-word" and creds.ssl_context is not None
    assert "pa55-word" not in repr(conn) and "pa55-word" not in repr(creds)
    assert "pa55-word" not in conn.describe()


def test_explain_names_the_cause_without_the_secret():
    conn = settings(EVENTHUBS_CONNECTION_STRING=CONN).broker
    line = explain(RuntimeError("[Error 58] SaslAuthenticationFailed: Authentication failed"),
                   conn)
    assert line.startswith("the broker refused our credentials")
    assert "c2VjcmV0" not in line and "\n" not in line


def test_endpoint_parsing():
    assert eventhubs_endpoint(CONN) == "acme-pay.servicebus.windows.net:9093"
    assert eventhubs_endpoint(CONN.replace(".net/", ".net:5671/")) == \
        "acme-pay.servicebus.windows.net:9093"


class FakeCredential:
    def __init__(self, lifetime: float) -> None:
        self.lifetime = lifetime
        self.calls: list[tuple[str, ...]] = []

    def get_token(self, *scopes: str):
        self.calls.append(scopes)
        return SimpleNamespace(token=f"token-{len(self.calls)}",
                               expires_on=time.time() + self.lifetime)


def test_oauth_tokens_are_reused_until_near_expiry():
    long_lived = FakeCredential(3600)
    provider = AzureTokenProvider("https://ns.servicebus.windows.net/.default", long_lived)

    async def three() -> list[str]:
        return [await provider.token() for _ in range(3)]

    assert asyncio.run(three()) == ["token-1"] * 3
    assert long_lived.calls == [("https://ns.servicebus.windows.net/.default",)]

    short_lived = FakeCredential(60)  # inside the 5-minute refresh margin: always new
    provider = AzureTokenProvider("s", short_lived)
    assert asyncio.run(three()) == ["token-1", "token-2", "token-3"]
