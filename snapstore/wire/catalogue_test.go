package wire

import (
	"fmt"
	"go/ast"
	"go/parser"
	"go/token"
	"io/fs"
	"regexp"
	"strings"
	"testing"
)

// TestCatalogue: every message type the package declares (a Type constant,
// and a struct with a Type method) is one row of the catalogue, whose zero
// value has that type, whose name is the constant's in upper snake case,
// and whose replies are replies; every reply answers some request. With
// TestRoundTrip (every catalogue type round-trips) and
// TestFuzzersCoverEveryType, a message missing anywhere fails a test.
func TestCatalogue(t *testing.T) {
	fset := token.NewFileSet()
	pkgs, err := parser.ParseDir(fset, ".", func(fi fs.FileInfo) bool {
		return !strings.HasSuffix(fi.Name(), "_test.go")
	}, 0)
	if err != nil {
		t.Fatal(err)
	}
	consts := map[string]bool{}  // TypeX constants
	methods := map[string]bool{} // receivers of Type() MsgType
	for _, f := range pkgs["wire"].Files {
		for _, d := range f.Decls {
			switch d := d.(type) {
			case *ast.GenDecl:
				for _, sp := range d.Specs {
					if vs, ok := sp.(*ast.ValueSpec); ok && d.Tok == token.CONST {
						if id, ok := vs.Type.(*ast.Ident); ok && id.Name == "MsgType" {
							for _, n := range vs.Names {
								consts[n.Name] = true
							}
						}
					}
				}
			case *ast.FuncDecl:
				if d.Recv != nil && d.Name.Name == "Type" && len(d.Recv.List) == 1 {
					if st, ok := d.Recv.List[0].Type.(*ast.StarExpr); ok {
						methods[st.X.(*ast.Ident).Name] = true
					}
				}
			}
		}
	}
	if len(consts) != len(catalogue) || len(methods) != len(catalogue) {
		t.Errorf("%d Type constants, %d message types, %d catalogue rows", len(consts), len(methods), len(catalogue))
	}
	snake := regexp.MustCompile(`([a-z])([A-Z])`)
	names := map[string]MsgType{}
	for typ, m := range catalogue {
		msg := m.new()
		if msg == nil || msg.Type() != typ {
			t.Errorf("%v: zero value %T has type %v", typ, msg, msg.Type())
			continue
		}
		goName := strings.TrimPrefix(fmt.Sprintf("%T", msg), "*wire.")
		if !methods[goName] || !consts["Type"+goName] {
			t.Errorf("%v: struct %s or constant Type%s not declared", typ, goName, goName)
		}
		if want := strings.ToUpper(snake.ReplaceAllString(goName, "${1}_${2}")); m.name != want {
			t.Errorf("%v: named %q, want %q", typ, m.name, want)
		}
		if o, dup := names[m.name]; dup {
			t.Errorf("%v and %v are both named %q", typ, o, m.name)
		}
		names[m.name] = typ
		if (m.kind == KindRequest) != (len(m.replies) > 0) {
			t.Errorf("%v: kind %d with replies %v", typ, m.kind, m.replies)
		}
		for _, r := range m.replies {
			if r.Kind() != KindReply || r == TypeError {
				t.Errorf("%v: reply %v is of kind %d", typ, r, r.Kind())
			}
		}
	}
	for typ, m := range catalogue {
		if m.kind != KindReply || typ == TypeError {
			continue
		}
		answers := false
		for req := range catalogue {
			for _, r := range req.Replies() {
				answers = answers || r == typ
			}
		}
		if !answers {
			t.Errorf("reply %v answers no request", typ)
		}
	}
	if MsgType(0).String() != "MsgType(0x00)" || MsgType(0).Kind() != 0 || MsgType(0).Replies() != nil || newMessage(0) != nil {
		t.Error("an unknown type is known")
	}
}
