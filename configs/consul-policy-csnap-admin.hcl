# Consul ACL policy for operators of csnap (read-only). csnap-admin itself never talks to Consul:
# it calls a csnapd's HTTP API with that node's API token, and csnapd acts with its own Consul
# token (consul-policy-csnapd.hcl). This policy is for looking at csnap's state with the consul
# CLI or UI (`consul kv get -recurse csnap/`, `consul catalog services`) without the power to
# change it: whoever can write csnap/ can make every node open any path allowed by its
# volume_paths and dial any address as a volume's server.
#   consul acl policy create -name csnap-admin -rules @configs/consul-policy-csnap-admin.hcl
#   consul acl token create -description "csnap operator" -policy-name csnap-admin

key_prefix "csnap/" {
  policy = "read"
}
session_prefix "" {
  policy = "read"
}
service_prefix "" {
  policy = "read"
}
node_prefix "" {
  policy = "read"
}
