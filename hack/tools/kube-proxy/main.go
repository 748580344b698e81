// Command kube-proxy is upstream's kube-proxy, built from the
// k8s.io/kubernetes module pinned in this directory's go.mod, for the e2e
// test bed's live-takeover test (test/e2e/takeover_test.go). It is
// cmd/kube-proxy/proxy.go of that module.
package main

import (
	"os"

	"k8s.io/component-base/cli"
	_ "k8s.io/component-base/logs/json/register"          // JSON log format
	_ "k8s.io/component-base/metrics/prometheus/clientgo" // client-go metrics
	_ "k8s.io/component-base/metrics/prometheus/version"  // version metric
	"k8s.io/kubernetes/cmd/kube-proxy/app"
)

func main() {
	os.Exit(cli.Run(app.NewProxyCommand()))
}
