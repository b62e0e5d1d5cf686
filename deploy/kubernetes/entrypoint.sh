#!/bin/sh
# The image's entrypoint (deploy/kubernetes/Containerfile): `fastdns serve` on the mounted
# config (argument 1, default /etc/fastdns/fastdns.yaml) with __KUBE_DNS_UPSTREAM__ replaced by
# the kube-dns-upstream Service's ClusterIP, which Kubernetes passes to every pod of its
# namespace as KUBE_DNS_UPSTREAM_SERVICE_HOST (node-local-dns fills its __PILLAR__ values the
# same way). exec: fastdns is PID 1 and gets the kubelet's SIGTERM itself.
set -eu
src=${1:-/etc/fastdns/fastdns.yaml}
dir=${FASTDNS_RUNTIME_DIR:-/run/fastdns}
dst=$dir/fastdns.yaml
mkdir -p "$dir"
if grep -q __KUBE_DNS_UPSTREAM__ "$src"; then
    upstream=${KUBE_DNS_UPSTREAM_SERVICE_HOST:-}
    if [ -z "$upstream" ]; then
        echo "fastdns: KUBE_DNS_UPSTREAM_SERVICE_HOST is not set: is the kube-dns-upstream Service in this namespace?" >&2
        exit 2
    fi
    case $upstream in *:*) upstream="[$upstream]" ;; esac
    sed "s/__KUBE_DNS_UPSTREAM__/$upstream/g" "$src" >"$dst.tmp"
else
    cp "$src" "$dst.tmp"
fi
mv "$dst.tmp" "$dst"
exec fastdns serve "$dst"
