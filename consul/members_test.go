package consul

import (
	"fmt"
	"testing"
)

// TestMembersMetaBounded: however many nodes a (hostile or broken) catalog
// lists, Members remembers the metadata of at most maxMemberMeta of them,
// and still updates the ones it knows.
func TestMembersMetaBounded(t *testing.T) {
	m := NewMembers()
	for i := 0; i < 3*maxMemberMeta; i++ {
		m.SetMeta(fmt.Sprintf("n%d", i), map[string]string{"portal_group_tag": "7"})
	}
	if len(m.meta) > maxMemberMeta {
		t.Fatalf("%d nodes' metadata kept, at most %d", len(m.meta), maxMemberMeta)
	}
	m.SetMeta("n0", map[string]string{"portal_group_tag": "9"})
	if got := m.Meta("n0", "portal_group_tag"); got != "9" {
		t.Fatalf("a known node's metadata not updated: %q", got)
	}
	var nilMembers *Members
	if nilMembers.Meta("n0", "x") != "" {
		t.Fatal("nil Members answered")
	}
}
