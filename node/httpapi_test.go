package node

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"math/big"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// TestAPIToken: generated at the first start (0600, random, reused
// afterwards); $CSNAP_HTTP_TOKEN and -http-token-file take precedence; a
// short token or a file others can read is refused; cluster mode without
// any source is an error.
func TestAPIToken(t *testing.T) {
	dir := t.TempDir()
	noenv := func(string) string { return "" }
	tok, path, err := apiToken(&Config{}, dir, noenv)
	if err != nil || len(tok) != 64 || path != filepath.Join(dir, "api-token") {
		t.Fatalf("generated: %q %q %v", tok, path, err)
	}
	fi, _ := os.Stat(path)
	if fi.Mode().Perm() != 0o600 {
		t.Errorf("token file mode %v", fi.Mode().Perm())
	}
	if again, _, err := apiToken(&Config{}, dir, noenv); err != nil || again != tok {
		t.Errorf("second start: %q %v, want the same token", again, err)
	}
	if other, _, _ := apiToken(&Config{}, t.TempDir(), noenv); other == tok {
		t.Error("two data directories got the same token")
	}
	env := func(k string) string {
		if k == "CSNAP_HTTP_TOKEN" {
			return "from-the-environment"
		}
		return ""
	}
	if got, p, err := apiToken(&Config{}, dir, env); got != "from-the-environment" || p != "" || err != nil {
		t.Errorf("env: %q %q %v", got, p, err)
	}
	if _, _, err := apiToken(&Config{}, dir, func(string) string { return "short" }); err == nil {
		t.Error("a 5-character token accepted")
	}
	f := filepath.Join(t.TempDir(), "tok")
	os.WriteFile(f, []byte("file-token-0123456789\n"), 0o600)
	if got, _, err := apiToken(&Config{HTTPTokenFile: f}, dir, noenv); got != "file-token-0123456789" || err != nil {
		t.Errorf("file: %q %v", got, err)
	}
	os.Chmod(f, 0o644)
	if _, _, err := apiToken(&Config{HTTPTokenFile: f}, dir, noenv); err == nil || !strings.Contains(err.Error(), "chmod 600") {
		t.Errorf("world-readable token file: %v", err)
	}
	if _, _, err := apiToken(&Config{}, "", noenv); err == nil {
		t.Error("no token source accepted")
	}
}

// writeCert writes a self-signed certificate for 127.0.0.1 and its key.
func writeCert(t *testing.T, dir, cn string) (certFile, keyFile string, cert *x509.Certificate) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(time.Now().UnixNano()), Subject: pkix.Name{CommonName: cn},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		IPAddresses: []net.IP{net.IPv4(127, 0, 0, 1)}, KeyUsage: x509.KeyUsageDigitalSignature | x509.KeyUsageCertSign,
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}, IsCA: true, BasicConstraintsValid: true}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	kd, _ := x509.MarshalECPrivateKey(key)
	certFile, keyFile = filepath.Join(dir, "cert.pem"), filepath.Join(dir, "key.pem")
	os.WriteFile(certFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o600)
	os.WriteFile(keyFile, pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: kd}), 0o600)
	cert, _ = x509.ParseCertificate(der)
	return certFile, keyFile, cert
}

// TestAPITLS: with a certificate and key configured the API is served
// over TLS, and a renewed certificate is served without a restart.
func TestAPITLS(t *testing.T) {
	dir := t.TempDir()
	cf, kf, c1 := writeCert(t, dir, "first")
	if _, err := apiTLS(&Config{HTTPTLSCertFile: cf}); err == nil {
		t.Fatal("certificate without key accepted")
	}
	cfg, err := apiTLS(&Config{HTTPTLSCertFile: cf, HTTPTLSKeyFile: kf})
	if err != nil {
		t.Fatal(err)
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	hs := newHTTPServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {}), cfg)
	go hs.ServeTLS(l, "", "")
	defer hs.Close()
	get := func(ca *x509.Certificate) (string, error) {
		pool := x509.NewCertPool()
		pool.AddCert(ca)
		cl := &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool}}}
		resp, err := cl.Get("https://" + l.Addr().String() + "/")
		if err != nil {
			return "", err
		}
		resp.Body.Close()
		return resp.TLS.PeerCertificates[0].Subject.CommonName, nil
	}
	if cn, err := get(c1); err != nil || cn != "first" {
		t.Fatalf("TLS: %q %v", cn, err)
	}
	// Renewal: new files in place (a later modification time).
	time.Sleep(10 * time.Millisecond)
	_, _, c2 := writeCert(t, dir, "second")
	later := time.Now().Add(time.Second)
	os.Chtimes(cf, later, later)
	os.Chtimes(kf, later, later)
	if cn, err := get(c2); err != nil || cn != "second" {
		t.Fatalf("after renewal: %q %v", cn, err)
	}
}
