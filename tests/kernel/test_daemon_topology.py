"""The end-to-end network itself, with IPVS set up by ipvsadm alone: traffic
from the client through the VIP reaches the real servers in NAT mode. If these
fail, the daemon tests' failures say nothing about the daemon."""

from __future__ import annotations

import socket
from functools import partial

import pytest
from topology import (
    HTTP_PORT,
    UDP_PORT,
    Network,
    RealServers,
    http_get,
    ipvsadm,
    tally,
    udp_ask,
)


def nat_service(net: Network) -> None:
    ipvsadm("-A", "-t", f"{net.vip}:{HTTP_PORT}", "-s", "rr")
    for host in net.web:
        ipvsadm("-a", "-t", f"{net.vip}:{HTTP_PORT}", "-r", f"{host.address}:{HTTP_PORT}", "-m")
    ipvsadm("-A", "-u", f"{net.vip}:{UDP_PORT}", "-s", "rr")
    for host in net.udp:
        ipvsadm("-a", "-u", f"{net.vip}:{UDP_PORT}", "-r", f"{host.address}:{UDP_PORT}", "-m")


def test_http_through_the_vip_reaches_every_real_server(net: Network, servers: RealServers) -> None:
    nat_service(net)
    assert tally(partial(http_get, net), 30) == {"rs1": 10, "rs2": 10, "rs3": 10}


def test_udp_through_the_vip_reaches_every_real_server(net: Network, servers: RealServers) -> None:
    nat_service(net)
    replies = [udp_ask(net, f"ping {i}".encode()) for i in range(10)]
    assert {name for name, _ in replies} == {"u1", "u2"}
    assert [echoed for _, echoed in replies] == [f"ping {i}".encode() for i in range(10)]


def test_a_killed_server_refuses_and_a_restarted_one_answers(
    net: Network, servers: RealServers
) -> None:
    ipvsadm("-A", "-t", f"{net.vip}:{HTTP_PORT}", "-s", "rr")
    ipvsadm("-a", "-t", f"{net.vip}:{HTTP_PORT}", "-r", f"{net.web[0].address}:{HTTP_PORT}", "-m")
    assert http_get(net) == "rs1"
    servers.kill("rs1")
    with pytest.raises(ConnectionRefusedError):
        http_get(net)
    servers.start("rs1")
    assert http_get(net) == "rs1"


def test_real_servers_answer_health_paths_directly(net: Network, servers: RealServers) -> None:
    # What the daemon's checks see: the director reaches each server itself.
    for host in net.web:
        with socket.create_connection((str(host.address), HTTP_PORT), timeout=5) as sock:
            sock.sendall(b"GET /healthz HTTP/1.0\r\n\r\n")
            assert sock.recv(4096).startswith(b"HTTP/1.0 200")
