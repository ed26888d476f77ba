#!/usr/bin/env bash
# Install Debian's packages that the real node of `make e2e` and the image build need:
# containerd + runc (the node's runtime), containernetworking-plugins (bridge, host-local,
# loopback, portmap), iptables (kube-proxy, CNI), debootstrap (the images' base root
# filesystem), docker.io (dockerd 20.10 with BuildKit: builds our Dockerfiles, no registry),
# gcc's static libc (the pod sandbox "pause" program).
# Idempotent: installs only what is missing. Starts no service.
#   hack/install-node-deps.sh
set -euo pipefail
PKGS=(containerd runc containernetworking-plugins iptables debootstrap docker.io libc6-dev gcc iproute2 tar)
missing=()
for p in "${PKGS[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ "${#missing[@]}" -eq 0 ]; then
  echo "node dependencies already installed: containerd $(containerd --version | awk '{print $3}'), runc $(runc --version | awk 'NR==1{print $3}')"
  exit 0
fi
SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
# policy-rc.d keeps the packages from starting system services (containerd, docker) on install.
if [ ! -e /usr/sbin/policy-rc.d ]; then
  printf '#!/bin/sh\nexit 101\n' | $SUDO tee /usr/sbin/policy-rc.d >/dev/null
  $SUDO chmod +x /usr/sbin/policy-rc.d
  trap '$SUDO rm -f /usr/sbin/policy-rc.d' EXIT
fi
echo "installing: ${missing[*]}"
$SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
echo "installed: containerd $(containerd --version | awk '{print $3}'), runc $(runc --version | awk 'NR==1{print $3}')"
