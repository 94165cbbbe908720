import pytest

from mpips.layout import SCHEDULER, SERVER, WORKER, LayoutError, make_layout


def test_roles_from_rank_layout():
    lay = make_layout(7, servers=2)
    assert lay.role(0) == SCHEDULER
    assert lay.servers == (1, 2) and lay.workers == (3, 4, 5, 6)
    assert lay.role(2) == SERVER and lay.role(6) == WORKER
    assert lay.describe(4) == "worker 1"


def test_default_servers():
    assert make_layout(3).servers == (1,)
    assert len(make_layout(7).servers) == 2
    assert len(make_layout(100).servers) == 33


def test_servers_spread_over_hosts():
    hosts = [0, 0, 0, 0, 4, 4, 4, 4]  # two hosts, four ranks each
    lay = make_layout(8, servers=3, hosts=hosts)
    server_hosts = [hosts[r] for r in lay.servers]
    # ring neighbours alternate hosts
    assert all(a != b for a, b in zip(server_hosts, server_hosts[1:], strict=False))
    assert not make_layout(8, servers=3, hosts=hosts, spread_hosts=False).servers == lay.servers


@pytest.mark.parametrize("n,servers,match", [
    (2, 0, "at least 3 ranks"), (1, 0, "at least 3 ranks"),
    (3, 2, "leave no worker"), (5, 4, "leave no worker")])
def test_bad_layouts(n, servers, match):
    with pytest.raises(LayoutError, match=match):
        make_layout(n, servers=servers)
