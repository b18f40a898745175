# csnapd configuration of node n3 of a 3-node cluster (n1, n2, n3 on 127.0.0.1-3).
# Install as /etc/csnap/csnapd.hcl; run: csnapd -config /etc/csnap/csnapd.hcl
# Every setting is also a flag (the key with '-' for '_', e.g. -node-name), and a
# flag overrides the file. On real hosts replace 127.0.0.3 by the host's address.

node_name = "n3"                  # this node's name, unique in the cluster (default: the host name)
data_dir  = "/var/lib/csnap"      # this node's local state

iscsi_addr  = "127.0.0.3:3260"    # iSCSI portal initiators log in to (comma-separate several)
http_addr   = "127.0.0.3:7862"    # HTTP API for csnap-admin; every request but GET /v1/health needs the token
server_addr = "127.0.0.3:7863"    # snapshot-server protocol listener, reachable from the other nodes
# http_token_file = "/etc/csnap/api-token"  # default: $CSNAP_HTTP_TOKEN, else data_dir/api-token (generated, 0600)
# http_hosts      = ["n3.example.com"]      # names the API answers to besides its address (DNS rebinding)
# http_tls_cert_file = "/etc/csnap/tls/node.pem"  # serve the API over TLS (csnap-admin -addr https://... -ca-file CA)
# http_tls_key_file  = "/etc/csnap/tls/node-key.pem"
portal_group_tag = 3              # portal group tag / relative target port id, 1-65535, distinct per node

consul_addr   = "127.0.0.3:8500"  # HTTP API of this node's own Consul agent (consul-agent.hcl)
consul_prefix = "csnap/"          # Consul KV prefix, the same on every node

# Volumes' origins and stores must lie under these (directories, or devices named exactly;
# symbolic links are resolved, so /dev/disk/by-id/... names the device it points to).
volume_paths = ["/srv/csnap", "/dev/mapper"]

log_level      = "info"           # debug, info, warn or error
log_format     = "text"           # text or json
chap_discovery = false            # also require CHAP on discovery sessions ($CSNAP_CHAP_USER etc.)
direct_io      = true             # origin and store O_DIRECT: needed when nodes share them from different hosts

# Failover timing. These are the safe defaults; keep them equal on every node. The lease
# must stay shorter than Consul's node-failure detection plus lock_delay, and longer than
# check_interval.
lock_delay     = "1s"             # no node may take a lost server lock for this long (default 1s)
check_interval = "1s"             # interval of csnapd's own Consul health check (default 1s)
lease          = "2s"             # a server stops serving after this long without confirming its lock (default 2s)
io_timeout     = "25s"            # IO waits this long for an unreachable snapshot server, then fails (default 25s)
await_timeout  = "30s"            # a new server waits this long for the old server's clients (default 30s)

# Mutual TLS of the snapshot-server protocol (required in cluster mode). Make the files once:
#   csnap-admin tls ca create --dir /etc/csnap/tls          (keep csnap-agent-ca-key.pem off the nodes)
#   csnap-admin tls cert create --node n3 --dir /etc/csnap/tls
# and copy the CA certificate and this node's two files here. SIGHUP (or a changed file) reloads them.
tls {
  ca_file   = "/etc/csnap/tls/csnap-agent-ca.pem"
  cert_file = "/etc/csnap/tls/csnap-node-n3.pem"
  key_file  = "/etc/csnap/tls/csnap-node-n3-key.pem"
}
