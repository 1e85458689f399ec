#!/usr/bin/env bash
# Runs Hangar's whole test suite on this machine, preparing it first: the
# Debian packages, Garage, cargo-nextest and the bundles' offline inputs are
# installed or built when missing (scripts/prepare.sh --for test), then every
# test of the workspace runs with cargo-nextest.
#
#   scripts/test.sh [NEXTEST ARGS...]     e.g. scripts/test.sh lifecycle (a name filter)
#
# Run as root on a fresh machine: packages are installed with apt-get and the
# tests start services as the unprivileged `hangar-test` user.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
"$root/scripts/prepare.sh" --for test
# shellcheck source=scripts/env.sh
source "$root/scripts/env.sh"
cd "$root"
# The tests run the workspace's binaries as processes; the first test of a run
# would build them inside its own time limit, so build them here first.
printf '==> building the binaries the tests run\n' >&2
cargo build --workspace --bins --quiet
printf '==> running the tests\n' >&2
exec cargo nextest run --workspace "$@"
