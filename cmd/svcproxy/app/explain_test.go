package app

import (
	"bytes"
	"strings"
	"testing"
)

// common returns the flags every case uses, for state.
func common(state string) []string {
	return []string{"--state", state, "--hostname-override", "node1", "--cluster-cidr", "10.244.0.0/16"}
}

const exampleState = "../../../examples/cluster.yaml"

// TestExplainThroughMain: Main hands `explain` over; --help is no error.
func TestExplainThroughMain(t *testing.T) {
	var out, errOut bytes.Buffer
	if code := Main(append([]string{"explain", "-o", "json"}, append(common(exampleState), "web.shop")...), &out, &errOut); code != 0 {
		t.Fatalf("exit %d, stderr:\n%s", code, errOut.String())
	}
	if !strings.Contains(out.String(), `"verdict": "dnat"`) {
		t.Errorf("stdout:\n%s", out.String())
	}
	out.Reset()
	errOut.Reset()
	if code := Main([]string{"explain", "--help"}, &out, &errOut); code != 0 || !strings.Contains(errOut.String(), "Usage: svcproxy explain [flags] TARGET") {
		t.Errorf("--help: exit %d, stderr:\n%s", code, errOut.String())
	}
}
