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

disable_update_check = true
log_level            = "info"
