#!/usr/bin/env bash
# Install Debian's packages that the real node of `make e2e` and the image build need:
# containerd + runc (the node's runtime), containernetworking-plugins (bridge, host-local,
# loopback, portmap), iptables (kube-proxy, CNI), debootstrap (the images' base root
# filesystem), docker.io (dockerd 20.10 with BuildKit: builds our Dockerfiles, no registry),
# gcc's static libc (the pod sandbox "pause" program).
# Idempotent: installs only what is missing. Starts no service.
#   hack/install-node-deps.sh
set -euo pipefail
bash "$(dirname "$0")/apt-install.sh" containerd runc containernetworking-plugins iptables \
  debootstrap docker.io libc6-dev gcc iproute2 tar
echo "node dependencies installed: containerd $(containerd --version | awk '{print $3}'), runc $(runc --version | awk 'NR==1{print $3}')"
