// Command kubectl is upstream's kubectl, built from the k8s.io/kubectl
// staging module that k8s.io/kubernetes pins (this directory's go.mod), to
// use the e2e test bed by hand (test/e2e/testbed). It is
// cmd/kubectl/kubectl.go of k8s.io/kubernetes, without the cloud auth
// plugins.
package main

import (
	"os"

	"k8s.io/component-base/cli"
	"k8s.io/component-base/logs"
	"k8s.io/kubectl/pkg/cmd"
	"k8s.io/kubectl/pkg/cmd/util"
)

func main() {
	logs.GlogSetter(cmd.GetLogVerbosity(os.Args)) //nolint:errcheck // as upstream
	if err := cli.RunNoErrOutput(cmd.NewDefaultKubectlCommand()); err != nil {
		util.CheckErr(err)
	}
}
