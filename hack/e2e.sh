#!/usr/bin/env bash
# e2e.sh runs svcproxy's end-to-end tests (test/e2e) on this machine, from a
# fresh one if need be: it installs the missing OS packages (iproute2,
# iptables with ip6tables, procps, nftables), builds the pinned
# kube-apiserver, etcd and CoreDNS (hack/tools/build.sh, cached in
# .cache/tools/bin), builds svcproxy and runs the tests, once per mode of
# E2E_MODES. Needs root and Go; everything it creates
# lives in network namespaces of its own (see test/e2e/framework).
#
# Usage: hack/e2e.sh [go test flags...]    e.g. hack/e2e.sh -run FQDN
#                                          runs the suite once per mode of
#                                          E2E_MODES (default iptables;
#                                          E2E_MODES="iptables nftables"
#                                          adds a nftables pass), saying
#                                          which pass is which
#        hack/e2e.sh --up [--detach] [--no-demo]
#                                          start the same test bed (control
#                                          plane, two nodes with svcproxy,
#                                          CoreDNS, outside client) with a
#                                          demo (test/e2e/demo: namespaces a
#                                          and b, b/web, b/api, b/empty, a
#                                          client pod) and keep it up until
#                                          Ctrl-C, to try things by hand; it
#                                          prints the commands to try and
#                                          writes shell shortcuts into
#                                          .cache/e2e-up/env. --detach: run
#                                          it in the background (log in
#                                          .cache/e2e-up/testbed.log) and
#                                          return once it is up
#        hack/e2e.sh --down                stop the test bed of --up and
#                                          remove it (namespaces, processes,
#                                          files), from any shell
# Env:   E2E_TIMEOUT        go test -timeout (default 15m)
#        SVCPROXY_BIN       the svcproxy to test (default: build bin/svcproxy)
#        E2E_MODES          the modes of the passes, in order (default
#                           "iptables"; "iptables nftables" runs the suite
#                           twice; ipvs needs a kernel with ip_vs)
#        E2E_SVCPROXY_ARGS  extra svcproxy flags, e.g. --mode=ipvs: one pass
#                           with them instead of one per mode
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
	[nft]=nftables
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

# The test bed of --up: its PID (the testbed program's), its shortcuts and,
# with --detach, its output.
up_dir=${repo_root}/.cache/e2e-up
up_pid=${up_dir}/pid
up_env=${up_dir}/env
up_log=${up_dir}/testbed.log
testbed=${repo_root}/bin/e2e-testbed

# up_running prints the PID of the running test bed of --up, if any: the
# PID in ${up_pid} if that process is still bin/e2e-testbed.
up_running() {
	local pid
	pid=$(cat "${up_pid}" 2>/dev/null) || return 1
	[[ ${pid} =~ ^[0-9]+$ ]] || return 1
	[[ $(readlink "/proc/${pid}/exe" 2>/dev/null) == "${testbed}" ]] || return 1
	echo "${pid}"
}

if [[ ${1:-} == --down ]]; then
	if ! pid=$(up_running); then
		log "no test bed of --up is running"
		rm -f "${up_pid}" "${up_env}"
		exit 0
	fi
	log "stopping the test bed (pid ${pid}) and removing it"
	kill -TERM "${pid}"
	for ((i = 0; i < 600; i++)); do
		kill -0 "${pid}" 2>/dev/null || break
		sleep 0.1
	done
	if kill -0 "${pid}" 2>/dev/null; then
		# Its processes die with it (Pdeathsig); the next start removes
		# the namespaces it leaves.
		log "still running after 60s: SIGKILL"
		kill -KILL "${pid}" 2>/dev/null || true
	fi
	rm -f "${up_pid}" "${up_env}"
	log "stopped"
	exit 0
fi

up=false detach=false testbed_args=()
if [[ ${1:-} == --up ]]; then
	up=true
	shift
	for arg in "$@"; do
		case ${arg} in
		--detach | -d) detach=true ;;
		--no-demo) testbed_args+=(-no-demo) ;;
		*) log "--up takes --detach and --no-demo, not ${arg}"; exit 2 ;;
		esac
	done
	set --
	if pid=$(up_running); then
		log "a test bed of --up is already running (pid ${pid}): hack/e2e.sh --down stops it"
		exit 1
	fi
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
	go build -o "${testbed}" ./test/e2e/testbed
	mkdir -p "${up_dir}"
	rm -f "${up_env}"
	testbed_args+=(-env "${up_env}")
	if ! ${detach}; then
		log "starting the test bed (Ctrl-C or hack/e2e.sh --down stops and removes it)"
		echo $$ >"${up_pid}" # exec keeps the PID
		exec "${testbed}" "${testbed_args[@]}"
	fi
	log "starting the test bed in the background (hack/e2e.sh --down stops and removes it; log: ${up_log})"
	setsid "${testbed}" "${testbed_args[@]}" </dev/null >"${up_log}" 2>&1 &
	pid=$!
	echo "${pid}" >"${up_pid}"
	# Up once the shortcuts are written (after the summary is printed).
	for ((i = 0; i < 3000; i++)); do
		[[ -e ${up_env} ]] && break
		if ! kill -0 "${pid}" 2>/dev/null; then
			log "FAIL: the test bed exited while starting; the end of its log:"
			tail -n 40 "${up_log}" >&2
			rm -f "${up_pid}"
			exit 1
		fi
		sleep 0.1
	done
	if [[ ! -e ${up_env} ]]; then
		log "FAIL: the test bed is not up after 300s; stopping it (log: ${up_log})"
		kill -TERM "${pid}" 2>/dev/null || true
		exit 1
	fi
	sleep 0.2
	sed -n '/^The test bed is up/,$p' "${up_log}"
	log "up in $((SECONDS - start))s (pid ${pid})"
	exit 0
fi

# The passes: the whole suite once per mode of E2E_MODES, each with
# E2E_SVCPROXY_ARGS=--mode=<mode>; or, when E2E_SVCPROXY_ARGS is set, one
# pass with those flags.
if [[ -n ${E2E_SVCPROXY_ARGS:-} ]]; then
	passes=("${E2E_SVCPROXY_ARGS}")
else
	passes=()
	# nftables joins the default once a full nftables pass has been green
	# in one run (test/e2e/README.md); E2E_MODES="iptables nftables" runs
	# it now.
	for mode in ${E2E_MODES:-iptables}; do
		passes+=("--mode=${mode}")
	done
fi
out=$(mktemp -t svcproxy-e2e.XXXXXX)
trap 'rm -f "${out}"' EXIT
status=0 summary=()
for ((i = 0; i < ${#passes[@]}; i++)); do
	args=${passes[i]}
	pass_start=${SECONDS}
	log "running the e2e tests, pass $((i + 1))/${#passes[@]}: svcproxy ${args}"
	set +e
	E2E_SVCPROXY_ARGS=${args} go test -tags e2e -count=1 -v -timeout "${E2E_TIMEOUT:-15m}" ./test/e2e/... "$@" 2>&1 | tee "${out}"
	pass_status=${PIPESTATUS[0]}
	set -e
	if grep -qE '^\s*--- SKIP' "${out}"; then
		log "FAIL: tests were skipped (svcproxy ${args}):"
		grep -E '^\s*--- SKIP' "${out}" >&2
		pass_status=1
	fi
	if ! grep -qE '^\s*--- (PASS|FAIL)' "${out}"; then
		log "FAIL: no test ran (svcproxy ${args})"
		pass_status=1
	fi
	result="pass $((i + 1))/${#passes[@]} (svcproxy ${args}): $( ((pass_status == 0)) && echo PASS || echo FAIL ) in $((SECONDS - pass_start))s"
	if ((pass_status != 0)); then
		result+="; failed: $(grep -oE '^--- FAIL: \S+' "${out}" | cut -d' ' -f3 | tr '\n' ' ')"
		status=1
	fi
	log "${result}"
	summary+=("${result}")
done
for line in "${summary[@]}"; do
	log "${line}"
done
log "$( ((status == 0)) && echo PASS || echo FAIL ) in $((SECONDS - start))s"
exit "${status}"
