#!/usr/bin/env bash
# build.sh builds the pinned tools of the e2e test bed from their Go modules
# into .cache/tools/bin/ (git-ignored):
#
#   kube-apiserver  k8s.io/kubernetes      hack/tools/go.mod
#   kube-proxy      k8s.io/kubernetes      hack/tools/go.mod (upstream's, for
#                                          the live-takeover test)
#   etcd            go.etcd.io/etcd/server hack/tools/etcd/go.mod
#   coredns         github.com/coredns     hack/tools/coredns/go.mod
#   kubectl         k8s.io/kubectl         hack/tools/go.mod (only if asked
#                                          for: the tests do not need it)
#   staticcheck     honnef.co/go/tools     hack/tools/staticcheck/go.mod (the
#                                          linter hack/test.sh runs)
#
# Each binary is rebuilt only when the sha256 of what produced it changes: its
# module's go.mod, go.sum and main.go, this script and the Go version. The
# sums are kept in .cache/tools/bin/<tool>.stamp.
#
# Needs only Go (and the module proxy). A cold build takes several minutes,
# nearly all of it kube-apiserver; a warm run returns at once.
#
# Usage: hack/tools/build.sh [tool...]     (default: etcd coredns kube-apiserver kube-proxy)
# Env:   TOOLS_BIN  output directory (default: <repo>/.cache/tools/bin)
set -euo pipefail

tools_dir=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo_root=$(cd "${tools_dir}/../.." && pwd)
bin_dir=${TOOLS_BIN:-${repo_root}/.cache/tools/bin}

# kube-apiserver, kube-proxy and kubectl report this as their version; it is the
# k8s.io/kubernetes pin in go.mod.
kube_version=$(sed -nE 's/^(require)?[[:space:]]*k8s\.io\/kubernetes (v[0-9.]+)$/\2/p' "${tools_dir}/go.mod" | head -n1)
[[ -n ${kube_version} ]] || { echo "build.sh: no k8s.io/kubernetes in ${tools_dir}/go.mod" >&2; exit 1; }
kube_minor=${kube_version#v1.}
kube_minor=${kube_minor%%.*}

# module_dir TOOL: the directory of the module that builds TOOL.
module_dir() {
	case $1 in
	kube-apiserver | kube-proxy | kubectl) echo "${tools_dir}" ;;
	etcd) echo "${tools_dir}/etcd" ;;
	coredns) echo "${tools_dir}/coredns" ;;
	staticcheck) echo "${tools_dir}/staticcheck" ;;
	*) echo "unknown tool $1 (want kube-apiserver, kube-proxy, etcd, coredns, staticcheck or kubectl)" >&2 && return 1 ;;
	esac
}

# package_path TOOL: the main package, relative to its module directory.
package_path() {
	case $1 in
	kube-apiserver | kube-proxy | kubectl) echo "./$1" ;;
	*) echo . ;;
	esac
}

# stamp TOOL: sha256 over every input of TOOL's binary.
stamp() {
	local dir
	dir=$(module_dir "$1")
	{
		go version
		sha256sum "${dir}/go.mod" "${dir}/go.sum" "${dir}/$(package_path "$1")/main.go" "${tools_dir}/build.sh" |
			sed "s|${repo_root}/||"
	} | sha256sum | cut -d' ' -f1
}

build() {
	local tool=$1 dir want ldflags=()
	dir=$(module_dir "${tool}")
	want=$(stamp "${tool}")
	if [[ -x ${bin_dir}/${tool} && -f ${bin_dir}/${tool}.stamp && $(<"${bin_dir}/${tool}.stamp") == "${want}" ]]; then
		echo "${tool}: up to date (${bin_dir}/${tool})"
		return
	fi
	if [[ ${tool} == kube-apiserver || ${tool} == kube-proxy || ${tool} == kubectl ]]; then
		ldflags=(-ldflags "-X k8s.io/component-base/version.gitVersion=${kube_version}
			-X k8s.io/component-base/version.gitMajor=1
			-X k8s.io/component-base/version.gitMinor=${kube_minor}
			-X k8s.io/component-base/version.gitTreeState=clean")
	fi
	echo "${tool}: building from $(realpath --relative-to="${repo_root}" "${dir}")/go.mod ..."
	local start=${SECONDS}
	# -mod=readonly: the committed go.sum is the pin; a build never rewrites it.
	# -buildvcs=false: the binary does not depend on this repository's commit.
	(cd "${dir}" && GOFLAGS=-mod=readonly CGO_ENABLED=0 \
		go build -trimpath -buildvcs=false "${ldflags[@]}" -o "${bin_dir}/.${tool}.tmp" "$(package_path "${tool}")")
	mv -f "${bin_dir}/.${tool}.tmp" "${bin_dir}/${tool}"
	echo "${want}" >"${bin_dir}/${tool}.stamp"
	echo "${tool}: built in $((SECONDS - start))s"
}

command -v go >/dev/null || { echo "build.sh: go is not in PATH" >&2; exit 1; }
mkdir -p "${bin_dir}"
tools=("$@")
((${#tools[@]})) || tools=(etcd coredns kube-apiserver kube-proxy)
for t in "${tools[@]}"; do
	build "${t}"
done
