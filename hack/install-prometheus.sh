#!/usr/bin/env bash
# Install Debian's prometheus package for the tests that scrape with a real Prometheus.
# Idempotent: does nothing when /usr/bin/prometheus is already there. Does not start the service.
#   hack/install-prometheus.sh
set -euo pipefail
if [ -x /usr/bin/prometheus ]; then
  echo "prometheus already installed: $(/usr/bin/prometheus --version 2>&1 | head -1)"
  exit 0
fi
SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
# policy-rc.d keeps the package from starting a system service during installation.
if [ ! -e /usr/sbin/policy-rc.d ]; then
  printf '#!/bin/sh\nexit 101\n' | $SUDO tee /usr/sbin/policy-rc.d >/dev/null
  $SUDO chmod +x /usr/sbin/policy-rc.d
  trap '$SUDO rm -f /usr/sbin/policy-rc.d' EXIT
fi
$SUDO apt-get install -y -qq --no-install-recommends prometheus >/dev/null
echo "installed: $(/usr/bin/prometheus --version 2>&1 | head -1)"
