// Package app is svcproxy's command line: it parses flags and the
// KubeProxyConfiguration file into a config.Config and wires the backend
// of --mode, the source and the leftovers to remove into a proxy/daemon.
package app

import (
	"flag"
	"fmt"

	"github.com/spf13/pflag"
	"k8s.io/klog/v2"

	"github.com/svcproxy/svcproxy/proxy/config"
)

// newFlagSet returns the complete flag set of c, klog's flags included.
func newFlagSet(c *config.Config) *pflag.FlagSet {
	fs := pflag.NewFlagSet("svcproxy", pflag.ContinueOnError)
	c.AddFlags(fs)
	gofs := flag.NewFlagSet("klog", flag.ContinueOnError)
	klog.InitFlags(gofs)
	fs.AddGoFlagSet(gofs)
	fs.Usage = func() {
		fmt.Fprint(fs.Output(), daemonUsageText)
		fs.PrintDefaults()
	}
	return fs
}

// daemonUsageText heads svcproxy --help (explain has its own).
const daemonUsageText = `Usage: svcproxy [flags]
       svcproxy explain [flags] TARGET

svcproxy programs this node's kernel so that Services reach their endpoints
(--mode iptables, ipvs or nftables), from the API server or a --state file.

svcproxy explain says why a connection to TARGET is DNATed, rejected or
dropped on this node, and with --live whether the kernel agrees
(svcproxy explain --help).

Flags:
`
