// Package deploy holds svcproxy's Kubernetes manifests and image build; this
// test decodes them strictly into their API types and checks what the
// DaemonSet must have.
package deploy

import (
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/client-go/tools/clientcmd"
	"sigs.k8s.io/yaml"

	"github.com/svcproxy/svcproxy/proxy/config"
)

var docSeparator = regexp.MustCompile(`(?m)^---[ \t]*$`)

// manifest holds the objects of a multi-document YAML file, by kind.
type manifest struct {
	serviceAccounts []*corev1.ServiceAccount
	clusterRoles    []*rbacv1.ClusterRole
	bindings        []*rbacv1.ClusterRoleBinding
	configMaps      []*corev1.ConfigMap
	daemonSets      []*appsv1.DaemonSet
}

// load decodes path strictly: unknown or duplicate fields, and kinds or API
// versions other than those expected, fail the test.
func load(t *testing.T, path string) manifest {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var m manifest
	for i, doc := range docSeparator.Split(string(data), -1) {
		var tm metav1.TypeMeta
		if err := yaml.Unmarshal([]byte(doc), &tm); err != nil {
			t.Fatalf("%s document %d: %v", path, i, err)
		}
		if tm.Kind == "" && len(bytes.TrimSpace(stripComments(doc))) == 0 {
			continue
		}
		var obj any
		switch tm.APIVersion + " " + tm.Kind {
		case "v1 ServiceAccount":
			o := &corev1.ServiceAccount{}
			m.serviceAccounts, obj = append(m.serviceAccounts, o), o
		case "rbac.authorization.k8s.io/v1 ClusterRole":
			o := &rbacv1.ClusterRole{}
			m.clusterRoles, obj = append(m.clusterRoles, o), o
		case "rbac.authorization.k8s.io/v1 ClusterRoleBinding":
			o := &rbacv1.ClusterRoleBinding{}
			m.bindings, obj = append(m.bindings, o), o
		case "v1 ConfigMap":
			o := &corev1.ConfigMap{}
			m.configMaps, obj = append(m.configMaps, o), o
		case "apps/v1 DaemonSet":
			o := &appsv1.DaemonSet{}
			m.daemonSets, obj = append(m.daemonSets, o), o
		default:
			t.Fatalf("%s document %d: unexpected %s %s", path, i, tm.APIVersion, tm.Kind)
		}
		if err := yaml.UnmarshalStrict([]byte(doc), obj); err != nil {
			t.Fatalf("%s document %d (%s): %v", path, i, tm.Kind, err)
		}
	}
	return m
}

func stripComments(doc string) []byte {
	var out []string
	for _, l := range strings.Split(doc, "\n") {
		if t := strings.TrimSpace(l); t != "" && !strings.HasPrefix(t, "#") {
			out = append(out, l)
		}
	}
	return []byte(strings.Join(out, "\n"))
}

func one[T any](t *testing.T, kind string, objs []*T) *T {
	t.Helper()
	if len(objs) != 1 {
		t.Fatalf("svcproxy.yaml holds %d %ss, want 1", len(objs), kind)
	}
	return objs[0]
}

func TestManifest(t *testing.T) {
	m := load(t, "svcproxy.yaml")
	sa := one(t, "ServiceAccount", m.serviceAccounts)
	role := one(t, "ClusterRole", m.clusterRoles)
	binding := one(t, "ClusterRoleBinding", m.bindings)
	cm := one(t, "ConfigMap", m.configMaps)
	ds := one(t, "DaemonSet", m.daemonSets)

	t.Run("namespace", func(t *testing.T) {
		for kind, ns := range map[string]string{"ServiceAccount": sa.Namespace, "ConfigMap": cm.Namespace, "DaemonSet": ds.Namespace} {
			if ns != "kube-system" {
				t.Errorf("%s in namespace %q, want kube-system", kind, ns)
			}
		}
	})

	t.Run("ClusterRole grants exactly what svcproxy uses", func(t *testing.T) {
		type grant struct{ group, resource, verb string }
		var got []grant
		for _, r := range role.Rules {
			if len(r.ResourceNames) > 0 || len(r.NonResourceURLs) > 0 {
				t.Errorf("rule %v: resourceNames/nonResourceURLs not expected", r)
			}
			for _, g := range r.APIGroups {
				for _, res := range r.Resources {
					for _, v := range r.Verbs {
						got = append(got, grant{g, res, v})
					}
				}
			}
		}
		var want []grant
		for _, gr := range []struct{ group, resource string }{{"", "services"}, {"", "nodes"}, {"discovery.k8s.io", "endpointslices"}} {
			for _, v := range []string{"get", "list", "watch"} {
				want = append(want, grant{gr.group, gr.resource, v})
			}
		}
		for _, g := range []string{"", "events.k8s.io"} {
			for _, v := range []string{"create", "patch"} {
				want = append(want, grant{g, "events", v})
			}
		}
		less := func(a, b grant) int { return strings.Compare(fmt.Sprint(a), fmt.Sprint(b)) }
		slices.SortFunc(got, less)
		slices.SortFunc(want, less)
		if diff := cmp.Diff(want, got, cmp.AllowUnexported(grant{})); diff != "" {
			t.Errorf("grants (-want +got):\n%s", diff)
		}
	})

	t.Run("ClusterRoleBinding", func(t *testing.T) {
		want := rbacv1.RoleRef{APIGroup: "rbac.authorization.k8s.io", Kind: "ClusterRole", Name: role.Name}
		if binding.RoleRef != want {
			t.Errorf("roleRef %+v, want %+v", binding.RoleRef, want)
		}
		wantSubjects := []rbacv1.Subject{{Kind: "ServiceAccount", Name: sa.Name, Namespace: sa.Namespace}}
		if diff := cmp.Diff(wantSubjects, binding.Subjects); diff != "" {
			t.Errorf("subjects (-want +got):\n%s", diff)
		}
	})

	spec := ds.Spec.Template.Spec
	t.Run("DaemonSet scheduling", func(t *testing.T) {
		if ds.Spec.Selector == nil || !matches(ds.Spec.Selector.MatchLabels, ds.Spec.Template.Labels) {
			t.Errorf("selector %v does not select the template's labels %v", ds.Spec.Selector, ds.Spec.Template.Labels)
		}
		if !spec.HostNetwork {
			t.Error("hostNetwork is not set")
		}
		if spec.PriorityClassName != "system-node-critical" {
			t.Errorf("priorityClassName %q", spec.PriorityClassName)
		}
		if diff := cmp.Diff([]corev1.Toleration{{Operator: corev1.TolerationOpExists}}, spec.Tolerations); diff != "" {
			t.Errorf("tolerations (-want +got):\n%s", diff)
		}
		us := ds.Spec.UpdateStrategy
		if us.Type != appsv1.RollingUpdateDaemonSetStrategyType || us.RollingUpdate == nil ||
			us.RollingUpdate.MaxUnavailable == nil || *us.RollingUpdate.MaxUnavailable != intstr.FromInt32(1) {
			t.Errorf("updateStrategy %+v, want RollingUpdate with maxUnavailable 1", us)
		}
		if spec.ServiceAccountName != sa.Name {
			t.Errorf("serviceAccountName %q, want %q", spec.ServiceAccountName, sa.Name)
		}
	})

	if len(spec.Containers) != 1 {
		t.Fatalf("%d containers, want 1", len(spec.Containers))
	}
	c := spec.Containers[0]
	t.Run("container privileges", func(t *testing.T) {
		sc := c.SecurityContext
		if sc == nil || sc.Capabilities == nil {
			t.Fatal("no securityContext.capabilities")
		}
		if sc.Privileged != nil && *sc.Privileged {
			t.Error("privileged")
		}
		add := slices.Clone(sc.Capabilities.Add)
		slices.Sort(add)
		if diff := cmp.Diff([]corev1.Capability{"NET_ADMIN", "NET_RAW"}, add); diff != "" {
			t.Errorf("capabilities.add (-want +got):\n%s", diff)
		}
		// test/e2e/framework runs svcproxy with the added capabilities
		// only, which is what a container gets after dropping ALL.
		if diff := cmp.Diff([]corev1.Capability{"ALL"}, sc.Capabilities.Drop); diff != "" {
			t.Errorf("capabilities.drop (-want +got):\n%s", diff)
		}
		if !ptrOr(sc.ReadOnlyRootFilesystem, false) {
			t.Error("readOnlyRootFilesystem is not set")
		}
		if ptrOr(sc.AllowPrivilegeEscalation, true) {
			t.Error("allowPrivilegeEscalation is not false")
		}
		// Root, as the e2e suite runs it (the image has no USER): the
		// xtables lock is root's.
		for name, uid := range map[string]*int64{"container": sc.RunAsUser, "pod": podSecurity(spec).RunAsUser} {
			if uid != nil && *uid != 0 {
				t.Errorf("%s runAsUser %d: the e2e suite proves uid 0", name, *uid)
			}
		}
		profile := podSecurity(spec).SeccompProfile
		if sc.SeccompProfile != nil {
			profile = sc.SeccompProfile
		}
		if profile == nil || profile.Type != corev1.SeccompProfileTypeRuntimeDefault {
			t.Errorf("seccompProfile %+v, want RuntimeDefault", profile)
		}
	})

	t.Run("host mounts", func(t *testing.T) {
		vols := map[string]corev1.Volume{}
		for _, v := range spec.Volumes {
			vols[v.Name] = v
		}
		mounts := map[string]corev1.VolumeMount{}
		mounted := map[string]bool{}
		for _, vm := range c.VolumeMounts {
			mounts[vm.MountPath] = vm
			mounted[vm.Name] = true
			if _, ok := vols[vm.Name]; !ok {
				t.Errorf("mount %s of undefined volume %q", vm.MountPath, vm.Name)
			}
		}
		// The host paths svcproxy uses, and nothing else: iptables' lock,
		// shared with the host's other iptables users. (No /lib/modules:
		// modules are loaded by the host's kernel, not from the container.)
		var hostPaths []string
		for _, v := range spec.Volumes {
			if !mounted[v.Name] {
				t.Errorf("volume %q is not mounted", v.Name)
			}
			if v.HostPath != nil {
				hostPaths = append(hostPaths, v.HostPath.Path)
			}
		}
		if diff := cmp.Diff([]string{"/run/xtables.lock"}, hostPaths); diff != "" {
			t.Errorf("hostPath volumes (-want +got):\n%s", diff)
		}
		for _, want := range []struct {
			path     string
			typ      corev1.HostPathType
			readOnly bool
		}{
			{"/run/xtables.lock", corev1.HostPathFileOrCreate, false},
		} {
			vm, ok := mounts[want.path]
			if !ok {
				t.Errorf("%s not mounted", want.path)
				continue
			}
			if vm.ReadOnly != want.readOnly {
				t.Errorf("%s readOnly %v, want %v", want.path, vm.ReadOnly, want.readOnly)
			}
			hp := vols[vm.Name].HostPath
			if hp == nil || hp.Path != want.path {
				t.Errorf("%s: volume %q is not hostPath %s", want.path, vm.Name, want.path)
				continue
			}
			if got := ptrOr(hp.Type, ""); got != want.typ {
				t.Errorf("%s: hostPath type %q, want %q", want.path, got, want.typ)
			}
		}
	})

	t.Run("probes", func(t *testing.T) {
		for _, p := range []struct {
			name  string
			probe *corev1.Probe
			path  string
		}{{"liveness", c.LivenessProbe, "/livez"}, {"readiness", c.ReadinessProbe, "/healthz"}} {
			if p.probe == nil || p.probe.HTTPGet == nil {
				t.Errorf("%s probe: not an httpGet", p.name)
				continue
			}
			if g := p.probe.HTTPGet; g.Path != p.path || g.Port != intstr.FromInt32(10256) {
				t.Errorf("%s probe: %s on port %s, want %s on 10256", p.name, g.Path, g.Port.String(), p.path)
			}
		}
	})

	args := append(slices.Clone(c.Command), c.Args...)
	t.Run("hostname from the downward API", func(t *testing.T) {
		var envName string
		for _, a := range args {
			if v, ok := strings.CutPrefix(a, "--hostname-override=$("); ok {
				envName = strings.TrimSuffix(v, ")")
			}
		}
		if envName == "" {
			t.Fatalf("no --hostname-override=$(VAR) in %q", args)
		}
		for _, e := range c.Env {
			if e.Name == envName {
				if e.ValueFrom == nil || e.ValueFrom.FieldRef == nil || e.ValueFrom.FieldRef.FieldPath != "spec.nodeName" {
					t.Errorf("env %s is not the downward API's spec.nodeName: %+v", envName, e)
				}
				return
			}
		}
		t.Errorf("env %s not defined", envName)
	})

	t.Run("config from the ConfigMap", func(t *testing.T) {
		var configPath string
		for _, a := range args {
			if v, ok := strings.CutPrefix(a, "--config="); ok {
				configPath = v
			}
		}
		if configPath == "" {
			t.Fatalf("no --config= in %q", args)
		}
		key := mountedKey(t, spec, c, cm.Name, configPath)
		file := filepath.Join(t.TempDir(), key)
		if err := os.WriteFile(file, []byte(cm.Data[key]), 0o644); err != nil {
			t.Fatal(err)
		}
		o := config.Defaults()
		warnings, err := o.ApplyConfigFile(file, nil)
		if err != nil {
			t.Fatal(err)
		}
		if len(warnings) > 0 {
			t.Errorf("the shipped configuration has warnings: %q", warnings)
		}
		if o.Mode != config.ModeIPTables {
			t.Errorf("mode %q, want %q", o.Mode, config.ModeIPTables)
		}
		if o.HealthzBindAddress != "0.0.0.0:10256" {
			t.Errorf("healthz on %q, but the probes use port 10256 on the node IP", o.HealthzBindAddress)
		}
		if o.Kubeconfig == "" {
			t.Fatal("no clientConnection.kubeconfig: the in-cluster config would reach the API server through a ClusterIP")
		}
		kcKey := mountedKey(t, spec, c, cm.Name, o.Kubeconfig)
		kc, err := clientcmd.Load([]byte(cm.Data[kcKey]))
		if err != nil {
			t.Fatalf("%s: %v", kcKey, err)
		}
		ctx := kc.Contexts[kc.CurrentContext]
		if ctx == nil || kc.Clusters[ctx.Cluster] == nil || kc.AuthInfos[ctx.AuthInfo] == nil {
			t.Fatalf("%s: current context %q does not name a cluster and a user", kcKey, kc.CurrentContext)
		}
		cluster, user := kc.Clusters[ctx.Cluster], kc.AuthInfos[ctx.AuthInfo]
		const sa = "/var/run/secrets/kubernetes.io/serviceaccount/"
		if user.TokenFile != sa+"token" || cluster.CertificateAuthority != sa+"ca.crt" {
			t.Errorf("%s does not use the ServiceAccount's token and CA: token %q, CA %q", kcKey, user.TokenFile, cluster.CertificateAuthority)
		}
		if !strings.HasPrefix(cluster.Server, "https://") {
			t.Errorf("%s: server %q is not an https URL", kcKey, cluster.Server)
		}
	})
}

// mountedKey returns the key of ConfigMap cmName that the container sees at
// path, failing the test if path is not such a file.
func mountedKey(t *testing.T, spec corev1.PodSpec, c corev1.Container, cmName, path string) string {
	t.Helper()
	for _, vm := range c.VolumeMounts {
		rel, err := filepath.Rel(vm.MountPath, path)
		if err != nil || strings.HasPrefix(rel, "..") || strings.Contains(rel, "/") {
			continue
		}
		for _, v := range spec.Volumes {
			if v.Name == vm.Name && v.ConfigMap != nil && v.ConfigMap.Name == cmName {
				return rel
			}
		}
	}
	t.Fatalf("%s is not a file of ConfigMap %s mounted in the container", path, cmName)
	return ""
}

func matches(selector, labels map[string]string) bool {
	if len(selector) == 0 {
		return false
	}
	for k, v := range selector {
		if labels[k] != v {
			return false
		}
	}
	return true
}

// podSecurity returns the pod's security context, empty if it has none.
func podSecurity(spec corev1.PodSpec) *corev1.PodSecurityContext {
	if spec.SecurityContext == nil {
		return &corev1.PodSecurityContext{}
	}
	return spec.SecurityContext
}

func ptrOr[T any](p *T, def T) T {
	if p == nil {
		return def
	}
	return *p
}

// TestRBACManifestMatches keeps deploy/rbac.yaml (the RBAC the e2e suite
// applies on its own) identical to the RBAC in svcproxy.yaml, so that the
// e2e tests prove the shipped ClusterRole is enough.
func TestRBACManifestMatches(t *testing.T) {
	if _, err := os.Stat("rbac.yaml"); os.IsNotExist(err) {
		t.Skip("no rbac.yaml")
	}
	rbac := load(t, "rbac.yaml")
	full := load(t, "svcproxy.yaml")
	if len(rbac.configMaps)+len(rbac.daemonSets) > 0 {
		t.Error("rbac.yaml holds more than RBAC")
	}
	if diff := cmp.Diff(full.serviceAccounts, rbac.serviceAccounts); diff != "" {
		t.Errorf("ServiceAccounts (-svcproxy.yaml +rbac.yaml):\n%s", diff)
	}
	if diff := cmp.Diff(full.clusterRoles, rbac.clusterRoles); diff != "" {
		t.Errorf("ClusterRoles (-svcproxy.yaml +rbac.yaml):\n%s", diff)
	}
	if diff := cmp.Diff(full.bindings, rbac.bindings); diff != "" {
		t.Errorf("ClusterRoleBindings (-svcproxy.yaml +rbac.yaml):\n%s", diff)
	}
}

func TestDockerfile(t *testing.T) {
	data, err := os.ReadFile("Dockerfile")
	if err != nil {
		t.Fatal(err)
	}
	df := string(data)
	for _, want := range []string{
		"CGO_ENABLED=0",
		"./cmd/svcproxy",
		"FROM debian:bookworm-slim",
		"iptables ipset ipvsadm conntrack",
		"COPY --from=build /out/svcproxy /usr/local/bin/svcproxy",
	} {
		if !strings.Contains(df, want) {
			t.Errorf("Dockerfile lacks %q", want)
		}
	}
	// The build stage's Go must be at least go.mod's.
	mod, err := os.ReadFile("../go.mod")
	if err != nil {
		t.Fatal(err)
	}
	goVersion := regexp.MustCompile(`(?m)^go (\S+)$`).FindSubmatch(mod)
	if goVersion == nil {
		t.Fatal("no go directive in go.mod")
	}
	if !strings.Contains(df, "ARG GO_VERSION="+string(goVersion[1])+"\n") {
		t.Errorf("Dockerfile's GO_VERSION is not go.mod's go %s", goVersion[1])
	}
	// The command the DaemonSet runs is where the image puts the binary.
	ds := one(t, "DaemonSet", load(t, "svcproxy.yaml").daemonSets)
	if cmd := ds.Spec.Template.Spec.Containers[0].Command; len(cmd) == 0 || cmd[0] != "/usr/local/bin/svcproxy" {
		t.Errorf("DaemonSet command %q does not start with the image's /usr/local/bin/svcproxy", cmd)
	}
}
