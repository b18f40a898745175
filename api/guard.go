package api

import (
	"crypto/subtle"
	"encoding/json"
	"fmt"
	"mime"
	"net"
	"net/http"
	"strings"
)

// Access is the HTTP API's access policy (SPEC.md "Security", "HTTP API").
// Protect applies it to every request, in this order:
//
//  1. Host: the request's Host (port ignored) must be one of Hosts, or an
//     IP literal accepted by HostIP; else 421 Misdirected Request. A web
//     page that rebinds its own DNS name to the node's address sends its
//     own name, so it never gets past this.
//  2. Origin: a request carrying an Origin header is refused (403) unless
//     the origin is listed in Origins exactly ("https://console.example:8443").
//     Browsers send Origin on every cross-origin request and on every POST;
//     csnap-admin, curl and Consul's checks send none.
//  3. Authentication: every request but GET /v1/health needs
//     "Authorization: Bearer TOKEN" (compared in constant time); else 401.
//     With Token empty nothing but the health endpoint is served.
//  4. Content type: a request with a body must say Content-Type:
//     application/json; else 415.
type Access struct {
	Token string
	// Hosts are the names accepted in the Host header, compared without
	// case and without a trailing dot (e.g. "localhost", "node1.example").
	Hosts []string
	// HostIP reports whether an IP literal in the Host header is one this
	// node is reached at (nil: none but those listed in Hosts).
	HostIP func(net.IP) bool
	// Origins are the browser origins allowed to call the API.
	Origins []string
}

// HealthPath is the one endpoint served without authentication: GET only,
// read-only, for health checks (Consul's check calls it with no token).
const HealthPath = "/v1/health"

// Protect wraps h with the checks of a.
func Protect(h http.Handler, a Access) http.Handler {
	hosts := map[string]bool{}
	for _, n := range a.Hosts {
		hosts[normHost(n)] = true
	}
	origins := map[string]bool{}
	for _, o := range a.Origins {
		origins[strings.TrimRight(o, "/")] = true
	}
	want := []byte("Bearer " + a.Token)
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		host := hostOnly(r.Host)
		ip := net.ParseIP(host)
		if !hosts[host] && (ip == nil || a.HostIP == nil || !a.HostIP(ip)) {
			refuse(w, http.StatusMisdirectedRequest, fmt.Sprintf("Host %q is not a name of this node (configure it in http_hosts)", r.Host))
			return
		}
		if o, ok := r.Header["Origin"]; ok && (len(o) != 1 || !origins[o[0]]) {
			refuse(w, http.StatusForbidden, fmt.Sprintf("cross-origin request from %q refused (allowed origins: http_origins)", strings.Join(o, ", ")))
			return
		}
		public := r.Method == http.MethodGet && r.URL.Path == HealthPath
		if !public && (a.Token == "" || subtle.ConstantTimeCompare([]byte(r.Header.Get("Authorization")), want) != 1) {
			w.Header().Set("WWW-Authenticate", `Bearer realm="csnap"`)
			refuse(w, http.StatusUnauthorized, "missing or wrong API token (Authorization: Bearer ...; csnap-admin reads it from -token-file or $CSNAP_HTTP_TOKEN)")
			return
		}
		if hasBody(r) {
			mt, _, err := mime.ParseMediaType(r.Header.Get("Content-Type"))
			if err != nil || mt != "application/json" {
				refuse(w, http.StatusUnsupportedMediaType, "a request body must be JSON with Content-Type: application/json")
				return
			}
		}
		h.ServeHTTP(w, r)
	})
}

// hasBody reports whether the request carries a body (any length, or a
// chunked one).
func hasBody(r *http.Request) bool {
	return r.ContentLength != 0 || len(r.TransferEncoding) > 0
}

// hostOnly strips the port and brackets from a Host header and normalises
// case and a trailing dot.
func hostOnly(h string) string {
	if host, _, err := net.SplitHostPort(h); err == nil {
		h = host
	}
	return normHost(strings.TrimSuffix(strings.TrimPrefix(h, "["), "]"))
}

func normHost(h string) string { return strings.TrimSuffix(strings.ToLower(h), ".") }

func refuse(w http.ResponseWriter, code int, msg string) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	json.NewEncoder(w).Encode(errorBody{Error: msg})
}
