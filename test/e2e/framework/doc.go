// Package framework is svcproxy's end-to-end test bed: a real control plane
// (etcd and kube-apiserver with RBAC), nodes, pods and an outside client
// made of network namespaces, a VXLAN overlay between the nodes, svcproxy
// on every node and CoreDNS as the cluster DNS.
//
// # Nothing outside its own namespaces
//
// Every host of the test bed is a network namespace the framework creates,
// named NamePrefix<pid>-<host> (svcpe2e-1234-node1, ...). The root network
// namespace is never changed: no interface, route, sysctl or iptables rule
// is added there, and no link connects the test bed to it, so no packet of
// a test can leave the machine. Sysctls are written with `ip netns exec NS
// sysctl -w` inside the namespaces only.
//
// That is why the control plane runs in a namespace of its own on the
// underlay (192.168.77.10) instead of on 127.0.0.1 of the machine: svcproxy
// in the node namespaces and CoreDNS in a pod reach it like a real
// cluster's API server, without a veth into the root namespace. The test
// process itself reaches it (and every pod, node and the client) by creating
// its sockets on a thread switched into the right namespace (NetNS.Do,
// NetNS.DialContext; rest.Config.Dial for client-go). By hand:
//
//	ip netns exec svcpe2e-<pid>-cp kubectl --kubeconfig <dir>/admin.kubeconfig get svc -A
//
// # Processes and cleanup
//
// Processes run with `ip netns exec` (which execs in place, so the PID the
// framework holds is the program's) and with Pdeathsig SIGKILL: if the test
// binary dies they die too. Close stops them by PID (SIGTERM, then
// SIGKILL), deletes the namespaces and the temporary directory; Start and
// New clean up on failure too. Namespaces left by a run that was killed
// (its PID is gone) are removed by the next run.
//
// See network.go for the address plan.
package framework
