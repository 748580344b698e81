#!/usr/bin/env bash
# Runs IPVS mode's real-kernel tests (ipvs/vmtest, build tag "vm") inside a
# qemu VM booted with Debian's kernel: this machine's own kernel has no
# ip_vs and no dummy module. Installs qemu, the kernel and busybox when
# missing (hack/vm/install.sh), builds a static test binary and an
# initramfs (hack/vm/mkinitrd.sh, base cached in .cache/vm), boots, and
# reads the results back from the serial console.
#
#   hack/vm/run.sh                   every test
#   hack/vm/run.sh -test.run 'ClusterIP'   extra arguments go to the test binary
#   hack/vm/run.sh -test.run '^$' -test.bench . -test.benchtime 5x   benchmarks
#
# VM_WITH_SVCPROXY=1 also puts a static svcproxy binary (./cmd/svcproxy) in
# the VM as /usr/local/bin/svcproxy, for tests that run the whole program.
#
# Exits non-zero when a test fails or is skipped, when the VM does not
# report (no end marker: crash, hang, timeout), or when the binary ran no
# test.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
cd "$root"

bash "$here/install.sh"

work=$root/.cache/vm/run
mkdir -p "$work"
# One run at a time per work tree: they share the work directory.
exec 9>"$root/.cache/vm/lock"
flock 9
log=$work/console.log
start=$(date +%s)

CGO_ENABLED=0 go test -c -tags vm -o "$work/vmtest" ./ipvs/vmtest
if [ "${VM_WITH_SVCPROXY:-}" = 1 ]; then
	CGO_ENABLED=0 go build -ldflags='-s -w' -o "$work/svcproxy" ./cmd/svcproxy
	export VM_EXTRA_FILES="${VM_EXTRA_FILES:-} $work/svcproxy:/usr/local/bin/svcproxy"
fi
kernel=$(bash "$here/mkinitrd.sh" "$work/initrd" "$work/vmtest" -test.v -test.timeout=8m "$@")
built=$(date +%s)

# -accel tcg: KVM guests hang on these machines (docs/architecture.md). The VM powers
# itself off when the tests end; timeout is the backstop for a hang.
# no_timer_check: under an emulated CPU on a busy host the kernel's IO-APIC
# timer check can fail and panic at boot ("IO-APIC + timer doesn't work").
timeout "${VM_TIMEOUT:-600}" qemu-system-x86_64 -accel tcg -m 1024 -smp 1 -nographic -no-reboot \
	-kernel "$kernel" -initrd "$work/initrd" \
	-append "console=ttyS0 quiet panic=-1 rdinit=/init no_timer_check" </dev/null >"$log" 2>&1 || true
end=$(date +%s)

# The test output is what lies between the markers (serial lines end in CR).
tr -d '\r' <"$log" | awk '/=== SVCPROXY-VMTEST BEGIN/ { on = 1; next } /=== SVCPROXY-VMTEST END/ { on = 0 } on' >"$work/results.txt"
cat "$work/results.txt"
grep '^vm: ' <(tr -d '\r' <"$log") || true
rc=$(tr -d '\r' <"$log" | sed -n 's/.*=== SVCPROXY-VMTEST END rc=\([0-9]*\).*/\1/p' | tail -1)
echo "hack/vm: build $((built - start))s, VM $((end - built))s (console log: ${log#"$root"/})"
if [ -z "$rc" ]; then
	echo "hack/vm: FAIL: the VM did not report (no end marker); last console lines:" >&2
	tr -d '\r' <"$log" | tail -30 >&2
	exit 1
fi
if [ "$rc" != 0 ]; then
	echo "hack/vm: FAIL: vm tests exited $rc" >&2
	exit 1
fi
if grep -q -- '--- SKIP' "$work/results.txt"; then
	echo "hack/vm: FAIL: a VM test was skipped" >&2
	exit 1
fi
if ! grep -qE '^--- PASS|^Benchmark.* ns/op' "$work/results.txt"; then
	echo "hack/vm: FAIL: no test ran in the VM" >&2
	exit 1
fi
echo "hack/vm: PASS"
