package main

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/hashicorp/hcl/hcl/ast"
	"github.com/hashicorp/hcl/hcl/parser"
	"github.com/hashicorp/hcl/hcl/scanner"
	hclstrconv "github.com/hashicorp/hcl/hcl/strconv"
	"github.com/hashicorp/hcl/hcl/token"
)

// configSetting maps one key of the configuration file to its field of
// options. field returns a *string, *int, *bool or *time.Duration; the
// value's type in the file follows from it (durations are Go duration
// strings such as "1s"). The key is the flag's name with '-' replaced by
// '_' (config_test.go checks that every flag has a key and vice versa).
type configSetting struct {
	key   string
	field func(o *options) any
}

// configSettings are the keys of the configuration file. Adding a setting:
// its flag in newFlagSet, and one line here.
var configSettings = []configSetting{
	{"node_name", func(o *options) any { return &o.nodeName }},
	{"data_dir", func(o *options) any { return &o.dataDir }},
	{"iscsi_addr", func(o *options) any { return &o.iscsiAddr }},
	{"http_addr", func(o *options) any { return &o.httpAddr }},
	{"server_addr", func(o *options) any { return &o.serverAddr }},
	{"consul_addr", func(o *options) any { return &o.consulAddr }},
	{"consul_prefix", func(o *options) any { return &o.consulPrefix }},
	{"log_level", func(o *options) any { return &o.logLevel }},
	{"log_format", func(o *options) any { return &o.logFormat }},
	{"chap_discovery", func(o *options) any { return &o.chapDiscovery }},
	{"chap_algorithms", func(o *options) any { return &o.chapAlgorithms }},
	{"iscsi_ping_timeout", func(o *options) any { return &o.pingTimeout }},
	{"http_token_file", func(o *options) any { return &o.httpTokenFile }},
	{"http_hosts", func(o *options) any { return &o.httpHosts }},
	{"http_origins", func(o *options) any { return &o.httpOrigins }},
	{"http_tls_cert_file", func(o *options) any { return &o.httpTLSCertFile }},
	{"http_tls_key_file", func(o *options) any { return &o.httpTLSKeyFile }},
	{"volume_paths", func(o *options) any { return &o.volumePaths }},
	{"portal_group_tag", func(o *options) any { return &o.portalGroupTag }},
	{"lock_delay", func(o *options) any { return &o.lockDelay }},
	{"check_interval", func(o *options) any { return &o.checkInterval }},
	{"lease", func(o *options) any { return &o.lease }},
	{"io_timeout", func(o *options) any { return &o.ioTimeout }},
	{"await_timeout", func(o *options) any { return &o.awaitTimeout }},
	{"direct_io", func(o *options) any { return &o.directIO }},
	{"tls.ca_file", func(o *options) any { return &o.tlsCA }},
	{"tls.cert_file", func(o *options) any { return &o.tlsCert }},
	{"tls.key_file", func(o *options) any { return &o.tlsKey }},
	{"insecure_no_tls", func(o *options) any { return &o.insecureNoTLS }},
}

// configBlocks are the blocks of the configuration file: a setting inner
// of block b has the key "b.inner" (which may also be written so).
var configBlocks = map[string]bool{"tls": true}

// blockFlags are the flags of settings in blocks, whose names do not
// follow from their key.
var blockFlags = map[string]string{"tls.ca_file": "tls-ca", "tls.cert_file": "tls-cert", "tls.key_file": "tls-key"}

// commandLineOnly are the flags that have no key in the file.
var commandLineOnly = map[string]bool{"dev": true, "config": true, "version": true}

// flagName is the command-line flag of a file key.
func flagName(key string) string {
	if f, ok := blockFlags[key]; ok {
		return f
	}
	return strings.ReplaceAll(key, "_", "-")
}

// flattenBlocks replaces each block `b { k = v ... }` of items by its
// settings, keyed "b.k".
func flattenBlocks(path string, items []*ast.ObjectItem) ([]*ast.ObjectItem, error) {
	var out []*ast.ObjectItem
	for _, item := range items {
		obj, ok := item.Val.(*ast.ObjectType)
		if !ok || len(item.Keys) != 1 {
			out = append(out, item)
			continue
		}
		b, err := keyText(item.Keys[0].Token)
		if err != nil || !configBlocks[b] {
			out = append(out, item) // reported by the caller
			continue
		}
		for _, in := range obj.List.Items {
			if len(in.Keys) != 1 {
				return nil, fmt.Errorf("%s:%d: expected a setting `key = value` in block %s", path, in.Pos().Line, b)
			}
			if _, nested := in.Val.(*ast.ObjectType); nested {
				return nil, fmt.Errorf("%s:%d: no block may be nested in block %s", path, in.Pos().Line, b)
			}
			k, err := keyText(in.Keys[0].Token)
			if err != nil {
				return nil, fmt.Errorf("%s:%d: %v", path, in.Pos().Line, err)
			}
			tok := in.Keys[0].Token
			tok.Type, tok.Text = token.IDENT, b+"."+k
			out = append(out, &ast.ObjectItem{Keys: []*ast.ObjectKey{{Token: tok}}, Assign: in.Assign, Val: in.Val})
		}
	}
	return out, nil
}

func lookupSetting(key string) (configSetting, bool) {
	for _, s := range configSettings {
		if s.key == key {
			return s, true
		}
	}
	return configSetting{}, false
}

// applyConfigFile fills the settings of o that were not set by a flag (set
// holds the names of flags given) from the HCL file at path. The file is
// checked completely, also the settings a flag overrides. Errors are one
// line, "PATH:LINE: what is wrong".
func applyConfigFile(o *options, path string, set map[string]bool) error {
	src, err := os.ReadFile(path)
	if err != nil {
		return fmt.Errorf("reading config file: %w", err)
	}
	f, err := parser.Parse(src)
	if err != nil {
		var pe *parser.PosError
		if errors.As(err, &pe) {
			return fmt.Errorf("%s:%d:%d: %s", path, pe.Pos.Line, pe.Pos.Column, oneLine(pe.Err.Error()))
		}
		return fmt.Errorf("%s: %s", path, oneLine(err.Error()))
	}
	// The parser silently drops a last `key =` that has no value.
	if pos, ok := danglingAssign(src); ok {
		return fmt.Errorf("%s:%d:%d: expected a value after '='", path, pos.Line, pos.Column)
	}
	list, ok := f.Node.(*ast.ObjectList)
	if !ok {
		return fmt.Errorf("%s: not a list of settings", path)
	}
	seen := map[string]int{} // key -> line
	items, err := flattenBlocks(path, list.Items)
	if err != nil {
		return err
	}
	for _, item := range items {
		line := item.Pos().Line
		at := fmt.Sprintf("%s:%d", path, line)
		switch len(item.Keys) {
		case 0:
			return fmt.Errorf("%s: expected a setting `key = value`", at)
		case 1:
		default:
			return fmt.Errorf("%s: expected a setting `key = value`, found block %s", at, oneLine(item.Keys[0].Token.Text))
		}
		key, err := keyText(item.Keys[0].Token)
		if err != nil {
			return fmt.Errorf("%s: %v", at, err)
		}
		s, ok := lookupSetting(key)
		if !ok {
			return fmt.Errorf("%s: unknown setting %q%s", at, key, unknownHint(key))
		}
		if prev, dup := seen[key]; dup {
			return fmt.Errorf("%s: %s is already set on line %d", at, key, prev)
		}
		seen[key] = line
		// Decode into a scratch options so an overridden setting is
		// still checked but does not touch o.
		scratch := &options{}
		if err := decodeValue(s.field(scratch), item.Val); err != nil {
			return fmt.Errorf("%s: %s: %v", at, key, err)
		}
		if set[flagName(key)] {
			continue // the command line overrides the file
		}
		copyValue(s.field(o), s.field(scratch))
	}
	return nil
}

// danglingAssign reports the position of a '=' that is the file's last
// token (comments aside).
func danglingAssign(src []byte) (token.Pos, bool) {
	sc := scanner.New(bytes.ReplaceAll(src, []byte("\r\n"), []byte("\n")))
	sc.Error = func(token.Pos, string) {} // the parser reported any
	var last token.Token
	for t := sc.Scan(); t.Type != token.EOF && t.Type != token.ILLEGAL; t = sc.Scan() {
		if t.Type != token.COMMENT {
			last = t
		}
	}
	return last.Pos, last.Type == token.ASSIGN
}

// stringList is a list setting: a comma-separated flag value, and in the
// file either a list of strings or one comma-separated string.
type stringList []string

func (l *stringList) String() string { return strings.Join(*l, ",") }

func (l *stringList) Set(s string) error {
	*l = nil
	for _, e := range strings.Split(s, ",") {
		if e = strings.TrimSpace(e); e != "" {
			*l = append(*l, e)
		}
	}
	return nil
}

// decodeValue stores the literal v into dst, a field pointer of options.
func decodeValue(dst any, v ast.Node) error {
	if p, ok := dst.(*stringList); ok {
		if lt, ok := v.(*ast.ListType); ok {
			*p = nil
			for _, e := range lt.List {
				var s string
				if err := decodeValue(&s, e); err != nil {
					return fmt.Errorf("list element: %v", err)
				}
				*p = append(*p, s)
			}
			return nil
		}
		var s string
		if err := decodeValue(&s, v); err != nil {
			return err
		}
		return p.Set(s)
	}
	lit, ok := v.(*ast.LiteralType)
	if !ok {
		return fmt.Errorf("expected %s, found %s", typeName(dst), nodeKind(v))
	}
	tok := lit.Token
	switch p := dst.(type) {
	case *string:
		if tok.Type != token.STRING {
			return fmt.Errorf("expected a string in quotes, found %s", tokenKind(tok))
		}
		str, err := hclstrconv.Unquote(tok.Text)
		if err != nil {
			return fmt.Errorf("bad string %s: %v", tok.Text, err)
		}
		*p = str
	case *bool:
		if tok.Type != token.BOOL {
			return fmt.Errorf("expected true or false, found %s", tokenKind(tok))
		}
		*p = tok.Text == "true"
	case *int:
		if tok.Type != token.NUMBER {
			return fmt.Errorf("expected an integer, found %s", tokenKind(tok))
		}
		n, err := strconv.ParseInt(tok.Text, 0, strconv.IntSize)
		if err != nil {
			return fmt.Errorf("bad integer %s: out of range", tok.Text)
		}
		*p = int(n)
	case *time.Duration:
		if tok.Type != token.STRING {
			return fmt.Errorf("expected a duration in quotes such as \"1s\", found %s", tokenKind(tok))
		}
		str, err := hclstrconv.Unquote(tok.Text)
		if err != nil {
			return fmt.Errorf("bad string %s: %v", tok.Text, err)
		}
		d, err := time.ParseDuration(str)
		if err != nil {
			return fmt.Errorf("bad duration %q (want e.g. \"500ms\", \"1s\", \"2m\")", str)
		}
		*p = d
	default:
		panic(fmt.Sprintf("config: unsupported field type %T", dst))
	}
	return nil
}

// copyValue copies *src to *dst, two pointers of the same type.
func copyValue(dst, src any) {
	switch d := dst.(type) {
	case *string:
		*d = *src.(*string)
	case *bool:
		*d = *src.(*bool)
	case *int:
		*d = *src.(*int)
	case *time.Duration:
		*d = *src.(*time.Duration)
	case *stringList:
		*d = append(stringList(nil), *src.(*stringList)...)
	default:
		panic(fmt.Sprintf("config: unsupported field type %T", dst))
	}
}

func keyText(t token.Token) (string, error) {
	if t.Type == token.STRING {
		k, err := hclstrconv.Unquote(t.Text)
		if err != nil {
			return "", fmt.Errorf("bad key %s: %v", t.Text, err)
		}
		return k, nil
	}
	return t.Text, nil
}

// unknownHint helps with the likely mistakes: a flag name, a command-line
// only flag, or a typo.
func unknownHint(key string) string {
	if commandLineOnly[flagName(key)] {
		return fmt.Sprintf(" (-%s is a command-line flag only)", flagName(key))
	}
	k := strings.ReplaceAll(key, "-", "_")
	if _, ok := lookupSetting(k); ok {
		return fmt.Sprintf(" (did you mean %s?)", k)
	}
	keys := make([]string, len(configSettings))
	for i, s := range configSettings {
		keys[i] = s.key
	}
	sort.Strings(keys)
	return " (known: " + strings.Join(keys, ", ") + ")"
}

func typeName(dst any) string {
	switch dst.(type) {
	case *string:
		return "a string in quotes"
	case *bool:
		return "true or false"
	case *int:
		return "an integer"
	case *time.Duration:
		return "a duration in quotes such as \"1s\""
	case *stringList:
		return "a list of strings [\"a\", \"b\"]"
	}
	return fmt.Sprintf("%T", dst)
}

func nodeKind(n ast.Node) string {
	switch n.(type) {
	case *ast.ObjectType:
		return "a block { }"
	case *ast.ListType:
		return "a list [ ]"
	}
	return fmt.Sprintf("%T", n)
}

func tokenKind(t token.Token) string {
	switch t.Type {
	case token.STRING, token.HEREDOC:
		return "a string " + oneLine(t.Text)
	case token.NUMBER, token.FLOAT:
		return "a number " + t.Text
	case token.BOOL:
		return t.Text
	}
	return oneLine(t.Text)
}

func oneLine(s string) string {
	return strings.Join(strings.Fields(s), " ")
}
