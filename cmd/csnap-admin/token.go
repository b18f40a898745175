package main

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/url"
	"os"
	"strings"
)

// devTokenFile is where csnapd -dev keeps its API token with the default
// data directory (./csnap-dev): csnap-admin run from the same directory
// finds it without being told, so the lines csnapd -dev prints work as
// they are.
const devTokenFile = "csnap-dev/api-token"

// findToken picks the API token: $CSNAP_HTTP_TOKEN, else the token file
// (-token-file, $CSNAP_HTTP_TOKEN_FILE), else ./csnap-dev/api-token when
// the node is on this host (a loopback address: the -dev token is never
// sent elsewhere). "" when there is none (the node answers 401).
func findToken(addr, file string, getenv func(string) string) (string, error) {
	if t := getenv("CSNAP_HTTP_TOKEN"); t != "" {
		return t, nil
	}
	if file != "" {
		b, err := os.ReadFile(file)
		if err != nil {
			return "", fmt.Errorf("API token: %w", err)
		}
		return strings.TrimSpace(string(b)), nil
	}
	if !loopbackAddr(addr) {
		return "", nil
	}
	b, err := os.ReadFile(devTokenFile)
	if errors.Is(err, os.ErrNotExist) {
		return "", nil
	}
	if err != nil {
		return "", fmt.Errorf("API token: %w", err)
	}
	return strings.TrimSpace(string(b)), nil
}

// loopbackAddr reports whether addr (host:port or a URL) names this host.
func loopbackAddr(addr string) bool {
	host := addr
	if strings.Contains(addr, "://") {
		u, err := url.Parse(addr)
		if err != nil {
			return false
		}
		host = u.Host
	}
	if h, _, err := net.SplitHostPort(host); err == nil {
		host = h
	}
	if host == "localhost" {
		return true
	}
	ip := net.ParseIP(strings.Trim(host, "[]"))
	return ip != nil && ip.IsLoopback()
}

// useCA makes c verify the node's TLS certificate against the CA in file.
func useCA(c interface{ SetTransport(http.RoundTripper) }, file string) error {
	pem, err := os.ReadFile(file)
	if err != nil {
		return fmt.Errorf("-ca-file: %w", err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(pem) {
		return fmt.Errorf("-ca-file %s: no PEM certificate in it", file)
	}
	tr := http.DefaultTransport.(*http.Transport).Clone()
	tr.TLSClientConfig = &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12}
	c.SetTransport(tr)
	return nil
}
