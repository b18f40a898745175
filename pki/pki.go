// Package pki makes and loads the certificates of a csnap cluster's nodes,
// and builds the mutual-TLS configurations of the snapshot-server protocol
// from them.
//
// # Identity
//
// A cluster has one certificate authority (CA). Each node holds a
// certificate the CA signed for its Consul node name: the name is the
// certificate's Subject common name and also its only DNS subject
// alternative name, and the certificate may be used both to serve and to
// connect (extended key usages serverAuth and clientAuth). NodeName reads
// the node name back from a certificate. Keys are ECDSA P-256.
//
// # Files
//
// The files have the shape of `consul tls` (PEM, one directory):
//
//	csnap-agent-ca.pem          the CA certificate (a bundle of several CAs
//	                            is accepted when loading, for a rotation)
//	csnap-agent-ca-key.pem      the CA's private key (mode 0600); needed only
//	                            to sign node certificates, keep it off the nodes
//	csnap-node-NAME.pem         node NAME's certificate (mode 0644)
//	csnap-node-NAME-key.pem     node NAME's private key (mode 0600)
//
// Certificates are "CERTIFICATE" PEM blocks, keys "EC PRIVATE KEY" (CA)
// or "PRIVATE KEY" (PKCS #8). csnapd is given the CA certificate and its
// node's certificate and key (config block tls { ca_file cert_file
// key_file }, flags -tls-ca, -tls-cert, -tls-key); `csnap-admin tls ca
// create` and `csnap-admin tls cert create --node NAME` write them, and
// csnapd -dev makes its own set in DATA_DIR/tls at first start.
//
// # Connections
//
// Both ends speak TLS 1.3 only and present their node certificate. A
// server (Holder.ServerConfig) accepts only a client certificate that
// chains to the CA; which node the client then is, NodeName of that
// certificate, is checked against what the client claims by the protocol
// layer. A client (Holder.ClientConfig) accepts only a server whose
// certificate chains to the CA and names exactly the node it expected (the
// node that holds the volume's server lock in Consul).
//
// A Holder reloads its files on Reload (csnapd: on SIGHUP, and when a
// file's modification time changes, see Watch); connections made after a
// reload use the new certificate and CA, established ones are kept.
package pki

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"os"
	"path/filepath"
	"time"

	"github.com/csnap/csnap/snapstore/wire"
)

// File names in a directory of certificates (see the package doc).
const (
	CAFile    = "csnap-agent-ca.pem"
	CAKeyFile = "csnap-agent-ca-key.pem"
)

// Default validity periods.
const (
	DefaultCAValidity   = 5 * 365 * 24 * time.Hour
	DefaultCertValidity = 365 * 24 * time.Hour
)

// CertFile is the certificate file name of node.
func CertFile(node string) string { return "csnap-node-" + node + ".pem" }

// KeyFile is the private key file name of node.
func KeyFile(node string) string { return "csnap-node-" + node + "-key.pem" }

// Paths are the three files a node needs.
type Paths struct {
	CA, Cert, Key string
}

// NodePaths are the paths of node's files in dir.
func NodePaths(dir, node string) Paths {
	return Paths{CA: filepath.Join(dir, CAFile), Cert: filepath.Join(dir, CertFile(node)), Key: filepath.Join(dir, KeyFile(node))}
}

// CA is a certificate authority that can sign node certificates.
type CA struct {
	Cert *x509.Certificate
	Key  *ecdsa.PrivateKey
}

// NewCA makes a self-signed CA valid for validity (0: DefaultCAValidity).
func NewCA(name string, validity time.Duration) (*CA, error) {
	if validity <= 0 {
		validity = DefaultCAValidity
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, fmt.Errorf("generating the CA key: %w", err)
	}
	serial, err := newSerial()
	if err != nil {
		return nil, err
	}
	now := time.Now()
	tmpl := &x509.Certificate{
		SerialNumber:          serial,
		Subject:               pkix.Name{CommonName: name, Organization: []string{"csnap"}},
		NotBefore:             now.Add(-time.Minute),
		NotAfter:              now.Add(validity),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign | x509.KeyUsageDigitalSignature,
		BasicConstraintsValid: true,
		IsCA:                  true,
		MaxPathLenZero:        true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		return nil, fmt.Errorf("creating the CA certificate: %w", err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, err
	}
	return &CA{Cert: cert, Key: key}, nil
}

func newSerial() (*big.Int, error) {
	s, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 127))
	if err != nil {
		return nil, fmt.Errorf("generating a serial number: %w", err)
	}
	return s, nil
}

// NodeCert is a node's certificate and key.
type NodeCert struct {
	Cert *x509.Certificate
	Key  *ecdsa.PrivateKey
}

// Sign makes a certificate for node, valid for validity (0:
// DefaultCertValidity, capped at the CA's own expiry).
func (ca *CA) Sign(node string, validity time.Duration) (*NodeCert, error) {
	if !wire.ValidNodeName(node) {
		return nil, fmt.Errorf("invalid node name %q", node)
	}
	if validity <= 0 {
		validity = DefaultCertValidity
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, fmt.Errorf("generating the key of node %s: %w", node, err)
	}
	serial, err := newSerial()
	if err != nil {
		return nil, err
	}
	now := time.Now()
	notAfter := now.Add(validity)
	if notAfter.After(ca.Cert.NotAfter) {
		notAfter = ca.Cert.NotAfter
	}
	tmpl := &x509.Certificate{
		SerialNumber: serial,
		Subject:      pkix.Name{CommonName: node, Organization: []string{"csnap"}},
		DNSNames:     []string{node},
		NotBefore:    now.Add(-time.Minute),
		NotAfter:     notAfter,
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.Cert, &key.PublicKey, ca.Key)
	if err != nil {
		return nil, fmt.Errorf("signing the certificate of node %s: %w", node, err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, err
	}
	return &NodeCert{Cert: cert, Key: key}, nil
}

// NodeName returns the node a certificate names: its Subject common name,
// which must be a valid node name and also one of its DNS names.
func NodeName(c *x509.Certificate) (string, error) {
	n := c.Subject.CommonName
	if !wire.ValidNodeName(n) {
		return "", fmt.Errorf("certificate %q names no valid node (common name)", n)
	}
	for _, d := range c.DNSNames {
		if d == n {
			return n, nil
		}
	}
	return "", fmt.Errorf("certificate of %q does not list its node name as a DNS name", n)
}

func pemCert(c *x509.Certificate) []byte {
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: c.Raw})
}

// writeFile writes data to path through a temporary file renamed into
// place, so a reader (a reloading csnapd) never sees half a file.
func writeFile(path string, data []byte, mode os.FileMode) error {
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, data, mode); err != nil {
		return err
	}
	if err := os.Chmod(tmp, mode); err != nil { // (umask)
		os.Remove(tmp)
		return err
	}
	if err := os.Rename(tmp, path); err != nil {
		os.Remove(tmp)
		return err
	}
	return nil
}

// ErrExists is returned by the Write methods when a file is already there
// and overwriting was not asked for.
var ErrExists = errors.New("file exists")

func checkFree(overwrite bool, paths ...string) error {
	if overwrite {
		return nil
	}
	for _, p := range paths {
		if _, err := os.Lstat(p); err == nil {
			return fmt.Errorf("%s: %w", p, ErrExists)
		}
	}
	return nil
}

// Write writes the CA's certificate and key into dir (CAFile, CAKeyFile).
func (ca *CA) Write(dir string, overwrite bool) error {
	cp, kp := filepath.Join(dir, CAFile), filepath.Join(dir, CAKeyFile)
	if err := checkFree(overwrite, cp, kp); err != nil {
		return err
	}
	kder, err := x509.MarshalECPrivateKey(ca.Key)
	if err != nil {
		return err
	}
	if err := writeFile(kp, pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: kder}), 0o600); err != nil {
		return fmt.Errorf("writing the CA key: %w", err)
	}
	if err := writeFile(cp, pemCert(ca.Cert), 0o644); err != nil {
		return fmt.Errorf("writing the CA certificate: %w", err)
	}
	return nil
}

// Write writes the node's certificate and key to p.Cert and p.Key.
func (nc *NodeCert) Write(p Paths, overwrite bool) error {
	if err := checkFree(overwrite, p.Cert, p.Key); err != nil {
		return err
	}
	kder, err := x509.MarshalPKCS8PrivateKey(nc.Key)
	if err != nil {
		return err
	}
	if err := writeFile(p.Key, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: kder}), 0o600); err != nil {
		return fmt.Errorf("writing the node key: %w", err)
	}
	if err := writeFile(p.Cert, pemCert(nc.Cert), 0o644); err != nil {
		return fmt.Errorf("writing the node certificate: %w", err)
	}
	return nil
}

// LoadCA reads a CA (certificate and key) from dir.
func LoadCA(dir string) (*CA, error) {
	cp, kp := filepath.Join(dir, CAFile), filepath.Join(dir, CAKeyFile)
	certs, err := readCerts(cp)
	if err != nil {
		return nil, err
	}
	kb, err := os.ReadFile(kp)
	if err != nil {
		return nil, fmt.Errorf("reading the CA key: %w", err)
	}
	blk, _ := pem.Decode(kb)
	if blk == nil {
		return nil, fmt.Errorf("%s: no PEM block", kp)
	}
	key, err := parseKey(blk)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", kp, err)
	}
	cert := certs[0]
	if !cert.IsCA {
		return nil, fmt.Errorf("%s: not a CA certificate", cp)
	}
	pub, ok := cert.PublicKey.(*ecdsa.PublicKey)
	if !ok || !pub.Equal(&key.PublicKey) {
		return nil, fmt.Errorf("%s does not belong to the certificate in %s", kp, cp)
	}
	return &CA{Cert: cert, Key: key}, nil
}

func parseKey(blk *pem.Block) (*ecdsa.PrivateKey, error) {
	switch blk.Type {
	case "EC PRIVATE KEY":
		return x509.ParseECPrivateKey(blk.Bytes)
	case "PRIVATE KEY":
		k, err := x509.ParsePKCS8PrivateKey(blk.Bytes)
		if err != nil {
			return nil, err
		}
		ek, ok := k.(*ecdsa.PrivateKey)
		if !ok {
			return nil, fmt.Errorf("key of type %T, want ECDSA", k)
		}
		return ek, nil
	}
	return nil, fmt.Errorf("PEM block %q is not a private key", blk.Type)
}

// readCerts reads every certificate of a PEM file (at least one).
func readCerts(path string) ([]*x509.Certificate, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	var out []*x509.Certificate
	for {
		var blk *pem.Block
		blk, b = pem.Decode(b)
		if blk == nil {
			break
		}
		if blk.Type != "CERTIFICATE" {
			continue
		}
		c, err := x509.ParseCertificate(blk.Bytes)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", path, err)
		}
		out = append(out, c)
	}
	if len(out) == 0 {
		return nil, fmt.Errorf("%s: no certificate", path)
	}
	return out, nil
}

// Material is a loaded and checked set of files: the node's certificate
// (with its key, ready for crypto/tls), the node it names, and the CA pool.
type Material struct {
	Node string
	Cert tls.Certificate
	Leaf *x509.Certificate
	Pool *x509.CertPool
}

// Load reads p and checks it: the certificate must match the key, chain
// to a CA of p.CA, be valid now for both client and server use, and name
// a node (NodeName).
func Load(p Paths) (*Material, error) {
	cas, err := readCerts(p.CA)
	if err != nil {
		return nil, fmt.Errorf("CA file: %w", err)
	}
	pool := x509.NewCertPool()
	for _, c := range cas {
		pool.AddCert(c)
	}
	kp, err := tls.LoadX509KeyPair(p.Cert, p.Key)
	if err != nil {
		return nil, fmt.Errorf("node certificate %s and key %s: %w", p.Cert, p.Key, err)
	}
	leaf := kp.Leaf
	if leaf == nil {
		if leaf, err = x509.ParseCertificate(kp.Certificate[0]); err != nil {
			return nil, err
		}
	}
	node, err := NodeName(leaf)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", p.Cert, err)
	}
	inter := x509.NewCertPool()
	for _, der := range kp.Certificate[1:] {
		if c, err := x509.ParseCertificate(der); err == nil {
			inter.AddCert(c)
		}
	}
	for _, u := range []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth} {
		if _, err := leaf.Verify(x509.VerifyOptions{Roots: pool, Intermediates: inter, KeyUsages: []x509.ExtKeyUsage{u}}); err != nil {
			return nil, fmt.Errorf("%s is not a valid node certificate of the CA in %s: %w", p.Cert, p.CA, err)
		}
	}
	return &Material{Node: node, Cert: kp, Leaf: leaf, Pool: pool}, nil
}

// VerifyPeer checks a peer's certificate chain (as crypto/tls hands it
// over, leaf first) against the CA pool for usage, and returns the node
// it names.
func (m *Material) VerifyPeer(chain []*x509.Certificate, usage x509.ExtKeyUsage) (string, error) {
	if len(chain) == 0 {
		return "", errors.New("peer presented no certificate")
	}
	inter := x509.NewCertPool()
	for _, c := range chain[1:] {
		inter.AddCert(c)
	}
	if _, err := chain[0].Verify(x509.VerifyOptions{Roots: m.Pool, Intermediates: inter, KeyUsages: []x509.ExtKeyUsage{usage}}); err != nil {
		return "", fmt.Errorf("peer certificate: %w", err)
	}
	return NodeName(chain[0])
}
