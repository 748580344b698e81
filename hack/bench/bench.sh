#!/usr/bin/env bash
# Real-kernel benchmark of iptables mode, in private network namespaces:
#   - first full sync of N services × 5 endpoints with the real
#     iptables-restore (the nft variant, Debian's default);
#   - one endpoint change applied (partial sync);
#   - svcproxy's resident memory (settled, and the peak: with --state, reading
#     the file, which is streamed item by item);
#   - new TCP connections per second through the rules to one service,
#     compared with the same measurement with 1 service.
#
#   hack/bench/bench.sh [N...]      default: 1000 10000 30000
#
# Needs root (it creates network namespaces; nothing outside them changes).
# The same against a real API server, with upstream kube-proxy beside it:
# hack/bench/live.sh.
set -euo pipefail
cd "$(dirname "$0")/../.."

sizes=("$@")
[ ${#sizes[@]} -gt 0 ] || sizes=(1000 10000 30000)

work=$(mktemp -d)
pfx="svcpb$$"
pids=()
cleanup() {
	for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
	for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
	for ns in node cli srv; do ip netns del "$pfx-$ns" 2>/dev/null || true; done
	rm -rf "$work"
}
trap cleanup EXIT

go build -o "$work/svcproxy" ./cmd/svcproxy
go build -o "$work/genstate" ./hack/bench/genstate
go build -o "$work/connrate" ./hack/bench/connrate

# setup: a fresh node namespace with two routed pods, a client and a
# server, for each round (no conntrack or TIME_WAIT state carries over).
setup() {
	ip netns add "$pfx-node"
	ip netns exec "$pfx-node" ip link set lo up
	ip netns exec "$pfx-node" sysctl -qw net.ipv4.ip_forward=1
	for pod in cli:10.244.250.20 srv:10.244.250.10; do
		name=${pod%%:*} ip=${pod#*:}
		ip netns add "$pfx-$name"
		ip netns exec "$pfx-$name" ip link set lo up
		ip link add "$pfx$name" netns "$pfx-node" type veth peer name eth0 netns "$pfx-$name"
		ip netns exec "$pfx-node" ip addr add 10.244.250.1/32 dev "$pfx$name"
		ip netns exec "$pfx-node" ip link set "$pfx$name" up
		ip netns exec "$pfx-node" ip route add "$ip/32" dev "$pfx$name"
		ip netns exec "$pfx-$name" ip addr add "$ip/32" dev eth0
		ip netns exec "$pfx-$name" ip link set eth0 up
		ip netns exec "$pfx-$name" ip route add 10.244.250.1 dev eth0
		ip netns exec "$pfx-$name" ip route add default via 10.244.250.1
	done
	ip netns exec "$pfx-srv" "$work/connrate" -serve :8080 &
	server=$!
	pids+=($server)
}
teardown() {
	kill "$server" 2>/dev/null || true
	wait "$server" 2>/dev/null || true
	for ns in node cli srv; do ip netns del "$pfx-$ns" 2>/dev/null || true; done
}

# wait_log FILE PATTERN COUNT: wait until PATTERN occurs COUNT times.
wait_log() {
	for _ in $(seq 1 1200); do
		if [ "$(grep -c "$2" "$1" || true)" -ge "$3" ]; then return 0; fi
		sleep 0.1
	done
	echo "timeout waiting for $2 in $1" >&2
	tail -5 "$1" >&2
	return 1
}

took() { grep "$2" "$1" | sed -n "${3}p" | sed -E 's/.*took="([^"]+)".*/\1/'; }

printf '%-9s %-12s %-12s %-10s %-10s %-10s %-10s %-8s\n' services "full sync" "1 ep change" "RSS" "peak RSS" "chains" "rules" "conn/s"
for n in 1 "${sizes[@]}"; do
	setup
	"$work/genstate" -services "$n" -target 10.244.250.10 -o "$work/state.yaml"
	log="$work/svcproxy-$n.log"
	ip netns exec "$pfx-node" "$work/svcproxy" --state "$work/state.yaml" --hostname-override node1 \
		--cluster-cidr 10.244.0.0/16 --state-poll-interval 200ms --min-sync-period 0 -v 2 >"$log" 2>&1 &
	proxy=$!
	pids+=($proxy)
	wait_log "$log" 'Synced rules" full=true' 1
	full=$(took "$log" 'Synced rules" full=true' 1)
	chains=$(grep 'Synced rules" full=true' "$log" | head -1 | sed -E 's/.* chains=([0-9]+).*/\1/')
	rules=$(grep 'Synced rules" full=true' "$log" | head -1 | sed -E 's/.* rules=([0-9]+).*/\1/')
	change="-"
	if [ "$n" -gt 1 ]; then
		"$work/genstate" -services "$n" -target 10.244.250.10 -change 1 -o "$work/state.yaml"
		wait_log "$log" 'Synced rules" full=false' 1
		change=$(took "$log" 'Synced rules" full=false' 1)
	fi
	sleep 3 # let the runtime hand freed memory back
	rss=$(awk '/VmRSS/ {printf "%.0f MiB", $2/1024}' "/proc/$proxy/status")
	peak=$(awk '/VmHWM/ {printf "%.0f MiB", $2/1024}' "/proc/$proxy/status")
	last=$((n - 1))
	ipn=$(( (10<<24 | 96<<16) + last + 1 ))
	vip="$((ipn>>24 & 255)).$((ipn>>16 & 255)).$((ipn>>8 & 255)).$((ipn & 255))"
	# Best of three runs: the figure is the rules' cost, not other load's.
	rate=0
	for _ in 1 2 3; do
		r=$(ip netns exec "$pfx-cli" "$work/connrate" -addr "$vip:80" -d 2s -c 4 | awk '{print $1}')
		[ "$r" -gt "$rate" ] && rate=$r
		sleep 1
	done
	printf '%-9s %-12s %-12s %-10s %-10s %-10s %-10s %-8s\n' "$n" "$full" "$change" "$rss" "$peak" "$chains" "$rules" "$rate"
	kill "$proxy"; wait "$proxy" 2>/dev/null || true
	teardown
done
