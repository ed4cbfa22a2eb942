"""The SSH front door: host key, public-key auth, git over dulwich, and the
command table (`apps`, `logs`, `config:set`, ...). It only authenticates and
dispatches; the node does the work through `service.NodeService`."""
