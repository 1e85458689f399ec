#!/bin/bash
# Builds the worker bundle (see recipes/worker.toml).
#
#   bundles/build-worker.sh [--release] --key KEY --out FILE
#
# Options are those of build-bundle.sh.
exec "$(dirname "$0")/build-bundle.sh" worker "$@"
