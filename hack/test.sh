#!/usr/bin/env bash
# The one test command: installs what the tests need when it is missing,
# then runs every test — unit, rules, behaviour, fuzz seeds, and (as root)
# the integration tests in network namespaces this script's tests create
# (among them the checks that the fake iptables-restore and ipset of
# iptables/testing and ipvs/testing agree with the real ones),
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

# run_tests runs go test -v with the given arguments, showing only what
# matters (package results, failures, skips and what failing tests logged;
# the full output is kept in a temporary file while it runs), and fails
# when a test failed, when any test was skipped (a skipped test proves
# nothing; hack/e2e.sh fails on skips the same way) or when no test ran.
run_tests() {
	local out status
	out=$(mktemp -t svcproxy-test.XXXXXX)
	set +e
	go test -v "$@" 2>&1 | tee "$out" |
		grep --line-buffered -vE '^\s*(=== (RUN|PAUSE|CONT|NAME)|--- PASS)|^[IWE][0-9]{4} [0-9:.]+ '
	status=${PIPESTATUS[0]}
	set -e
	if grep -qE '^\s*--- SKIP' "$out"; then
		echo "FAIL: tests were skipped (a skipped test proves nothing):" >&2
		grep -E '^\s*--- SKIP' "$out" >&2
		status=1
	fi
	if ! grep -qE '^\s*--- (PASS|FAIL)' "$out"; then
		echo "FAIL: no test ran" >&2
		status=1
	fi
	rm -f "$out"
	return "$status"
}

# The files a test could rewrite: golden files (-update) and testdata.
generated=('*.golden' testdata ':(glob)**/testdata/**')

# generated_state prints what git sees of them: their status and a hash of
# every one that is changed or new, so that a test run that rewrites a file
# already changed before it still shows.
generated_state() {
	git status --porcelain --untracked-files=all -- "${generated[@]}"
	git ls-files -z -m -o --exclude-standard -- "${generated[@]}" | xargs -0 -r sha256sum
}

# check_generated fails when the test run changed what generated_state
# printed before it ($1): no test run may rewrite a golden file (CI never
# runs with -update, and -update compares nothing).
check_generated() {
	if [ -z "$git_tree" ]; then
		return 0
	fi
	local after
	after=$(generated_state)
	if [ "$1" != "$after" ]; then
		echo "FAIL: the test run changed golden or testdata files (was it run with -update?):" >&2
		diff <(echo "$1") <(echo "$after") >&2 || true
		git status --porcelain --untracked-files=all -- "${generated[@]}" >&2
		exit 1
	fi
}

git_tree=
if git rev-parse --is-inside-work-tree >/dev/null 2>&1; then
	git_tree=yes
else
	echo "note: not a git work tree, cannot check that the tests leave golden files alone" >&2
fi

install_packages() {
	local missing=()
	command -v iptables-nft-restore >/dev/null || missing+=(iptables)
	command -v ipset >/dev/null || missing+=(ipset)
	command -v conntrack >/dev/null || missing+=(conntrack)
	command -v ip >/dev/null || missing+=(iproute2)
	command -v nft >/dev/null || missing+=(nftables) # kube-proxy nftables-mode takeover tests
	command -v sysctl >/dev/null || missing+=(procps)
	command -v setpriv >/dev/null || missing+=(util-linux) # e2e runs svcproxy with the DaemonSet's capabilities
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
go vet -tags integration ./test/integration/... ./iptables/testing/... ./ipvs/testing/...

log "staticcheck (built from hack/tools/staticcheck/go.mod into .cache/tools/bin once)"
bash hack/tools/build.sh staticcheck
.cache/tools/bin/staticcheck ./...

log "unit, rules, behaviour and fuzz-seed tests (race detector on; a skip fails)"
before=$([ -z "$git_tree" ] || generated_state)
run_tests -race -count=1 ./...

log "memory tests (heap figures; not under -race, whose allocations are not svcproxy's)"
run_tests -count=1 -run 'Memory' ./proxy/ ./proxy/source/
check_generated "$before"

if [ "$what" = unit ]; then
	exit 0
fi

if [ "$(id -u)" != 0 ]; then
	echo "integration tests need root (they create network namespaces); run as root or 'hack/test.sh unit'" >&2
	exit 1
fi
install_packages

log "integration tests: real iptables-restore and ipset (and the fakes held to them) and real connections in private network namespaces; a skip fails"
before=$([ -z "$git_tree" ] || generated_state)
run_tests -tags integration -count=1 ./test/integration/... ./iptables/testing/... ./ipvs/testing/...
check_generated "$before"

log "e2e tests: real kube-apiserver, etcd and CoreDNS, two nodes with an overlay, svcproxy on each (iptables mode; E2E_MODES=\"iptables nftables\" adds a nftables pass)"
bash hack/e2e.sh

log "IPVS mode on a real IPVS kernel: Debian's kernel under qemu (hack/vm)"
VM_WITH_SVCPROXY=1 bash hack/vm/run.sh

log "all tests passed"
