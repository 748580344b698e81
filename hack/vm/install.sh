#!/usr/bin/env bash
# Installs what the qemu harness needs when it is missing: qemu, Debian's
# kernel (with ip_vs*.ko and dummy.ko under /lib/modules), a static busybox,
# and the ipset, ipvsadm and iptables binaries that go into the initramfs.
# Needs root for apt-get.
set -euo pipefail

missing=()
command -v qemu-system-x86_64 >/dev/null || missing+=(qemu-system-x86)
compgen -G '/boot/vmlinuz-*' >/dev/null || missing+=(linux-image-amd64)
# A static busybox: the dynamic one (package busybox) lacks its libraries in
# the VM.
if [ ! -x /bin/busybox ] || ldd /bin/busybox >/dev/null 2>&1; then
	missing+=(busybox-static)
fi
command -v cpio >/dev/null || missing+=(cpio)
[ -x /usr/sbin/ipset ] || missing+=(ipset)
[ -x /usr/sbin/ipvsadm ] || missing+=(ipvsadm)
[ -x /usr/sbin/xtables-nft-multi ] && [ -x /usr/sbin/xtables-legacy-multi ] || missing+=(iptables)
if ((${#missing[@]} == 0)); then
	exit 0
fi
if [ "$(id -u)" != 0 ]; then
	echo "hack/vm: need root to apt-get install ${missing[*]}" >&2
	exit 1
fi
echo "hack/vm: installing ${missing[*]}" >&2
apt-get update -qq
DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
