# Sourced by Hangar's scripts: where the tools and downloads they prepare are
# kept, and the PATH that finds them.
#
# HANGAR_CACHE      the cache (default ~/.cache/hangar): bin/ holds garage and
#                   cargo-nextest, bundles/ the offline inputs of the bundles,
#                   npm/ the npm packages the benchmarks run
# HANGAR_CACHE_DIR  the bundle scripts' download cache (default $HANGAR_CACHE/bundles)
export HANGAR_CACHE="${HANGAR_CACHE:-$HOME/.cache/hangar}"
export HANGAR_CACHE_DIR="${HANGAR_CACHE_DIR:-$HANGAR_CACHE/bundles}"
export GARAGE_VERSION=2.5.0
# The queue benchmark's peer (npm; 0.18 needs a newer node than Debian 12 has).
export GRAPHILE_WORKER_VERSION=0.17.3
case ":$PATH:" in
  *":$HANGAR_CACHE/bin:"*) ;;
  *) export PATH="$HANGAR_CACHE/bin:$HOME/.cargo/bin:$PATH" ;;
esac
