"""The project's own proxies name the client, and the servers behind them trust only them:
HAProxy of the local cluster (deploy/cluster, benchmarks/cluster.py) and the Kubernetes
ingress (deploy/kubernetes)."""

from __future__ import annotations

import ipaddress

import pytest

from benchmarks.cluster import LOOPBACK, Cluster, render_haproxy
from server.http.client_address import client_address, trusted_networks

from .kube import OVERLAYS, render
from .test_manifests import server_settings


def test_haproxy_sends_x_forwarded_for_and_the_replicas_trust_it(tmp_path):
    cfg = render_haproxy(18080, 18081, [("replica-1", 18001)])
    lines = {" ".join(line.split()) for line in cfg.splitlines() if not line.startswith("#")}
    assert "option forwardfor" in lines
    cluster = Cluster.__new__(Cluster)  # only replica_args is read: no process is started
    cluster.database_url, cluster.s3 = "postgresql://x@127.0.0.1/db", _FakeS3()
    cluster.api_key, cluster.models_dir, cluster.threads = "k", tmp_path, 1
    cluster.lease_seconds, cluster.server_args = None, []
    args = cluster.replica_args(tmp_path)
    trusted = trusted_networks([args[args.index("--trusted-proxy") + 1]])
    # requests reach the replicas from the balancer's loopback address
    assert client_address(LOOPBACK, ["203.0.113.5"], trusted) == "203.0.113.5"


class _FakeS3:
    class server:  # noqa: N801 - the attribute name of the real one
        bucket, endpoint = "b", "http://127.0.0.1:1"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_the_servers_trust_the_ingress_network(overlay):
    settings = server_settings(render(overlay))
    networks = trusted_networks(getattr(settings, "http.trusted_proxies"))
    assert networks, "INPAINT_TRUSTED_PROXIES: the ingress' pods name the client"
    assert getattr(settings, "http.forwarded_header") == "x-forwarded-for"  # ingress-nginx's
    # private networks only: a public address must never be able to name a client
    assert all(net.is_private for net in networks)
    assert client_address("10.244.1.7", ["203.0.113.5"], networks) == "203.0.113.5"
    assert ipaddress.ip_address("203.0.113.5") not in networks[0]
