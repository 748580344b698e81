#!/usr/bin/env bash
# The one test command: installs what the tests need when it is missing,
# then runs every test — unit, rules, behaviour, fuzz seeds, and (as root)
# the integration tests in network namespaces this script's tests create,
# the e2e suite (hack/e2e.sh: builds the pinned kube-apiserver, etcd and
# CoreDNS from Go modules into .cache/tools once, a few minutes cold), and
# the IPVS tests in a qemu VM (hack/vm/run.sh: installs qemu-system-x86,
# linux-image-amd64 and busybox-static with apt when missing).
#
#   hack/test.sh            everything
#   hack/test.sh unit       unit tests only (no root needed)
set -euo pipefail
cd "$(dirname "$0")/.."

what=${1:-all}

log() { printf '\n== %s\n' "$*"; }

install_packages() {
	local missing=()
	command -v iptables-nft-restore >/dev/null || missing+=(iptables)
	command -v ipset >/dev/null || missing+=(ipset)
	command -v conntrack >/dev/null || missing+=(conntrack)
	command -v ip >/dev/null || missing+=(iproute2)
	if ((${#missing[@]})); then
		log "installing ${missing[*]}"
		if [ "$(id -u)" != 0 ]; then
			echo "need root to apt-get install ${missing[*]}" >&2
			exit 1
		fi
		apt-get update -qq
		DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
	fi
}

log "gofmt and go vet"
unformatted=$(gofmt -l $(git ls-files '*.go' 2>/dev/null || find . -name '*.go' -not -path './.cache/*'))
if [ -n "$unformatted" ]; then
	echo "gofmt needed on:" >&2
	echo "$unformatted" >&2
	exit 1
fi
go vet ./...
go vet -tags integration ./test/integration/...

log "staticcheck (built from hack/tools/staticcheck/go.mod into .cache/tools/bin once)"
bash hack/tools/build.sh staticcheck
.cache/tools/bin/staticcheck ./...

log "unit, rules, behaviour and fuzz-seed tests (race detector on)"
go test -race -count=1 ./...

if [ "$what" = unit ]; then
	exit 0
fi

if [ "$(id -u)" != 0 ]; then
	echo "integration tests need root (they create network namespaces); run as root or 'hack/test.sh unit'" >&2
	exit 1
fi
install_packages

log "integration tests: real iptables-restore and real connections in private network namespaces"
go test -tags integration -count=1 -v ./test/integration/...

log "e2e tests: real kube-apiserver, etcd and CoreDNS, two nodes with an overlay, svcproxy on each"
bash hack/e2e.sh

log "IPVS mode on a real IPVS kernel: Debian's kernel under qemu (hack/vm)"
VM_WITH_SVCPROXY=1 bash hack/vm/run.sh

log "all tests passed"
