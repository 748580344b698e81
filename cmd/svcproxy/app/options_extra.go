package app

import (
	"errors"
	"fmt"
	"net"
	"strconv"

	"github.com/spf13/pflag"
)

// Flag names of ExtraOptions, kube-proxy's.
const (
	flagConfig             = "config"
	flagHealthzBindAddress = "healthz-bind-address"
	flagMetricsBindAddress = "metrics-bind-address"
	flagIPVSScheduler      = "ipvs-scheduler"
)

// Defaults of ExtraOptions, kube-proxy's.
const (
	DefaultHealthzBindAddress = "0.0.0.0:10256"
	DefaultMetricsBindAddress = "127.0.0.1:10249"
	DefaultIPVSScheduler      = "rr"

	healthzPort = 10256
	metricsPort = 10249
)

// ipvsSchedulers are the schedulers of the Linux IPVS (ip_vs_*.ko).
var ipvsSchedulers = map[string]bool{
	"rr": true, "wrr": true, "lc": true, "wlc": true, "lblc": true, "lblcr": true,
	"dh": true, "sh": true, "sed": true, "nq": true, "mh": true, "fo": true, "ovf": true, "twos": true,
}

// ExtraOptions are settings that belong in Options; they live in their own
// struct until Options embeds it (then its fields and methods are
// Options'). Their flags keep kube-proxy's names.
type ExtraOptions struct {
	// ConfigFile is a KubeProxyConfiguration file (--config).
	ConfigFile string
	// HealthzBindAddress is where /healthz and /livez are served; "" turns
	// the server off.
	HealthzBindAddress string
	// MetricsBindAddress is where /metrics is served; "" turns the server
	// off.
	MetricsBindAddress string
	// IPVSScheduler is the IPVS scheduler of every virtual server.
	IPVSScheduler string
}

// NewExtraOptions returns ExtraOptions with kube-proxy's defaults.
func NewExtraOptions() ExtraOptions {
	return ExtraOptions{
		HealthzBindAddress: DefaultHealthzBindAddress,
		MetricsBindAddress: DefaultMetricsBindAddress,
		IPVSScheduler:      DefaultIPVSScheduler,
	}
}

// AddFlags registers the flags of x on fs.
func (x *ExtraOptions) AddFlags(fs *pflag.FlagSet) {
	fs.StringVar(&x.ConfigFile, flagConfig, x.ConfigFile,
		"A kube-proxy configuration file (kubeproxy.config.k8s.io/v1alpha1 KubeProxyConfiguration). Flags given on the command line override it.")
	fs.StringVar(&x.HealthzBindAddress, flagHealthzBindAddress, x.HealthzBindAddress,
		"The address and port (default port 10256) of /healthz and /livez. Empty: no health server.")
	fs.StringVar(&x.MetricsBindAddress, flagMetricsBindAddress, x.MetricsBindAddress,
		"The address and port (default port 10249) of /metrics. Empty: no metrics server.")
	fs.StringVar(&x.IPVSScheduler, flagIPVSScheduler, x.IPVSScheduler,
		"The IPVS scheduler in --mode=ipvs: rr, wrr, lc, wlc, lblc, lblcr, dh, sh, sed, nq, mh.")
}

// Complete appends the default ports to bind addresses given without one,
// as kube-proxy does ("0.0.0.0" means "0.0.0.0:10256" for healthz).
func (x *ExtraOptions) Complete() {
	x.HealthzBindAddress = appendPortIfNeeded(x.HealthzBindAddress, healthzPort)
	x.MetricsBindAddress = appendPortIfNeeded(x.MetricsBindAddress, metricsPort)
}

// Validate checks x; every problem is reported.
func (x *ExtraOptions) Validate() error {
	var errs []error
	for _, a := range []struct{ flag, value string }{
		{flagHealthzBindAddress, x.HealthzBindAddress},
		{flagMetricsBindAddress, x.MetricsBindAddress},
	} {
		if a.value == "" {
			continue
		}
		if err := validateHostPort(a.value); err != nil {
			errs = append(errs, fmt.Errorf("--%s %q: %w", a.flag, a.value, err))
		}
	}
	if !ipvsSchedulers[x.IPVSScheduler] {
		errs = append(errs, fmt.Errorf("--%s %q: unknown IPVS scheduler", flagIPVSScheduler, x.IPVSScheduler))
	}
	return errors.Join(errs...)
}

func validateHostPort(s string) error {
	host, port, err := net.SplitHostPort(s)
	if err != nil {
		return err
	}
	if host != "" && net.ParseIP(host) == nil {
		return fmt.Errorf("%q is not an IP address", host)
	}
	n, err := strconv.Atoi(port)
	if err != nil || n < 0 || n > 65535 {
		return fmt.Errorf("invalid port %q", port)
	}
	return nil
}

// appendPortIfNeeded adds port to an address that is a bare IP, like
// kube-proxy's proxyutil.AppendPortIfNeeded; anything else is returned
// unchanged (and Validate judges it).
func appendPortIfNeeded(addr string, port int) string {
	if addr == "" {
		return addr
	}
	if _, _, err := net.SplitHostPort(addr); err == nil {
		return addr
	}
	ip := net.ParseIP(addr)
	if ip == nil {
		return addr
	}
	return net.JoinHostPort(ip.String(), strconv.Itoa(port))
}
