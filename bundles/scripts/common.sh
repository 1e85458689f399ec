# Shared by the collection scripts: the download cache and offline mode.
#
# HANGAR_CACHE_DIR  where downloads are kept (default ~/.cache/hangar): a second
#                   build finds everything there and needs no network.
# HANGAR_OFFLINE=1  never download; a missing download is an error saying how to
#                   fill the cache (bundles/prime-cache.sh).

set -euo pipefail

CACHE_DIR="${HANGAR_CACHE_DIR:-${HOME}/.cache/hangar}"

die() {
    echo "$(basename "$0"): $*" >&2
    exit 1
}

offline() {
    [ "${HANGAR_OFFLINE:-0}" = "1" ]
}

need_network() {
    if offline; then
        die "$1 is not in the cache ${CACHE_DIR} and HANGAR_OFFLINE=1; run bundles/prime-cache.sh first"
    fi
}

sha256_of() {
    sha256sum "$1" | cut -d' ' -f1
}
