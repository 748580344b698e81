#!/usr/bin/env bash
# Builds the test VM's initramfs: a cached base (busybox, the kernel modules
# of modules.txt with their dependencies, ipset, ipvsadm, iptables and
# ip6tables with their shared libraries) plus a small archive holding the
# test binary.
# Concatenated cpio archives are one initramfs to the kernel.
#
#   hack/vm/mkinitrd.sh OUT TESTBINARY [TEST ARGS...]
#
# VM_EXTRA_FILES="src:/dst ..." adds more files to the per-run archive
# (e.g. a static svcproxy binary as /usr/local/bin/svcproxy).
#
# The base goes to .cache/vm/ (git-ignored), keyed by kernel version and the
# content of this directory, and is rebuilt only when one changes.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
out=$1 bin=$2
shift 2

kernel=$(ls /boot/vmlinuz-* | sort -V | tail -1)
kver=${kernel#/boot/vmlinuz-}
moddir=/lib/modules/$kver
cache=$root/.cache/vm
mkdir -p "$cache"
key=$(cat "$here/init" "$here/modules.txt" "$here/mkinitrd.sh" | sha256sum | cut -c1-12)
base=$cache/base-$kver-$key.cpio.gz

if [ ! -s "$base" ]; then
	echo "hack/vm: building initramfs base for $kver" >&2
	stage=$(mktemp -d)
	trap 'rm -rf "$stage"' EXIT
	mkdir -p "$stage"/{bin,sbin,etc,proc,sys,dev,run,tmp,usr/sbin,usr/lib,var/run}
	cp /bin/busybox "$stage/bin/busybox"
	cp "$here/init" "$stage/init"
	cp "$here/modules.txt" "$stage/modules.txt"
	cp /etc/protocols /etc/services "$stage/etc/" 2>/dev/null || true

	# Modules: the closure of modules.txt over modules.dep.
	mkdir -p "$stage$moddir"
	cp "$moddir"/modules.{dep,alias,softdep,order,builtin,symbols,builtin.modinfo} "$stage$moddir/" 2>/dev/null || true
	want=$(grep -v '^#' "$here/modules.txt" | tr - _)
	awk -v want="$want" '
		BEGIN { n = split(want, w, /[ \n]+/); for (i = 1; i <= n; i++) if (w[i] != "") need[w[i]] = 1 }
		{
			sub(/:$/, "", $1)
			name = $1; sub(/.*\//, "", name); sub(/\.ko.*$/, "", name); gsub(/-/, "_", name)
			path[name] = $1; deps[name] = ""
			for (i = 2; i <= NF; i++) deps[name] = deps[name] " " $i
		}
		END {
			for (m in need) visit(m)
		}
		function visit(m,   d, k, i, dn) {
			if (done[m]++) return
			if (!(m in path)) { print "missing module " m > "/dev/stderr"; exit 1 }
			print path[m]
			k = split(deps[m], d, " ")
			for (i = 1; i <= k; i++) { dn = d[i]; sub(/.*\//, "", dn); sub(/\.ko.*$/, "", dn); gsub(/-/, "_", dn); visit(dn) }
		}' "$moddir/modules.dep" | while read -r p; do
		mkdir -p "$stage$moddir/$(dirname "$p")"
		cp "$moddir/$p" "$stage$moddir/$p"
	done

	# Userspace tools, iptables' extensions, and the libraries of both.
	bins=(/usr/sbin/ipset /usr/sbin/ipvsadm /usr/sbin/xtables-nft-multi /usr/sbin/xtables-legacy-multi)
	for b in "${bins[@]}"; do
		cp "$b" "$stage$b"
	done
	# The variant-named commands svcproxy runs (iptables-nft-restore,
	# ip6tables-legacy-save, ...); the multi binaries pick the family and
	# variant by the name they are called by.
	for v in nft legacy; do
		for f in iptables ip6tables; do
			for s in "" -save -restore; do
				ln -sf xtables-$v-multi "$stage/usr/sbin/$f-$v$s"
			done
		done
	done
	mkdir -p "$stage/usr/lib/x86_64-linux-gnu"
	cp -a /usr/lib/x86_64-linux-gnu/xtables "$stage/usr/lib/x86_64-linux-gnu/xtables"
	for f in "${bins[@]}" /usr/lib/x86_64-linux-gnu/xtables/*.so; do
		ldd "$f" 2>/dev/null | awk '/=>/ { print $3 } /^\t\/lib/ { print $1 }'
	done | sort -u | while read -r lib; do
		[ -n "$lib" ] && [ -e "$lib" ] || continue
		mkdir -p "$stage$(dirname "$lib")"
		cp -L "$lib" "$stage$lib"
	done

	(cd "$stage" && find . | cpio -o -H newc --quiet | gzip -1) >"$base.tmp"
	mv "$base.tmp" "$base"
	rm -f "$cache"/base-*.cpio.gz.old
	for old in "$cache"/base-*.cpio.gz; do
		[ "$old" = "$base" ] || rm -f "$old"
	done
fi

# The test binary and its arguments.
stage2=$(mktemp -d)
cp "$bin" "$stage2/vmtest"
for f in ${VM_EXTRA_FILES:-}; do
	mkdir -p "$stage2$(dirname "${f#*:}")"
	cp "${f%%:*}" "$stage2${f#*:}"
done
printf '%s ' "$@" >"$stage2/vmtest.args"
(cd "$stage2" && find . -mindepth 1 | cpio -o -H newc --quiet | gzip -1) >"$out.test"
rm -rf "$stage2"
cat "$base" "$out.test" >"$out"
rm -f "$out.test"
echo "$kernel"
