# Consul agent configuration for compose/cluster.yml, read by every agent
# (-config-dir=/consul/config) and mounted read-only into registrator and
# haproxy, which find CA certificates here. Put *.hcl files beside this one,
# or point CONSUL_CONFIG_DIR at a directory of your own. For example:
#
#   acl.hcl   acl { enabled = true  default_policy = "deny"  down_policy = "extend-cache"
#                   tokens { agent = "<this host's agent token>" } }
#   tls.hcl   ports { https = 8501 }
#             ca_file = "/consul/config/consul-agent-ca.pem"
#             cert_file = "/consul/config/dc1-server-consul-0.pem"
#             key_file = "/consul/config/dc1-server-consul-0-key.pem"
#
# then CONSUL_URL=consul-tls://consul:8501 and
# CONSUL_CACERT=/consul/config/consul-agent-ca.pem for registrator and
# haproxy-sync, and their tokens in REGISTRATOR_TOKEN and HAPROXY_TOKEN.
# This file itself configures nothing.
