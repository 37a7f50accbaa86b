"""Start the worker with its secrets from Azure Key Vault, on a VM.

``payment-monitor-vault -- faust -A app worker`` (the systemd unit's ``ExecStart``)
fetches every secret ``KEYVAULT_SECRETS`` names from the vault at ``KEYVAULT_URL``
with the machine's managed identity, puts each in the environment under its setting's
name, and replaces itself with the command (``os.execvp``). The secrets are never
written to a file: they live in the worker process's environment, which only its own
user and root can read.

``KEYVAULT_SECRETS`` is ``SETTING=secret-name`` pairs separated by commas, for example
``DATABASE_PASSWORD=payment-monitor-db-password``. With a user-assigned identity, set
``AZURE_CLIENT_ID`` to its client id.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Mapping

from models.errors import PaymentMonitorError
from runtime.settings import VaultSettings

SecretGetter = Callable[[str], str]


class VaultError(PaymentMonitorError):
    """A secret could not be had: the message says which and why (never its value)."""


def parse_mapping(spec: str) -> dict[str, str]:
    """``"A=x,B=y"`` -> ``{"A": "x", "B": "y"}``; a clear error for anything else."""
    mapping: dict[str, str] = {}
    for part in filter(None, (p.strip() for p in spec.split(","))):
        setting, sep, secret = part.partition("=")
        setting, secret = setting.strip(), secret.strip()
        if not sep or not setting or not secret:
            raise VaultError(f"KEYVAULT_SECRETS: {part!r} is not SETTING=secret-name")
        if not setting.replace("_", "").isalnum() or setting.upper() != setting:
            raise VaultError(f"KEYVAULT_SECRETS: {setting!r} is not a setting name "
                             "(upper case, like DATABASE_PASSWORD)")
        if setting in mapping:
            raise VaultError(f"KEYVAULT_SECRETS names {setting} twice")
        mapping[setting] = secret
    if not mapping:
        raise VaultError("KEYVAULT_SECRETS names no secret")
    return mapping


def fetch(mapping: Mapping[str, str], get: SecretGetter) -> dict[str, str]:
    """Each setting's secret value, fetched with ``get``; fails on the first missing one."""
    values = {}
    for setting, name in mapping.items():
        try:
            value = get(name)
        except Exception as exc:  # the SDK's errors vary: say which secret, and why
            raise VaultError(f"cannot read Key Vault secret {name!r} for {setting}: "
                             f"{type(exc).__name__}") from None
        if not value:
            raise VaultError(f"Key Vault secret {name!r} for {setting} is empty")
        values[setting] = value
    return values


def key_vault_getter(url: str) -> SecretGetter:
    """A getter over Key Vault at ``url`` with the machine's managed identity."""
    from azure.identity import ManagedIdentityCredential
    from azure.keyvault.secrets import SecretClient

    client_id = os.environ.get("AZURE_CLIENT_ID") or None
    client = SecretClient(url, ManagedIdentityCredential(client_id=client_id))
    return lambda name: client.get_secret(name).value or ""


def main(argv: list[str] | None = None) -> None:
    args = sys.argv[1:] if argv is None else argv
    if args[:1] == ["--"]:
        args = args[1:]
    if not args:
        sys.exit("usage: payment-monitor-vault -- <command> [args...]")
    try:
        settings = VaultSettings()
        values = fetch(parse_mapping(settings.keyvault_secrets),
                       key_vault_getter(settings.keyvault_url))
    except (VaultError, ValueError) as exc:  # ValueError: pydantic, a setting missing
        sys.exit(f"payment-monitor-vault: {exc}")
    print(f"payment-monitor-vault: {len(values)} secret(s) from {settings.keyvault_url}: "
          f"{', '.join(sorted(values))}", file=sys.stderr, flush=True)
    os.execvpe(args[0], args, {**os.environ, **values})


if __name__ == "__main__":
    main()
