#!/usr/bin/env bash
# e2e.sh runs svcproxy's end-to-end tests (test/e2e) on this machine, from a
# fresh one if need be: it installs the missing OS packages (iproute2,
# iptables with ip6tables, procps), builds the pinned kube-apiserver, etcd
# and CoreDNS (hack/tools/build.sh, cached in .cache/tools/bin), builds
# svcproxy and runs the tests. Needs root and Go; everything it creates
# lives in network namespaces of its own (see test/e2e/framework).
#
# Usage: hack/e2e.sh [go test flags...]    e.g. hack/e2e.sh -run FQDN
#        hack/e2e.sh --up                  start the same test bed (control
#                                          plane, two nodes with svcproxy,
#                                          CoreDNS, client) and keep it up
#                                          until Ctrl-C, to try things by hand
# Env:   E2E_TIMEOUT        go test -timeout (default 15m)
#        SVCPROXY_BIN       the svcproxy to test (default: build bin/svcproxy)
#        E2E_SVCPROXY_ARGS  extra svcproxy flags, e.g. --mode=ipvs
#        E2E_KEEP_DIR=1     keep the test bed's directory (logs, kubeconfigs)
#
# A skipped test fails the run: an e2e case that did not run proves nothing.
set -euo pipefail

repo_root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "${repo_root}"
start=${SECONDS}

log() { echo "e2e.sh: $*" >&2; }

if [[ $(id -u) != 0 ]]; then
	log "must run as root (network namespaces, iptables)"
	exit 1
fi
command -v go >/dev/null || { log "go is not in PATH"; exit 1; }

# OS packages: the commands the test bed and svcproxy run.
declare -A package_of=(
	[ip]=iproute2 [bridge]=iproute2
	[iptables]=iptables [iptables-restore]=iptables [iptables-save]=iptables
	[ip6tables]=iptables [ip6tables-restore]=iptables [ip6tables-save]=iptables
	[sysctl]=procps
)
missing=()
for cmd in "${!package_of[@]}"; do
	command -v "${cmd}" >/dev/null || missing+=("${package_of[${cmd}]}")
done
if ((${#missing[@]})); then
	mapfile -t missing < <(printf '%s\n' "${missing[@]}" | sort -u)
	log "installing ${missing[*]}"
	export DEBIAN_FRONTEND=noninteractive
	apt-get update -qq
	apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi

up=false
if [[ ${1:-} == --up ]]; then
	up=true
	shift
fi

log "building the pinned tools (cached)"
if ${up}; then
	hack/tools/build.sh etcd coredns kube-apiserver kube-proxy kubectl
else
	hack/tools/build.sh
fi

if [[ -z ${SVCPROXY_BIN:-} ]]; then
	log "building svcproxy"
	go build -o bin/svcproxy ./cmd/svcproxy
	export SVCPROXY_BIN=${repo_root}/bin/svcproxy
fi

if ${up}; then
	log "starting the test bed (Ctrl-C stops and removes it)"
	go build -o "${repo_root}/bin/e2e-testbed" ./test/e2e/testbed
	exec "${repo_root}/bin/e2e-testbed"
fi

log "running the e2e tests"
out=$(mktemp -t svcproxy-e2e.XXXXXX)
trap 'rm -f "${out}"' EXIT
set +e
go test -tags e2e -count=1 -v -timeout "${E2E_TIMEOUT:-15m}" ./test/e2e/... "$@" 2>&1 | tee "${out}"
status=${PIPESTATUS[0]}
set -e
if grep -qE '^\s*--- SKIP' "${out}"; then
	log "FAIL: tests were skipped:"
	grep -E '^\s*--- SKIP' "${out}" >&2
	status=1
fi
if ! grep -qE '^\s*--- (PASS|FAIL)' "${out}"; then
	log "FAIL: no test ran"
	status=1
fi
log "$( ((status == 0)) && echo PASS || echo FAIL ) in $((SECONDS - start))s"
exit "${status}"
