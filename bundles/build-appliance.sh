#!/bin/bash
# Builds the appliance bundle: our binaries, embedded PostgreSQL 15, the object
# store, Terraform 1.0.3 and an empty provider mirror, for linux x86_64.
#
#   bundles/build-appliance.sh [--release] --key KEY --out FILE
#
# Options are those of build-bundle.sh.
exec "$(dirname "$0")/build-bundle.sh" appliance "$@"
