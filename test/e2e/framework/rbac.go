package framework

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"regexp"

	authenticationv1 "k8s.io/api/authentication/v1"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/kubernetes/scheme"
)

// docSeparator splits a multi-document YAML file.
var docSeparator = regexp.MustCompile(`(?m)^---[ \t]*$`)

// ApplyManifest creates (or, if they exist, updates) the objects of a
// multi-document YAML manifest. It knows the kinds an RBAC manifest holds:
// ServiceAccount, ClusterRole, ClusterRoleBinding, Role, RoleBinding.
func ApplyManifest(ctx context.Context, client kubernetes.Interface, manifest []byte) ([]runtime.Object, error) {
	var objs []runtime.Object
	decode := scheme.Codecs.UniversalDeserializer().Decode
	for i, doc := range docSeparator.Split(string(manifest), -1) {
		if len(bytes.TrimSpace(stripComments([]byte(doc)))) == 0 {
			continue
		}
		obj, gvk, err := decode([]byte(doc), nil, nil)
		if err != nil {
			return nil, fmt.Errorf("document %d: %w", i, err)
		}
		if err := applyObject(ctx, client, obj); err != nil {
			return nil, fmt.Errorf("document %d (%s): %w", i, gvk.Kind, err)
		}
		objs = append(objs, obj)
	}
	return objs, nil
}

func stripComments(b []byte) []byte {
	var out [][]byte
	for _, l := range bytes.Split(b, []byte("\n")) {
		if t := bytes.TrimSpace(l); len(t) > 0 && t[0] != '#' {
			out = append(out, l)
		}
	}
	return bytes.Join(out, []byte("\n"))
}

func applyObject(ctx context.Context, client kubernetes.Interface, obj runtime.Object) error {
	create := metav1.CreateOptions{}
	update := metav1.UpdateOptions{}
	var err error
	switch o := obj.(type) {
	case *corev1.ServiceAccount:
		_, err = client.CoreV1().ServiceAccounts(o.Namespace).Create(ctx, o, create)
		if apierrors.IsAlreadyExists(err) {
			_, err = client.CoreV1().ServiceAccounts(o.Namespace).Update(ctx, o, update)
		}
	case *rbacv1.ClusterRole:
		_, err = client.RbacV1().ClusterRoles().Create(ctx, o, create)
		if apierrors.IsAlreadyExists(err) {
			_, err = client.RbacV1().ClusterRoles().Update(ctx, o, update)
		}
	case *rbacv1.ClusterRoleBinding:
		_, err = client.RbacV1().ClusterRoleBindings().Create(ctx, o, create)
		if apierrors.IsAlreadyExists(err) {
			_, err = client.RbacV1().ClusterRoleBindings().Update(ctx, o, update)
		}
	case *rbacv1.Role:
		_, err = client.RbacV1().Roles(o.Namespace).Create(ctx, o, create)
		if apierrors.IsAlreadyExists(err) {
			_, err = client.RbacV1().Roles(o.Namespace).Update(ctx, o, update)
		}
	case *rbacv1.RoleBinding:
		_, err = client.RbacV1().RoleBindings(o.Namespace).Create(ctx, o, create)
		if apierrors.IsAlreadyExists(err) {
			_, err = client.RbacV1().RoleBindings(o.Namespace).Update(ctx, o, update)
		}
	default:
		err = fmt.Errorf("kind %T is not supported by ApplyManifest", obj)
	}
	return err
}

// ServiceAccountToken returns a token for the ServiceAccount namespace/name
// from the TokenRequest API, valid for a day.
func ServiceAccountToken(ctx context.Context, client kubernetes.Interface, namespace, name string) (string, error) {
	exp := int64(24 * 60 * 60)
	tr, err := client.CoreV1().ServiceAccounts(namespace).CreateToken(ctx, name,
		&authenticationv1.TokenRequest{Spec: authenticationv1.TokenRequestSpec{ExpirationSeconds: &exp}}, metav1.CreateOptions{})
	if err != nil {
		return "", fmt.Errorf("requesting a token for service account %s/%s: %w", namespace, name, err)
	}
	return tr.Status.Token, nil
}

// setUpProxyCredentials applies deploy/rbac.yaml and writes the kubeconfig
// the proxies use: the token of the ServiceAccount it defines.
func (c *Cluster) setUpProxyCredentials(ctx context.Context) error {
	manifest, err := os.ReadFile(c.opts.RBACManifest)
	if err != nil {
		return err
	}
	objs, err := ApplyManifest(ctx, c.Kube, manifest)
	if err != nil {
		return fmt.Errorf("applying %s: %w", c.opts.RBACManifest, err)
	}
	var sa *corev1.ServiceAccount
	for _, o := range objs {
		if s, ok := o.(*corev1.ServiceAccount); ok {
			sa = s
		}
	}
	if sa == nil {
		return fmt.Errorf("%s has no ServiceAccount", c.opts.RBACManifest)
	}
	token, err := ServiceAccountToken(ctx, c.Kube, sa.Namespace, sa.Name)
	if err != nil {
		return err
	}
	c.ProxyKubeconfig = c.path("svcproxy.kubeconfig")
	return writeKubeconfig(c.ProxyKubeconfig, c.pki.caPEM, "system:serviceaccount:"+sa.Namespace+":"+sa.Name, token)
}
