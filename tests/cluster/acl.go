package cluster

import (
	"context"
	"crypto/rand"
	"encoding/base64"
	"fmt"
	"strconv"
	"strings"

	"github.com/hashicorp/consul/api"
)

// Consul with ACLs (Options.ConsulACL): every agent runs with ACLs
// enabled, default policy deny, and gossip encryption; the management
// token is pre-set as initial_management (no `consul acl bootstrap`
// round trip) and is the agents' own token and the harness's. Each csnapd
// gets a token of its own holding only Options.CsnapdPolicy with the
// node's name, the way configs/README.md tells an operator to.

// aclSecrets makes the management token and the gossip key.
func aclSecrets(o *Options) error {
	if strings.TrimSpace(o.CsnapdPolicy) == "" {
		return fmt.Errorf("cluster: ConsulACL needs CsnapdPolicy (configs/consul-policy-csnapd.hcl)")
	}
	var b [32]byte
	if _, err := rand.Read(b[:]); err != nil {
		return err
	}
	o.gossipKey = base64.StdEncoding.EncodeToString(b[:])
	var u [16]byte
	if _, err := rand.Read(u[:]); err != nil {
		return err
	}
	o.aclManagement = fmt.Sprintf("%x-%x-%x-%x-%x", u[0:4], u[4:6], u[6:8], u[8:10], u[10:16])
	return nil
}

// aclConfig is the agent configuration's ACL and encryption part ("" without ConsulACL).
func aclConfig(o Options) string {
	if !o.ConsulACL {
		return ""
	}
	return fmt.Sprintf(`acl {
  enabled        = true
  default_policy = "deny"
  tokens {
    initial_management = %q
    agent              = %q
  }
}
encrypt = %q
`, o.aclManagement, o.aclManagement, o.gossipKey)
}

// csnapdTokens creates each node's csnapd policy and token (once; agent
// restarts keep them, the ACL state is in Raft).
func (c *Cluster) csnapdTokens(ctx context.Context) error {
	for i := range c.nodes {
		m := c.nodes[i]
		if m.consulToken != "" {
			continue
		}
		name := m.info.Name
		rules := strings.ReplaceAll(c.opts.CsnapdPolicy, `"n1"`, strconv.Quote(name))
		var tok string
		err := poll(ctx, c.opts.ReadyTimeout, "csnapd ACL token of "+name, func(ctx context.Context) error {
			acl := m.consul.ACL()
			wo := (&api.WriteOptions{}).WithContext(ctx)
			pol, _, err := acl.PolicyReadByName("csnapd-"+name, queryOpts(ctx))
			if err != nil {
				return fmt.Errorf("%s: reading policy: %w", name, err)
			}
			if pol == nil {
				if pol, _, err = acl.PolicyCreate(&api.ACLPolicy{Name: "csnapd-" + name, Rules: rules}, wo); err != nil {
					return fmt.Errorf("%s: creating policy: %w", name, err)
				}
			}
			t, _, err := acl.TokenCreate(&api.ACLToken{Description: "csnapd " + name,
				Policies: []*api.ACLTokenPolicyLink{{ID: pol.ID}}}, wo)
			if err != nil {
				return fmt.Errorf("%s: creating token: %w", name, err)
			}
			tok = t.SecretID
			return nil
		})
		if err != nil {
			return err
		}
		c.mu.Lock()
		m.consulToken = tok
		c.mu.Unlock()
		c.logf("%s: csnapd's Consul token holds only policy csnapd-%s", name, name)
	}
	return nil
}

// ConsulManagementToken is the management token of a ConsulACL cluster
// ("" otherwise).
func (c *Cluster) ConsulManagementToken() string { return c.opts.aclManagement }
