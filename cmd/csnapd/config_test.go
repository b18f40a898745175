package main

import (
	"flag"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/hcl/hcl/ast"
	"github.com/hashicorp/hcl/hcl/parser"
	hclstrconv "github.com/hashicorp/hcl/hcl/strconv"
)

// writeConfig writes src to a file in a test directory and returns its path.
func writeConfig(t *testing.T, src string) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "csnapd.hcl")
	if err := os.WriteFile(path, []byte(src), 0o644); err != nil {
		t.Fatal(err)
	}
	return path
}

func TestConfigFileSetsValues(t *testing.T) {
	path := writeConfig(t, `
# a comment
node_name        = "n2"
data_dir         = "/var/lib/csnap"
iscsi_addr       = "127.0.0.2:3260"
http_addr        = "127.0.0.2:7862"
server_addr      = "127.0.0.2:7863"
consul_addr      = "127.0.0.2:8500"
consul_prefix    = "other/"
log_level        = "debug"
log_format       = "json"
chap_discovery   = true
chap_algorithms  = "sha256"
portal_group_tag = 2
lock_delay       = "1500ms"
check_interval   = "500ms"
lease            = "3s"
io_timeout       = "20s"
await_timeout    = "1m"
direct_io        = false
volume_paths     = ["/srv/csnap", "/dev/disk/by-id/wwn-1"]
http_hosts       = "n2.example, n2"
`)
	o, err := parseFlags([]string{"-config", path}, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	want := options{
		config: path, cluster: true,
		nodeName: "n2", dataDir: "/var/lib/csnap", iscsiAddr: "127.0.0.2:3260", httpAddr: "127.0.0.2:7862",
		serverAddr: "127.0.0.2:7863", consulAddr: "127.0.0.2:8500", consulPrefix: "other/",
		logLevel: "debug", logFormat: "json", chapDiscovery: true, chapAlgorithms: "sha256", portalGroupTag: 2,
		lockDelay: 1500 * time.Millisecond, checkInterval: 500 * time.Millisecond, lease: 3 * time.Second,
		ioTimeout: 20 * time.Second, awaitTimeout: time.Minute, directIO: false,
		volumePaths: stringList{"/srv/csnap", "/dev/disk/by-id/wwn-1"}, httpHosts: stringList{"n2.example", "n2"},
	}
	if !reflect.DeepEqual(*o, want) {
		t.Fatalf("got  %+v\nwant %+v", *o, want)
	}
}

func TestConfigFileKeepsDefaults(t *testing.T) {
	path := writeConfig(t, `node_name = "n1"`)
	o, err := parseFlags([]string{"-config", path}, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	if o.nodeName != "n1" || o.lease != defaultLease || o.consulPrefix != defaultConsulPrefix ||
		o.logLevel != "info" || o.portalGroupTag != 0 || !o.cluster || !o.directIO {
		t.Fatalf("defaults lost: %+v", *o)
	}
	// An empty file (comments only) is valid.
	if _, err := parseFlags([]string{"-config", writeConfig(t, "# nothing\n")}, io.Discard); err != nil {
		t.Fatal(err)
	}
}

func TestConfigFlagOverridesFile(t *testing.T) {
	path := writeConfig(t, `
node_name        = "file"
lease            = "5s"
chap_discovery   = true
portal_group_tag = 7
log_level        = "debug"
`)
	// Flags before and after -config alike; a flag set to its default
	// value still wins.
	o, err := parseFlags([]string{"-node-name", "flag", "-config", path, "-lease", "2s",
		"-chap-discovery=false", "-portal-group-tag", "9"}, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	if o.nodeName != "flag" || o.lease != 2*time.Second || o.chapDiscovery || o.portalGroupTag != 9 {
		t.Fatalf("flags did not override the file: %+v", *o)
	}
	if o.logLevel != "debug" {
		t.Fatalf("log_level from the file lost: %q", o.logLevel)
	}
}

func TestConfigTypes(t *testing.T) {
	for _, c := range []struct {
		src   string
		check func(o *options) bool
	}{
		{`chap_discovery = true`, func(o *options) bool { return o.chapDiscovery }},
		{`chap_discovery = false`, func(o *options) bool { return !o.chapDiscovery }},
		{`portal_group_tag = 65535`, func(o *options) bool { return o.portalGroupTag == 65535 }},
		{`portal_group_tag = 0x10`, func(o *options) bool { return o.portalGroupTag == 16 }},
		{`lease = "1m30s"`, func(o *options) bool { return o.lease == 90*time.Second }},
		{`"node_name" = "quoted key"`, func(o *options) bool { return o.nodeName == "quoted key" }},
		{`node_name = "esc\"aped"`, func(o *options) bool { return o.nodeName == `esc"aped` }},
		{"node_name = \"a\"\r\ndata_dir = \"b\"\r\n", func(o *options) bool { return o.nodeName == "a" && o.dataDir == "b" }},
	} {
		o := &options{}
		if err := applyConfigFile(o, writeConfig(t, c.src), nil); err != nil {
			t.Errorf("%s: %v", c.src, err)
			continue
		}
		if !c.check(o) {
			t.Errorf("%s: parsed %+v", c.src, *o)
		}
	}
}

func TestConfigErrors(t *testing.T) {
	for _, c := range []struct {
		src  string
		want []string // substrings of the error, besides the file's path
	}{
		{"node_name = \"n1\"\nnod_name = \"n1\"\n", []string{":2:", `unknown setting "nod_name"`}},
		{`node-name = "n1"`, []string{":1:", `unknown setting "node-name"`, "did you mean node_name?"}},
		{`dev = true`, []string{`unknown setting "dev"`, "command-line flag only"}},
		{`config = "x.hcl"`, []string{`unknown setting "config"`}},
		{`version = true`, []string{`unknown setting "version"`}},
		{"\n\nlease = \"2 seconds\"", []string{":3:", "lease", `bad duration "2 seconds"`}},
		{`lock_delay = 1`, []string{"lock_delay", "expected a duration"}},
		{`lock_delay = "1"`, []string{"lock_delay", "bad duration"}},
		{`chap_discovery = "yes"`, []string{"chap_discovery", "expected true or false"}},
		{`chap_discovery = 1`, []string{"chap_discovery", "expected true or false"}},
		{`portal_group_tag = "1"`, []string{"portal_group_tag", "expected an integer"}},
		{`portal_group_tag = 1.5`, []string{"portal_group_tag", "expected an integer"}},
		{`portal_group_tag = 99999999999999999999999`, []string{"portal_group_tag", "out of range"}},
		{`node_name = 1`, []string{"node_name", "expected a string"}},
		{`node_name = true`, []string{"node_name", "expected a string"}},
		{`node_name = ["a"]`, []string{"node_name", "found a list"}},
		{`node_name { x = 1 }`, []string{"node_name", "found a block"}},
		{`node_name = { x = 1 }`, []string{"node_name", "found a block"}},
		{`consul "x" { y = 1 }`, []string{"found block consul"}},
		{"node_name = \"a\"\nnode_name = \"b\"\n", []string{":2:", "node_name is already set on line 1"}},
		{`node_name = "n1`, []string{"csnapd.hcl:1:"}},
		{`node_name "n1"`, []string{"csnapd.hcl:1:"}},
		{"node_name = \"a\"\nlease = \n", []string{"csnapd.hcl:2:", "expected a value"}},
		{"lease = # later\n", []string{"csnapd.hcl:1:", "expected a value"}},
	} {
		path := writeConfig(t, c.src)
		err := applyConfigFile(&options{}, path, nil)
		if err == nil {
			t.Errorf("%q: accepted", c.src)
			continue
		}
		msg := err.Error()
		t.Logf("%q: %s", c.src, msg)
		if strings.Contains(msg, "\n") {
			t.Errorf("%q: error is not one line: %q", c.src, msg)
		}
		for _, w := range append([]string{path}, c.want...) {
			if !strings.Contains(msg, w) {
				t.Errorf("%q: error %q does not contain %q", c.src, msg, w)
			}
		}
	}
}

// A file's error is reported even for a setting a flag overrides.
func TestConfigErrorUnderFlag(t *testing.T) {
	path := writeConfig(t, `lease = "soon"`)
	if _, err := parseFlags([]string{"-config", path, "-lease", "2s"}, io.Discard); err == nil || !strings.Contains(err.Error(), "lease") {
		t.Fatalf("bad overridden setting: %v", err)
	}
}

func TestConfigMissingFile(t *testing.T) {
	path := filepath.Join(t.TempDir(), "nope.hcl")
	_, err := parseFlags([]string{"-config", path}, io.Discard)
	if err == nil || !strings.Contains(err.Error(), path) || strings.Contains(err.Error(), "\n") {
		t.Fatalf("missing file: %v", err)
	}
	// run reports it as a usage error, one line.
	var stdout, stderr strings.Builder
	if code := run([]string{"-config", path}, &stdout, &stderr); code != 2 || strings.Count(stderr.String(), "\n") != 1 ||
		!strings.Contains(stderr.String(), path) {
		t.Fatalf("run: exit %d, stderr %q", code, stderr.String())
	}
}

// TestConfigKeysMatchFlags keeps the file and the flags in sync: every
// flag but dev, config and version has a key (its name with '_' for '-'),
// every key has a flag, and a key sets the very field its flag sets.
func TestConfigKeysMatchFlags(t *testing.T) {
	o := &options{}
	fs := newFlagSet(o, io.Discard)
	flags := map[string]*flag.Flag{}
	fs.VisitAll(func(f *flag.Flag) {
		if !commandLineOnly[f.Name] {
			flags[f.Name] = f
		}
	})
	for name := range commandLineOnly {
		if fs.Lookup(name) == nil {
			t.Errorf("command-line-only flag -%s does not exist", name)
		}
	}
	keys := map[string]bool{}
	var src strings.Builder
	want := map[string]string{} // flag name -> its value after loading the file
	for i, s := range configSettings {
		if keys[s.key] {
			t.Errorf("key %s appears twice in configSettings", s.key)
		}
		keys[s.key] = true
		name := flagName(s.key)
		if flags[name] == nil {
			t.Errorf("file key %s has no flag -%s", s.key, name)
			continue
		}
		// A distinct value per key, so that a key bound to another
		// flag's field shows.
		switch s.field(&options{}).(type) {
		case *string:
			fmt.Fprintf(&src, "%s = %q\n", s.key, "v-"+s.key)
			want[name] = "v-" + s.key
		case *int:
			fmt.Fprintf(&src, "%s = %d\n", s.key, 1000+i)
			want[name] = fmt.Sprint(1000 + i)
		case *bool:
			fmt.Fprintf(&src, "%s = true\n", s.key)
			want[name] = "true"
		case *time.Duration:
			d := time.Duration(1000+i) * time.Millisecond
			fmt.Fprintf(&src, "%s = %q\n", s.key, d)
			want[name] = d.String()
		case *stringList:
			fmt.Fprintf(&src, "%s = [%q, %q]\n", s.key, "a-"+s.key, "b")
			want[name] = "a-" + s.key + ",b"
		default:
			t.Errorf("key %s: unsupported field type %T", s.key, s.field(&options{}))
		}
	}
	keyed := map[string]bool{} // flags that have a key
	for _, s := range configSettings {
		keyed[flagName(s.key)] = true
	}
	for name := range flags {
		if !keyed[name] {
			t.Errorf("flag -%s has no key %s in the config file", name, strings.ReplaceAll(name, "-", "_"))
		}
	}
	if err := applyConfigFile(o, writeConfig(t, src.String()), nil); err != nil {
		t.Fatal(err)
	}
	for name, v := range want {
		if got := flags[name].Value.String(); got != v {
			t.Errorf("file key %s sets a field other than -%s's (flag reads %q, want %q)", strings.ReplaceAll(name, "-", "_"), name, got, v)
		}
	}
}

// TestExampleConfigs parses configs/*.hcl so the examples never rot: the
// node files through csnapd's own loader, consul-agent.hcl as HCL.
func TestExampleConfigs(t *testing.T) {
	files, err := filepath.Glob("../../configs/*.hcl")
	if err != nil {
		t.Fatal(err)
	}
	nodes, policies := 0, 0
	for _, path := range files {
		if filepath.Base(path) == "consul-agent.hcl" {
			src, err := os.ReadFile(path)
			if err != nil {
				t.Fatal(err)
			}
			if _, err := parser.Parse(src); err != nil {
				t.Errorf("%s: %v", path, err)
				continue
			}
			// ACLs default deny, gossip encryption, TLS (issue 15).
			for _, want := range []string{`default_policy           = "deny"`, "enabled                  = true", "encrypt = ", "verify_incoming = true", "verify_server_hostname = true"} {
				if !strings.Contains(string(src), want) {
					t.Errorf("%s: no %q", path, want)
				}
			}
			continue
		}
		if strings.HasPrefix(filepath.Base(path), "consul-policy-") {
			checkPolicy(t, path)
			policies++
			continue
		}
		o, err := parseFlags([]string{"-config", path}, io.Discard)
		if err != nil {
			t.Errorf("%v", err)
			continue
		}
		var n int
		if _, err := fmt.Sscanf(filepath.Base(path), "node%d.hcl", &n); err != nil {
			continue // another example: it parses, that is enough
		}
		nodes++
		ip := fmt.Sprintf("127.0.0.%d", n)
		if o.nodeName != fmt.Sprintf("n%d", n) || o.portalGroupTag != n || o.iscsiAddr != ip+":3260" ||
			o.httpAddr != ip+":7862" || o.serverAddr != ip+":7863" || o.consulAddr != ip+":8500" ||
			o.dataDir != "/var/lib/csnap" || !o.cluster {
			t.Errorf("%s: unexpected settings %+v", path, *o)
		}
		if o.lockDelay != defaultLockDelay || o.checkInterval != defaultCheckInterval || o.lease != defaultLease ||
			o.ioTimeout != defaultIOTimeout || o.awaitTimeout != defaultAwaitTimeout || o.consulPrefix != defaultConsulPrefix {
			t.Errorf("%s: timing or prefix differ from the defaults: %+v", path, *o)
		}
	}
	if nodes != 3 {
		t.Errorf("found %d node configs in configs/, want 3", nodes)
	}
	if policies != 2 {
		t.Errorf("found %d Consul ACL policies in configs/, want 2 (csnapd, csnap-admin)", policies)
	}
}

// checkPolicy parses a Consul ACL policy (HCL): only known rule kinds,
// each with a policy of read, write, deny or list; csnapd's writes only
// csnap's key prefix, its own session, its own services; csnap-admin's
// writes nothing.
func checkPolicy(t *testing.T, path string) {
	t.Helper()
	src, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	f, err := parser.Parse(src)
	if err != nil {
		t.Errorf("%s: %v", path, err)
		return
	}
	kinds := map[string]bool{"key_prefix": true, "key": true, "session": true, "session_prefix": true, "service": true,
		"service_prefix": true, "node": true, "node_prefix": true, "agent": true, "agent_prefix": true}
	writes := map[string]bool{}
	for _, item := range f.Node.(*ast.ObjectList).Items {
		if len(item.Keys) != 2 {
			t.Errorf("%s:%d: expected KIND \"NAME\" { policy = ... }", path, item.Pos().Line)
			continue
		}
		kind := item.Keys[0].Token.Text
		name, _ := hclstrconv.Unquote(item.Keys[1].Token.Text)
		if !kinds[kind] {
			t.Errorf("%s:%d: unknown rule %s", path, item.Pos().Line, kind)
		}
		obj, ok := item.Val.(*ast.ObjectType)
		if !ok || len(obj.List.Items) != 1 || obj.List.Items[0].Keys[0].Token.Text != "policy" {
			t.Errorf("%s:%d: %s %q: expected { policy = \"...\" }", path, item.Pos().Line, kind, name)
			continue
		}
		lit, _ := obj.List.Items[0].Val.(*ast.LiteralType)
		var pol string
		if lit != nil {
			pol, _ = hclstrconv.Unquote(lit.Token.Text)
		}
		switch pol {
		case "read", "list", "deny":
		case "write":
			writes[kind+" "+name] = true
		default:
			t.Errorf("%s:%d: %s %q: policy %q", path, item.Pos().Line, kind, name, pol)
		}
	}
	want := map[string]bool{}
	if strings.Contains(path, "csnapd") {
		want = map[string]bool{"key_prefix csnap/": true, "session n1": true, "service csnap-iscsi": true, "service csnap-server": true}
	}
	if !reflect.DeepEqual(writes, want) {
		t.Errorf("%s: writes %v, want exactly %v", path, writes, want)
	}
}

// The tls block sets the TLS files; flags override it.
func TestConfigTLSBlock(t *testing.T) {
	path := writeConfig(t, `
node_name = "n1"
tls {
  ca_file   = "/etc/csnap/csnap-agent-ca.pem"
  cert_file = "/etc/csnap/csnap-node-n1.pem"
  key_file  = "/etc/csnap/csnap-node-n1-key.pem"
}
`)
	o, err := parseFlags([]string{"-config", path, "-tls-key", "/k.pem"}, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	if o.tlsCA != "/etc/csnap/csnap-agent-ca.pem" || o.tlsCert != "/etc/csnap/csnap-node-n1.pem" || o.tlsKey != "/k.pem" {
		t.Fatalf("tls settings %q %q %q", o.tlsCA, o.tlsCert, o.tlsKey)
	}
	for _, bad := range []string{
		"tls { ca_file = 1 }",
		"tls { nope = \"x\" }",
		"tls { inner { ca_file = \"x\" } }",
		"other { ca_file = \"x\" }",
	} {
		if _, err := parseFlags([]string{"-config", writeConfig(t, bad)}, io.Discard); err == nil {
			t.Errorf("%s: accepted", bad)
		} else {
			t.Logf("%s: %v", bad, err)
		}
	}
}
