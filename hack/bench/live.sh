#!/usr/bin/env bash
# Benchmark against a real API server: the e2e test bed's etcd and
# kube-apiserver (test/e2e/framework, tools from hack/tools/build.sh), N
# Services × 5 endpoints created through the API server, then, one after
# the other and alone on the machine's CPUs, svcproxy (iptables mode) and
# upstream kube-proxy v1.37.2 in iptables and in nftables mode, each in a
# node network namespace of its own. For each: time to the first full sync
# and its duration, the network programming latency of an endpoint change
# (median of 5), RSS after the first sync and after the changes, and the
# high-water mark (VmHWM). See hack/bench/live/main.go.
#
#   sudo hack/bench/live.sh [--before REV] [N] [-- flags of hack/bench/live]
#
# N defaults to 10000. --before REV also measures svcproxy built from git
# revision REV, reported as "svcproxy (before)". "svcproxy" is built from
# the working tree.
#
# Needs root: everything runs in network namespaces the test bed creates
# (svcpe2e-<pid>-*); the root namespace's interfaces, routes, sysctls and
# iptables are never touched. Every process is started by this run and
# stopped by its PID; namespaces and files are removed on exit (also on
# Ctrl-C). Takes 15-25 minutes at 10,000 services on 2 cores, nearly all of it
# kube-proxy's iptables mode.
set -euo pipefail
cd "$(dirname "$0")/../.."

before=""
n=10000
while [ $# -gt 0 ]; do
	case $1 in
	--before) before=$2; shift 2 ;;
	--) shift; break ;;
	[0-9]*) n=$1; shift ;;
	*) echo "usage: $0 [--before REV] [N] [-- flags of hack/bench/live]" >&2; exit 2 ;;
	esac
done
[ "$(id -u)" = 0 ] || { echo "live.sh: must run as root (network namespaces)" >&2; exit 1; }

work=$(mktemp -d /tmp/svcplive.XXXXXX)
trap 'rm -rf "$work"' EXIT

hack/tools/build.sh etcd kube-apiserver kube-proxy coredns >&2
go build -o "$work/svcproxy" ./cmd/svcproxy
go build -o "$work/live" ./hack/bench/live
args=(-svcproxy "$work/svcproxy" -services "$n")
if [ -n "$before" ]; then
	mkdir "$work/before"
	git archive "$before" | tar -x -C "$work/before"
	(cd "$work/before" && go build -o "$work/svcproxy-before" ./cmd/svcproxy)
	args+=(-before "$work/svcproxy-before")
fi
"$work/live" "${args[@]}" "$@"
