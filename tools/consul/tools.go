//go:build tools

// Package tools pins the Consul server csnap's cluster tests run. Consul
// has no Debian package and refuses `go install` (its go.mod has replace
// directives), so the Makefile builds it from this module: see
// `make consul`. The exclude lines repeat upstream's own, which apply only
// in the main module.
package tools

import _ "github.com/hashicorp/consul"
