// Package vmtest holds IPVS mode's real-kernel tests. They need a kernel
// with ip_vs and dummy, which the test machines do not have, so they run
// inside a qemu VM booted by hack/vm/run.sh: build tag "vm", one static test
// binary, results over the serial console. Every test builds its own
// network namespaces (a node, pods, an outside client) inside the VM.
package vmtest
