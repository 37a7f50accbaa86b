"""The VM launcher: Key Vault secrets into the worker's environment, never onto disk."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

from app.vault import VaultError, fetch, parse_mapping


def test_the_mapping_names_settings_and_secrets():
    assert parse_mapping("DATABASE_PASSWORD=pm-db, EVENTHUBS_CONNECTION_STRING=pm-eh") == {
        "DATABASE_PASSWORD": "pm-db", "EVENTHUBS_CONNECTION_STRING": "pm-eh"}


@pytest.mark.parametrize("spec, error", [
    ("", "names no secret"),
    ("DATABASE_PASSWORD", "is not SETTING=secret-name"),
    ("DATABASE_PASSWORD=", "is not SETTING=secret-name"),
    ("database_password=x", "is not a setting name"),
    ("A=x,A=y", "names A twice"),
])
def test_a_bad_mapping_is_refused_clearly(spec, error):
    with pytest.raises(VaultError, match=error):
        parse_mapping(spec)


def test_a_missing_secret_names_itself_not_a_value():
    def get(name: str) -> str:
        if name == "pm-eh":
            raise LookupError("SecretNotFound")
        return "s3cret"

    with pytest.raises(VaultError) as err:
        fetch({"DATABASE_PASSWORD": "pm-db", "EVENTHUBS_CONNECTION_STRING": "pm-eh"}, get)
    assert "'pm-eh' for EVENTHUBS_CONNECTION_STRING: LookupError" in str(err.value)
    assert "s3cret" not in str(err.value)
    with pytest.raises(VaultError, match="is empty"):
        fetch({"DATABASE_PASSWORD": "pm-db"}, lambda name: "")


def test_the_command_runs_with_the_secrets_in_its_environment_only(tmp_path):
    """The launcher execs the command with the secrets set; nothing is written."""
    script = textwrap.dedent("""
        import sys
        import app.vault as vault
        vault.key_vault_getter = lambda url: {"pm-db": "from-the-vault"}.__getitem__
        vault.main(sys.argv[1:])
    """)
    env = {"PATH": "/usr/bin:/bin", "KEYVAULT_URL": "https://pm-dev-kv.vault.azure.net/",
           "KEYVAULT_SECRETS": "DATABASE_PASSWORD=pm-db"}
    out = subprocess.run(
        [sys.executable, "-c", script, "--", sys.executable, "-c",
         "import os; print(os.environ['DATABASE_PASSWORD'])"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60, check=False)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "from-the-vault"
    assert "1 secret(s) from https://pm-dev-kv.vault.azure.net/: DATABASE_PASSWORD" in out.stderr
    assert "from-the-vault" not in out.stderr
    assert list(tmp_path.iterdir()) == []


def test_without_its_settings_the_launcher_says_what_is_missing(tmp_path):
    out = subprocess.run([sys.executable, "-m", "app.vault", "--", "true"], cwd=tmp_path,
                         env={"PATH": "/usr/bin:/bin"}, capture_output=True, text=True,
                         timeout=60, check=False)
    assert out.returncode == 1
    assert "keyvault_url" in out.stderr.lower()
