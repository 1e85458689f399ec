#!/bin/bash
# Writes OUT/release.toml: what a release is and which installed releases it
# upgrades from directly. The installer reads it (from the verified bundle)
# before an upgrade changes anything.
#
# usage: release-info.sh VERSION MIN_UPGRADE_FROM OUT
source "$(dirname "$0")/common.sh"

[ $# -eq 3 ] || die "usage: release-info.sh VERSION MIN_UPGRADE_FROM OUT"
version="$1"
min_upgrade_from="$2"
out="$3"
cat >"$out/release.toml" <<TOML
# Written when this release's bundle was built.
format = 1
version = "$version"
# The oldest installed release this one upgrades from directly; from an older
# one, upgrade to $min_upgrade_from (or a later release) first.
min_upgrade_from = "$min_upgrade_from"
TOML
