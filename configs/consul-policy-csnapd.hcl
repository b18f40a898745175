# Consul ACL policy of csnapd on node n1 (least privilege). One policy per node: for n2 and n3
# replace "n1" by the node's name (the Consul node name = csnapd's node_name). csnapd's token
# holds this policy only; give it to csnapd as CONSUL_HTTP_TOKEN in /etc/csnap/csnapd.env.
# Create with (configs/README.md, "Consul ACLs"):
#   consul acl policy create -name csnapd-n1 -rules @configs/consul-policy-csnapd.hcl
#   consul acl token create -description "csnapd n1" -policy-name csnapd-n1

# csnap's whole state: volume definitions, server locks, client registries, shared LU state.
key_prefix "csnap/" {
  policy = "write"
}

# The server-lock sessions of this node (bound to its csnap-iscsi check).
session "n1" {
  policy = "write"
}
session_prefix "" {
  policy = "read"                 # stale-session cleanup lists this node's sessions
}

# Its own services: csnap-iscsi (with the health check on GET /v1/health) and csnap-server.
service "csnap-iscsi" {
  policy = "write"
}
service "csnap-server" {
  policy = "write"
}

# Reads elsewhere: cluster membership (health of csnap-iscsi), the catalogue, its agent's name.
service_prefix "" {
  policy = "read"
}
node_prefix "" {
  policy = "read"
}
agent "n1" {
  policy = "read"
}
