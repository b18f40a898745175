package node

import (
	"crypto/rand"
	"crypto/tls"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/csnap/csnap/api"
)

// The HTTP API's token (SPEC.md "Security"): every request but GET
// /v1/health carries "Authorization: Bearer TOKEN", from any address,
// loopback included. The token comes from, in order:
//
//   - $CSNAP_HTTP_TOKEN (e.g. one token for the whole cluster, in the
//     systemd unit's environment file);
//   - -http-token-file / http_token_file: a file holding it (one line);
//   - DATA_DIR/api-token: generated at the first start (32 random bytes,
//     hex), mode 0600. csnap-admin reads ./csnap-dev/api-token by itself,
//     so `make run` and the lines csnapd -dev prints work as they are.
//
// A token file must not be readable by group or others.
const (
	tokenFileName = "api-token"
	minTokenLen   = 16
)

// apiToken returns the API token and the file it is in ("" when it came
// from the environment).
func apiToken(o *Config, dataDir string, getenv func(string) string) (token, path string, err error) {
	if t := getenv("CSNAP_HTTP_TOKEN"); t != "" {
		if len(t) < minTokenLen {
			return "", "", fmt.Errorf("CSNAP_HTTP_TOKEN is %d characters long: at least %d", len(t), minTokenLen)
		}
		return t, "", nil
	}
	if o.HTTPTokenFile != "" {
		t, err := readTokenFile(o.HTTPTokenFile)
		return t, o.HTTPTokenFile, err
	}
	if dataDir == "" {
		return "", "", errors.New("HTTP API token: set $CSNAP_HTTP_TOKEN, -http-token-file, or -data-dir (where one is generated)")
	}
	path = filepath.Join(dataDir, tokenFileName)
	t, err := readTokenFile(path)
	if err == nil || !errors.Is(err, os.ErrNotExist) {
		return t, path, err
	}
	var b [32]byte
	if _, err := rand.Read(b[:]); err != nil {
		return "", "", err
	}
	t = hex.EncodeToString(b[:])
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if errors.Is(err, os.ErrExist) { // another process made it meanwhile
		t, err := readTokenFile(path)
		return t, path, err
	}
	if err != nil {
		return "", "", fmt.Errorf("creating the HTTP API token file: %w", err)
	}
	_, werr := f.WriteString(t + "\n")
	if err := errors.Join(werr, f.Sync(), f.Close()); err != nil {
		os.Remove(path)
		return "", "", fmt.Errorf("writing the HTTP API token file %s: %w", path, err)
	}
	return t, path, nil
}

func readTokenFile(path string) (string, error) {
	f, err := os.Open(path)
	if err != nil {
		return "", fmt.Errorf("HTTP API token file: %w", err)
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return "", fmt.Errorf("HTTP API token file: %w", err)
	}
	if fi.Mode().Perm()&0o077 != 0 {
		return "", fmt.Errorf("HTTP API token file %s has mode %v: it must not be readable by group or others (chmod 600)", path, fi.Mode().Perm())
	}
	b := make([]byte, 4097)
	n, _ := f.Read(b)
	t := strings.TrimSpace(string(b[:n]))
	switch {
	case n > 4096:
		return "", fmt.Errorf("HTTP API token file %s: more than 4 KiB", path)
	case len(t) < minTokenLen:
		return "", fmt.Errorf("HTTP API token file %s: the token must be at least %d characters", path, minTokenLen)
	case strings.ContainsAny(t, " \t\r\n"):
		return "", fmt.Errorf("HTTP API token file %s: the token must be one line without spaces", path)
	}
	return t, nil
}

// apiAccess is the API's access policy for a listener at addr: the Host
// header must name the listen address (any of this host's addresses when
// it listens on a wildcard), "localhost" (loopback or wildcard listeners)
// or one of -http-hosts.
func apiAccess(addr net.Addr, token string, o *Config) api.Access {
	a := api.Access{Token: token, Hosts: append([]string(nil), o.HTTPHosts...), Origins: o.HTTPOrigins}
	ta, ok := addr.(*net.TCPAddr)
	if !ok {
		return a
	}
	lip := ta.IP
	if lip.IsLoopback() || lip.IsUnspecified() {
		a.Hosts = append(a.Hosts, "localhost")
	}
	a.HostIP = func(ip net.IP) bool { return lip.IsUnspecified() || ip.Equal(lip) }
	return a
}

// newHTTPServer is the API's http.Server with bounded reads: a client
// cannot hold a connection open without sending (ReadHeaderTimeout,
// ReadTimeout, IdleTimeout) nor send huge headers. There is no write
// timeout: volume create (formatting) and check answer when done.
func newHTTPServer(h http.Handler, tlsCfg *tls.Config) *http.Server {
	return &http.Server{
		Handler:           h,
		ReadHeaderTimeout: 10 * time.Second,
		ReadTimeout:       30 * time.Second,
		IdleTimeout:       2 * time.Minute,
		MaxHeaderBytes:    64 << 10,
		TLSConfig:         tlsCfg,
	}
}

// apiTLS loads -http-tls-cert-file and -http-tls-key-file (nil, nil when
// neither is set). The certificate is read again when it changes on disk
// (renewal without a restart).
func apiTLS(o *Config) (*tls.Config, error) {
	if o.HTTPTLSCertFile == "" && o.HTTPTLSKeyFile == "" {
		return nil, nil
	}
	if o.HTTPTLSCertFile == "" || o.HTTPTLSKeyFile == "" {
		return nil, errors.New("-http-tls-cert-file and -http-tls-key-file go together")
	}
	kp := &keyPair{cert: o.HTTPTLSCertFile, key: o.HTTPTLSKeyFile}
	if _, err := kp.get(nil); err != nil {
		return nil, err
	}
	return &tls.Config{MinVersion: tls.VersionTLS12, GetCertificate: kp.get}, nil
}

// keyPair serves a certificate from files, reloaded when their
// modification times change.
type keyPair struct {
	cert, key string
	mu        sync.Mutex
	mtime     time.Time
	loaded    *tls.Certificate
}

func (k *keyPair) get(*tls.ClientHelloInfo) (*tls.Certificate, error) {
	k.mu.Lock()
	defer k.mu.Unlock()
	var newest time.Time
	for _, p := range []string{k.cert, k.key} {
		fi, err := os.Stat(p)
		if err != nil {
			if k.loaded != nil {
				return k.loaded, nil // keep serving the last good pair
			}
			return nil, fmt.Errorf("HTTP API TLS: %w", err)
		}
		if fi.ModTime().After(newest) {
			newest = fi.ModTime()
		}
	}
	if k.loaded != nil && newest.Equal(k.mtime) {
		return k.loaded, nil
	}
	c, err := tls.LoadX509KeyPair(k.cert, k.key)
	if err != nil {
		if k.loaded != nil {
			return k.loaded, nil
		}
		return nil, fmt.Errorf("HTTP API TLS: %w", err)
	}
	k.loaded, k.mtime = &c, newest
	return k.loaded, nil
}
