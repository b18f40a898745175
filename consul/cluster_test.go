package consul

import "testing"

// Consul's environment is honoured; -consul-addr overrides the address.
func TestAgentConfigFromEnv(t *testing.T) {
	t.Setenv("CONSUL_HTTP_ADDR", "127.0.0.9:18599")
	t.Setenv("CONSUL_HTTP_TOKEN", "secret-token")
	c := AgentConfig("")
	if c.Address != "127.0.0.9:18599" || c.Token != "secret-token" {
		t.Fatalf("from the environment: address %q token %q", c.Address, c.Token)
	}
	c = AgentConfig("127.0.0.2:18500")
	if c.Address != "127.0.0.2:18500" || c.Token != "secret-token" {
		t.Fatalf("with -consul-addr: address %q token %q", c.Address, c.Token)
	}
}
