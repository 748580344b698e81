// Command coredns is upstream's CoreDNS with its full default plugin set,
// built from the github.com/coredns/coredns module pinned in this directory's
// go.mod (coredns.go of that module), for the e2e test bed (test/e2e). It
// lives in a module of its own because CoreDNS and k8s.io/kubernetes pin
// different versions of client-go and etcd.
package main

import (
	_ "github.com/coredns/coredns/core/plugin" // every plugin of the upstream build
	"github.com/coredns/coredns/coremain"
)

func main() {
	coremain.Run()
}
