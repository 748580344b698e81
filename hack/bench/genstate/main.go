// Command genstate writes a --state file (a kubectl-style kind: List) of N
// services × E endpoints for benchmarks.
package main

import (
	"flag"
	"fmt"
	"os"

	"sigs.k8s.io/yaml"

	pt "github.com/svcproxy/svcproxy/proxy/proxytest"
)

func main() {
	n := flag.Int("services", 10000, "number of services")
	e := flag.Int("endpoints", 5, "endpoints per service")
	change := flag.Int("change", 0, "move the first endpoint of service N/2 this many times (0: unchanged)")
	target := flag.String("target", "", "if set, the last service's endpoints are all this pod IP (a real server)")
	out := flag.String("o", "state.yaml", "output file")
	flag.Parse()

	svcs, slices := pt.Generate(*n, *e)
	if *change > 0 {
		s := slices[*n/2]
		s.Endpoints[0].Addresses = []string{fmt.Sprintf("10.250.%d.%d", *change>>8&0xff, *change&0xff)}
	}
	if *target != "" {
		last := slices[*n-1]
		last.Endpoints = last.Endpoints[:1]
		last.Endpoints[0].Addresses = []string{*target}
	}
	items := make([]any, 0, 2**n)
	for _, s := range svcs {
		s.APIVersion, s.Kind = "v1", "Service"
		items = append(items, s)
	}
	for _, s := range slices {
		s.APIVersion, s.Kind = "discovery.k8s.io/v1", "EndpointSlice"
		items = append(items, s)
	}
	data, err := yaml.Marshal(map[string]any{"apiVersion": "v1", "kind": "List", "items": items})
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	tmp := *out + ".tmp"
	if err := os.WriteFile(tmp, data, 0o644); err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	if err := os.Rename(tmp, *out); err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
}
