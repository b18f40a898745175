# Consul agent for csnap node n1: every csnap node runs one Consul server, the three form one cluster.
# Install as /etc/consul.d/consul.hcl. For n2 and n3 change node_name and the three addresses
# (127.0.0.2 / 127.0.0.3); on real hosts use each host's address and put all three in retry_join.

node_name  = "n1"                 # same as csnapd's node_name on this host
datacenter = "dc1"
data_dir   = "/var/lib/consul"

server           = true           # each of the 3 nodes is a Consul server
bootstrap_expect = 3              # elect a leader once all 3 servers have joined
session_ttl_min  = "1s"           # allow short session TTLs (default 10s)
performance {
  raft_multiplier = 1             # fastest Raft timing (leader election in about 2 s)
}

bind_addr      = "127.0.0.1"      # cluster traffic (serf 8301, server RPC 8300) on this node's address
advertise_addr = "127.0.0.1"
client_addr    = "127.0.0.1"      # HTTP API on 127.0.0.1:8500: csnapd's consul_addr
retry_join     = ["127.0.0.1", "127.0.0.2", "127.0.0.3"]
retry_interval = "1s"

# Tuned gossip: these values are what give ~3-4 s node-failure detection (failover after a
# node crash measured 3.2-3.7 s; 6.9-8.9 s with Consul's defaults). Same on every agent.
gossip_lan {
  probe_interval = "500ms"
  probe_timeout  = "250ms"
  suspicion_mult = 3
}

# Security (configs/README.md, "Consul ACLs, gossip encryption, TLS"): ACLs with default deny,
# encrypted gossip, TLS between the agents. Nothing works until the ACLs are bootstrapped and
# the tokens below are set.
acl {
  enabled                  = true
  default_policy           = "deny"
  enable_token_persistence = true # tokens set with `consul acl set-agent-token` survive restarts
  # tokens { agent = "..." }       # or set it here: the agent's own token (node "n1" write)
}

# Gossip encryption key, the same on every agent: the output of `consul keygen`.
encrypt = "REPLACE-WITH-THE-OUTPUT-OF-consul-keygen"

# TLS for server RPC and (with verify_incoming) between agents: `consul tls ca create`,
# `consul tls cert create -server -dc dc1` on the first server, the CA and each server's pair
# copied to /etc/consul.d/tls.
tls {
  defaults {
    ca_file         = "/etc/consul.d/tls/consul-agent-ca.pem"
    cert_file       = "/etc/consul.d/tls/dc1-server-consul-0.pem"
    key_file        = "/etc/consul.d/tls/dc1-server-consul-0-key.pem"
    verify_incoming = true
    verify_outgoing = true
  }
  internal_rpc {
    verify_server_hostname = true
  }
  https {
    verify_incoming = false       # local clients (csnapd) use the loopback HTTP port, no client cert
  }
}

disable_update_check = true
log_level            = "info"
