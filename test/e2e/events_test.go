//go:build e2e

package e2e

import (
	"context"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// TestStartEventOnNode: like kube-proxy's "Starting kube-proxy.", each
// svcproxy records a Starting event on its Node (allowed by the shipped
// ClusterRole's create/patch on events).
func TestStartEventOnNode(t *testing.T) {
	for _, node := range cluster.Nodes {
		deadline := time.Now().Add(10 * time.Second)
		for {
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			list, err := cluster.Kube.EventsV1().Events("default").List(ctx, metav1.ListOptions{})
			cancel()
			if err != nil {
				t.Fatal(err)
			}
			found := false
			for _, e := range list.Items {
				if e.Regarding.Kind == "Node" && e.Regarding.Name == node.Name && e.Reason == "Starting" && e.ReportingController == "svcproxy" {
					found = true
				}
			}
			if found {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("no Starting event from svcproxy on Node %s (%d events)", node.Name, len(list.Items))
			}
			time.Sleep(200 * time.Millisecond)
		}
	}
}
