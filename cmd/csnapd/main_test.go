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
	if o.iscsiAddr != "127.0.0.1:1,127.0.0.1:2" {
		t.Fatalf("portals %q", o.iscsiAddr)
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
