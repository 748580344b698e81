package framework

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
	clientcmdapi "k8s.io/client-go/tools/clientcmd/api"
)

const (
	apiServerPort = "6443"
	etcdClientURL = "http://127.0.0.1:2379"
	etcdPeerURL   = "http://127.0.0.1:2380"
)

// APIServerURL is the API server's address on the underlay. Reach it from
// the test process through Cluster.RESTConfig (which dials inside the
// control plane's namespace), from a shell with `ip netns exec
// <control-plane namespace> kubectl --kubeconfig <Cluster.AdminKubeconfig>`.
const APIServerURL = "https://" + controlPlaneIP + ":" + apiServerPort

// startControlPlane starts etcd and kube-apiserver in the control plane's
// namespace and waits until the API server's /readyz is ok.
func (c *Cluster) startControlPlane(ctx context.Context) error {
	dir := filepath.Join(c.Dir, "control-plane")
	if err := os.MkdirAll(filepath.Join(dir, "certs"), 0o700); err != nil {
		return err
	}
	p, err := newPKI(dir,
		[]net.IP{net.ParseIP(controlPlaneIP), net.ParseIP(KubernetesServiceIP), net.ParseIP("127.0.0.1")},
		[]string{"kubernetes", "kubernetes.default", "kubernetes.default.svc", "kubernetes.default.svc." + ClusterDomain, "localhost"})
	if err != nil {
		return fmt.Errorf("creating certificates and keys: %w", err)
	}
	c.pki = p
	cp := c.ControlPlane.NetNS

	// etcd's ports are fixed: the namespace is ours alone, so they are free.
	etcd, err := c.start(cp, "etcd", c.Tool("etcd"),
		"--name=e2e",
		"--data-dir="+filepath.Join(dir, "etcd"),
		"--listen-client-urls="+etcdClientURL,
		"--advertise-client-urls="+etcdClientURL,
		"--listen-peer-urls="+etcdPeerURL,
		"--initial-advertise-peer-urls="+etcdPeerURL,
		"--initial-cluster=e2e="+etcdPeerURL,
		"--unsafe-no-fsync", // a test's data need not survive a power cut
		"--log-level=warn",
	)
	if err != nil {
		return err
	}
	httpc := &http.Client{Transport: &http.Transport{DialContext: cp.DialContext}, Timeout: 2 * time.Second}
	if err := poll(ctx, 30*time.Second, etcd, func() error {
		resp, err := httpc.Get(etcdClientURL + "/health")
		if err != nil {
			return err
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		if !strings.Contains(string(b), `"health":"true"`) {
			return fmt.Errorf("etcd /health: %s", b)
		}
		return nil
	}); err != nil {
		return fmt.Errorf("etcd did not become healthy: %w", err)
	}

	apiserver, err := c.start(cp, "kube-apiserver", c.Tool("kube-apiserver"),
		"--etcd-servers="+etcdClientURL,
		"--bind-address=0.0.0.0",
		"--advertise-address="+controlPlaneIP,
		"--secure-port="+apiServerPort,
		"--tls-cert-file="+p.servingCert,
		"--tls-private-key-file="+p.servingKey,
		"--cert-dir="+filepath.Join(dir, "certs"),
		"--service-cluster-ip-range="+ServiceCIDR+","+ServiceCIDR6,
		"--service-account-issuer=https://kubernetes.default.svc."+ClusterDomain,
		"--service-account-key-file="+p.saKey,
		"--service-account-signing-key-file="+p.saKey,
		"--authorization-mode=RBAC",
		"--token-auth-file="+p.tokenFile,
		"--profiling=false",
	)
	if err != nil {
		return err
	}
	c.APIServer = apiserver

	c.RESTConfig = &rest.Config{
		Host:            APIServerURL,
		BearerToken:     p.adminToken,
		TLSClientConfig: rest.TLSClientConfig{CAData: p.caPEM},
		Dial:            cp.DialContext,
		UserAgent:       "svcproxy-e2e",
		QPS:             200,
		Burst:           400,
	}
	c.Kube, err = kubernetes.NewForConfig(c.RESTConfig)
	if err != nil {
		return err
	}
	if err := poll(ctx, 120*time.Second, apiserver, func() error {
		ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		defer cancel()
		b, err := c.Kube.Discovery().RESTClient().Get().AbsPath("/readyz").DoRaw(ctx)
		if err != nil {
			return fmt.Errorf("/readyz: %w: %s", err, b)
		}
		return nil
	}); err != nil {
		return fmt.Errorf("kube-apiserver did not become ready: %w", err)
	}
	// The API server creates kube-system itself, shortly after it is ready.
	if err := poll(ctx, 30*time.Second, apiserver, func() error {
		_, err := c.Kube.CoreV1().Namespaces().Get(ctx, metav1.NamespaceSystem, metav1.GetOptions{})
		return err
	}); err != nil {
		return err
	}

	c.AdminKubeconfig = filepath.Join(c.Dir, "admin.kubeconfig")
	return writeKubeconfig(c.AdminKubeconfig, p.caPEM, p.adminUser, p.adminToken)
}

// writeKubeconfig writes a kubeconfig for APIServerURL with a bearer token.
func writeKubeconfig(path string, caPEM []byte, user, token string) error {
	cfg := clientcmdapi.NewConfig()
	cfg.Clusters["e2e"] = &clientcmdapi.Cluster{Server: APIServerURL, CertificateAuthorityData: caPEM}
	cfg.AuthInfos[user] = &clientcmdapi.AuthInfo{Token: token}
	cfg.Contexts["e2e"] = &clientcmdapi.Context{Cluster: "e2e", AuthInfo: user}
	cfg.CurrentContext = "e2e"
	return clientcmd.WriteToFile(*cfg, path)
}

// EnsureNamespace creates the Kubernetes namespace name unless it exists.
// Namespaces are never deleted: no namespace controller runs to finish it.
func (c *Cluster) EnsureNamespace(ctx context.Context, name string) error {
	_, err := c.Kube.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: name}}, metav1.CreateOptions{})
	if apierrors.IsAlreadyExists(err) {
		return nil
	}
	return err
}

// poll calls fn every 100ms until it returns nil, timeout passes, ctx is
// done or proc (if not nil) exits. The error says which, with fn's last
// error and proc's log.
func poll(ctx context.Context, timeout time.Duration, proc *Process, fn func() error) error {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	tick := time.NewTicker(100 * time.Millisecond)
	defer tick.Stop()
	var last error
	for {
		if last = fn(); last == nil {
			return nil
		}
		if proc != nil {
			if exited, err := proc.Exited(); exited {
				return fmt.Errorf("%s exited (%v); last error: %v; log %s:\n%s", proc.Name, exitStatus(err), last, proc.LogPath, proc.Tail(30))
			}
		}
		select {
		case <-ctx.Done():
			err := fmt.Errorf("%w after %v; last error: %v", ctx.Err(), timeout, last)
			if proc != nil {
				err = fmt.Errorf("%w; log %s:\n%s", err, proc.LogPath, proc.Tail(30))
			}
			return err
		case <-tick.C:
		}
	}
}
