// Package app is svcproxy's command line: it parses flags and the
// KubeProxyConfiguration file into a config.Config and wires the backend
// of --mode, the source and the leftovers to remove into a proxy/daemon.
package app

import (
	"flag"

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
	return fs
}
