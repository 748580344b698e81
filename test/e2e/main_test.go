//go:build e2e

// Package e2e runs svcproxy against a real control plane, nodes joined by a
// VXLAN overlay, pods and CoreDNS, all in network namespaces of their own
// (see framework). Run it as root with hack/e2e.sh, or:
//
//	hack/tools/build.sh && go build -o bin/svcproxy ./cmd/svcproxy &&
//	go test -tags e2e -count=1 -v ./test/e2e/...
//
// A missing prerequisite fails the run; nothing here is ever skipped.
package e2e

import (
	"os"
	"testing"

	"github.com/svcproxy/svcproxy/test/e2e/framework"
)

// cluster is the test bed every test of the package shares. Tests keep out
// of each other's way by namespace and service names.
var cluster *framework.Cluster

func TestMain(m *testing.M) {
	os.Exit(framework.Main(m, framework.DefaultOptions(), func(c *framework.Cluster) { cluster = c }))
}
