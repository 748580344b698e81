// Command svcproxy is a drop-in replacement for kube-proxy.
package main

import (
	"os"

	"github.com/svcproxy/svcproxy/cmd/svcproxy/app"
)

func main() { os.Exit(app.Main(os.Args[1:], os.Stdout, os.Stderr)) }
