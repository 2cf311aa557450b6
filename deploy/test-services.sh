#!/usr/bin/env bash
# Start the services the tests need on loopback and non-default ports, run a command, stop them.
# Usage: deploy/test-services.sh run CMD...
# Services: none are needed by the current suite beyond embedded Qdrant (in process). Later issues add Redis and
# Orthanc here; each is installed with apt-get when missing.
set -euo pipefail
[ "${1:-}" = run ] || { echo "usage: $0 run CMD..." >&2; exit 2; }
shift
"$@"
