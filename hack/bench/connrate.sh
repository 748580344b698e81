#!/usr/bin/env bash
# New-connection rate through svcproxy's rules at N services, relative to the
# rate at 1 service. Two identical private test beds (node + client pod +
# server pod, routed) are programmed with the --dry-run output for 1 and for
# N services × 5 endpoints; short runs alternate between them so that both
# see the same background load, and the medians are compared.
#
#   hack/bench/connrate.sh [N] [ROUNDS]     default: 30000 9
#
# Needs root; everything lives in network namespaces it creates and removes.
set -euo pipefail
cd "$(dirname "$0")/../.."

n=${1:-30000}
rounds=${2:-9}
work=$(mktemp -d)
pfx="svcpr$$"
pids=()
cleanup() {
	for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
	for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
	for bed in a b; do for ns in node cli srv; do ip netns del "$pfx$bed-$ns" 2>/dev/null || true; done; done
	rm -rf "$work"
}
trap cleanup EXIT

go build -o "$work/svcproxy" ./cmd/svcproxy
go build -o "$work/genstate" ./hack/bench/genstate
go build -o "$work/connrate" ./hack/bench/connrate

# bed NAME SERVICES: a node with a client and a server pod, programmed for
# SERVICES services whose last one is backed by the server.
bed() {
	local b=$pfx$1 services=$2
	ip netns add "$b-node"
	ip netns exec "$b-node" ip link set lo up
	ip netns exec "$b-node" sysctl -qw net.ipv4.ip_forward=1
	for pod in cli:10.244.250.20 srv:10.244.250.10; do
		local name=${pod%%:*} ip=${pod#*:}
		ip netns add "$b-$name"
		ip netns exec "$b-$name" ip link set lo up
		ip link add "$b$name" netns "$b-node" type veth peer name eth0 netns "$b-$name"
		ip netns exec "$b-node" ip addr add 10.244.250.1/32 dev "$b$name"
		ip netns exec "$b-node" ip link set "$b$name" up
		ip netns exec "$b-node" ip route add "$ip/32" dev "$b$name"
		ip netns exec "$b-$name" ip addr add "$ip/32" dev eth0
		ip netns exec "$b-$name" ip link set eth0 up
		ip netns exec "$b-$name" ip route add 10.244.250.1 dev eth0
		ip netns exec "$b-$name" ip route add default via 10.244.250.1
	done
	ip netns exec "$b-srv" "$work/connrate" -serve :8080 &
	pids+=($!)
	"$work/genstate" -services "$services" -target 10.244.250.10 -o "$work/$1.yaml"
	"$work/svcproxy" --dry-run --state "$work/$1.yaml" --hostname-override node1 --cluster-cidr 10.244.0.0/16 2>/dev/null |
		ip netns exec "$b-node" iptables-restore --noflush
}
vip() {
	local ipn=$(( (10<<24 | 96<<16) + $1 ))
	echo "$((ipn>>24 & 255)).$((ipn>>16 & 255)).$((ipn>>8 & 255)).$((ipn & 255))"
}

bed a 1
bed b "$n"
ra=() rb=()
for _ in $(seq "$rounds"); do
	ra+=("$(ip netns exec "${pfx}a-cli" "$work/connrate" -addr "$(vip 1):80" -d 1s -c 4 | awk '{print $1}')")
	rb+=("$(ip netns exec "${pfx}b-cli" "$work/connrate" -addr "$(vip "$n"):80" -d 1s -c 4 | awk '{print $1}')")
done
median() { printf '%s\n' "$@" | sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
ma=$(median "${ra[@]}") mb=$(median "${rb[@]}")
echo "1 service:   median $ma conn/s (${ra[*]})"
echo "$n services: median $mb conn/s (${rb[*]})"
awk -v a="$ma" -v b="$mb" -v n="$n" 'BEGIN {printf "ratio %d/1 services: %.2f\n", n, b/a}'
