#!/usr/bin/env bash
# Install (or upgrade) a worker on a VM from the project's wheel, as root:
#
#   deploy/vm/install.sh payment_monitor-0.1.0-py3-none-any.whl [settings.conf]
#
# It makes the payment-monitor user and its directories, a venv in
# /opt/payment-monitor/venv with the wheel, the env file
# /etc/payment-monitor/payment-monitor.env from the template (only if there is none:
# an upgrade keeps the operator's edits), and the systemd unit. settings.conf fills the
# template's @NAME@ fields (NAME=value lines); without it the fields stay for an
# operator to fill. It neither migrates the database (the CD pipeline does, before it
# restarts the unit) nor starts the worker on a first install.
#
# The dependencies come from requirements.lock (LOCK, default: the repository's, beside
# deploy/), each file checked against its hash, so every VM runs the versions CI tested;
# the wheel is installed with no dependency of its own choosing.
#
# PREFIX (default /) installs under another root, for tests: then no user is made and
# systemctl is not called.
set -euo pipefail

wheel=${1:?usage: install.sh <wheel> [settings.conf]}
conf=${2:-}
here=$(cd "$(dirname "$0")" && pwd)
prefix=${PREFIX:-/}
python=${PYTHON:-python3}
lock=${LOCK:-$here/../../requirements.lock}
opt="$prefix/opt/payment-monitor"
etc="$prefix/etc/payment-monitor"
var="$prefix/var/lib/payment-monitor"
unit_dir="$prefix/etc/systemd/system"

step() { printf '==> %s\n' "$*"; }

[[ -f "$wheel" ]] || { echo "no such wheel: $wheel" >&2; exit 2; }
[[ -z "$conf" || -f "$conf" ]] || { echo "no such settings file: $conf" >&2; exit 2; }
[[ -f "$lock" ]] || { echo "no lock file at $lock: set LOCK to the release's requirements.lock" >&2; exit 2; }
"$python" -c 'import sys; sys.exit(sys.version_info < (3, 11))' ||
  { echo "Python 3.11 or newer is needed ($python)" >&2; exit 2; }

if [[ "$prefix" == / ]]; then
  step "user payment-monitor"
  id payment-monitor >/dev/null 2>&1 ||
    useradd --system --home-dir /var/lib/payment-monitor --shell /usr/sbin/nologin payment-monitor
  owner=(-o payment-monitor -g payment-monitor)
else
  owner=()
fi

step "directories"
install -d -m 0755 "$opt" "$unit_dir"
install -d -m 0750 "${owner[@]}" "$var" "$var/faust"
install -d -m 0750 "$etc"

step "venv $opt/venv from $(basename "$wheel")"
# A running worker keeps its open files: the old venv is moved aside, and put back if
# the new one cannot be built.
rm -rf "$opt/venv.old"
[[ -d "$opt/venv" ]] && mv "$opt/venv" "$opt/venv.old"
restore() { rm -rf "$opt/venv"; [[ -d "$opt/venv.old" ]] && mv "$opt/venv.old" "$opt/venv"; }
if ! { "$python" -m venv "$opt/venv" &&
       "$opt/venv/bin/pip" install --quiet --disable-pip-version-check --require-hashes \
         -r "$lock" &&
       "$opt/venv/bin/pip" install --quiet --disable-pip-version-check --no-deps "$wheel" &&
       "$opt/venv/bin/python" -c 'import app.vault, runtime.settings'; }; then
  restore
  echo "the venv could not be built; the previous one is back in place" >&2
  exit 1
fi
rm -rf "$opt/venv.old"

env_file="$etc/payment-monitor.env"
if [[ -f "$env_file" ]]; then
  step "keeping $env_file"
else
  step "writing $env_file"
  cp "$here/payment-monitor.env.template" "$env_file.tmp"
  if [[ -n "$conf" ]]; then
    while IFS='=' read -r name value; do
      [[ -z "$name" || "$name" == \#* ]] && continue
      [[ "$name" =~ ^[A-Z_]+$ ]] || { echo "bad line in $conf: $name" >&2; exit 2; }
      escaped=$(printf '%s' "$value" | sed 's/[&|\\]/\\&/g')
      sed -i "s|@$name@|$escaped|g" "$env_file.tmp"
    done < "$conf"
  fi
  chmod 0640 "$env_file.tmp"
  [[ "$prefix" == / ]] && chgrp payment-monitor "$env_file.tmp"
  mv "$env_file.tmp" "$env_file"
  if grep -q '@[A-Z_]*@' "$env_file"; then
    echo "fill in these fields of $env_file before starting:" >&2
    grep -o '@[A-Z_]*@' "$env_file" | sort -u >&2
  fi
fi

step "systemd unit"
install -m 0644 "$here/payment-monitor.service" "$unit_dir/payment-monitor.service"
if [[ "$prefix" == / ]]; then
  systemctl daemon-reload
  systemctl enable payment-monitor.service
  step "done: run the migrations (CD), then systemctl restart payment-monitor"
else
  step "done (under $prefix)"
fi
