package main

import (
	"bytes"
	"strings"
	"testing"
)

func TestParseFlags(t *testing.T) {
	var stderr bytes.Buffer
	o, err := parseFlags([]string{"-dev", "-data-dir", "/x", "-iscsi-addr", "127.0.0.1:1,127.0.0.1:2", "-log-format", "json"}, &stderr)
	if err != nil {
		t.Fatal(err)
	}
	if !o.dev || o.dataDir != "/x" || o.logFormat != "json" {
		t.Fatalf("parsed %+v", o)
	}
	if got := splitAddrs(o.iscsiAddr, devISCSIAddr); len(got) != 2 || got[1] != "127.0.0.1:2" {
		t.Fatalf("portals %v", got)
	}
	if _, err := parseFlags([]string{"-dev", "-config", "f"}, &stderr); err == nil {
		t.Fatal("-dev with -config accepted")
	}
	if _, err := parseFlags([]string{"-dev", "stray"}, &stderr); err == nil {
		t.Fatal("stray argument accepted")
	}
	if _, err := newLogger(&options{logLevel: "loud", logFormat: "text"}, &stderr); err == nil {
		t.Fatal("bad log level accepted")
	}
}

func TestRunUsage(t *testing.T) {
	var out, errb bytes.Buffer
	if code := run(nil, &out, &errb); code != 2 || !strings.Contains(errb.String(), "-dev") {
		t.Fatalf("no mode: exit %d, stderr %q", code, errb.String())
	}
	errb.Reset()
	if code := run([]string{"-bogus"}, &out, &errb); code != 2 {
		t.Fatalf("bad flag: exit %d", code)
	}
}

func TestCHAPFromEnv(t *testing.T) {
	env := func(m map[string]string) func(string) string { return func(k string) string { return m[k] } }
	if c, err := chapFromEnv(env(nil)); c != nil || err != nil {
		t.Fatalf("no env: %v %v", c, err)
	}
	c, err := chapFromEnv(env(map[string]string{"CSNAP_CHAP_USER": "u", "CSNAP_CHAP_SECRET": "twelve-bytes", "CSNAP_CHAP_MUTUAL_USER": "t", "CSNAP_CHAP_MUTUAL_SECRET": "other-secret"}))
	if err != nil || c.User != "u" || c.MutualUser != "t" {
		t.Fatalf("mutual: %+v %v", c, err)
	}
	for _, bad := range []map[string]string{
		{"CSNAP_CHAP_USER": "u"},
		{"CSNAP_CHAP_USER": "u", "CSNAP_CHAP_SECRET": "short"},
		{"CSNAP_CHAP_USER": "u", "CSNAP_CHAP_SECRET": "twelve-bytes", "CSNAP_CHAP_MUTUAL_USER": "t"},
		{"CSNAP_CHAP_USER": "u", "CSNAP_CHAP_SECRET": "twelve-bytes", "CSNAP_CHAP_MUTUAL_USER": "t", "CSNAP_CHAP_MUTUAL_SECRET": "twelve-bytes"},
	} {
		if _, err := chapFromEnv(env(bad)); err == nil {
			t.Errorf("accepted %v", bad)
		}
	}
}

// Consul's environment is honoured; -consul-addr overrides the address.
func TestConsulConfigFromEnv(t *testing.T) {
	t.Setenv("CONSUL_HTTP_ADDR", "127.0.0.9:18599")
	t.Setenv("CONSUL_HTTP_TOKEN", "secret-token")
	c := consulConfig(&options{})
	if c.Address != "127.0.0.9:18599" || c.Token != "secret-token" {
		t.Fatalf("from the environment: address %q token %q", c.Address, c.Token)
	}
	c = consulConfig(&options{consulAddr: "127.0.0.2:18500"})
	if c.Address != "127.0.0.2:18500" || c.Token != "secret-token" {
		t.Fatalf("with -consul-addr: address %q token %q", c.Address, c.Token)
	}
}
