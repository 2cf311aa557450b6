#!/usr/bin/env bash
# Make sure the real services the tests use are installed, then run a command.
# Usage: deploy/test-services.sh run CMD...
#
# The tests start their own instances (tests/services.py): Redis, Orthanc and headless Chromium, each on a free
# loopback port with its own temp dir, waited for by readiness checks, stopped after. This script only installs
# what is missing (Debian packages, so CI on a fresh machine has them): redis-server, orthanc + orthanc-dicomweb,
# chromium + chromium-driver, poppler-utils (pdftoppm).
set -euo pipefail
[ "${1:-}" = run ] || { echo "usage: $0 run CMD..." >&2; exit 2; }
shift

need=()
command -v redis-server >/dev/null 2>&1 || need+=(redis-server)
command -v Orthanc >/dev/null 2>&1 || need+=(orthanc)
[ -e /usr/share/orthanc/plugins/libOrthancDicomWeb.so ] || need+=(orthanc-dicomweb)
command -v chromium >/dev/null 2>&1 || need+=(chromium)
command -v chromedriver >/dev/null 2>&1 || need+=(chromium-driver)
command -v pdftoppm >/dev/null 2>&1 || need+=(poppler-utils)  # renders the similar-cases report
if [ "${#need[@]}" -gt 0 ]; then
  echo "test-services: installing ${need[*]}" >&2
  SUDO=""
  [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  export DEBIAN_FRONTEND=noninteractive
  $SUDO apt-get update -qq >/dev/null 2>&1 || true
  $SUDO apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi
# Debian starts packaged daemons on install; the tests use their own instances, so stop the system ones.
for svc in redis-server orthanc; do
  if command -v systemctl >/dev/null 2>&1 && systemctl is-active --quiet "$svc" 2>/dev/null; then
    systemctl stop "$svc" || true
  fi
done
export CXR_TEST_SERVICES=1  # tests that need a service fail (not skip) when it is missing under this script
"$@"
