#!/usr/bin/env bash
# Install Debian's prometheus package for the tests that scrape with a real Prometheus.
# Idempotent: does nothing when /usr/bin/prometheus is already there. Does not start the service.
#   hack/install-prometheus.sh
set -euo pipefail
if [ -x /usr/bin/prometheus ]; then
  echo "prometheus already installed: $(/usr/bin/prometheus --version 2>&1 | head -1)"
  exit 0
fi
bash "$(dirname "$0")/apt-install.sh" prometheus
echo "installed: $(/usr/bin/prometheus --version 2>&1 | head -1)"
