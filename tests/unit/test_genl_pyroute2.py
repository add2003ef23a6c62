"""Our IPVS marshalling, decoded by an independent implementation: pyroute2's
IPVS message classes (pyroute2/netlink/generic/ipvs.py). The backend encodes
with struct for speed; pyroute2 here is the second opinion on every field."""

from __future__ import annotations

import socket
import struct
from ipaddress import IPv4Address, IPv6Address, ip_address

from hypothesis import given
from hypothesis import strategies as st
from pyroute2.netlink.generic.ipvs import ipvsmsg

from director.ipvs import genl, ops
from director.ipvs.model import (
    Destination,
    Forward,
    IPAddress,
    Protocol,
    Service,
    ServiceFlags,
    ServiceKey,
    TunnelFlags,
    TunnelType,
)

FAMILY_ID = 0x22
CMD = {"AddService": 1, "EditService": 2, "AddDestination": 5, "EditDestination": 6}

addresses = st.one_of(
    st.builds(IPv4Address, st.integers(1, 2**32 - 2)),
    st.builds(IPv6Address, st.integers(1, 2**128 - 2)),
)
schedulers = st.sampled_from(
    ["rr", "wrr", "lc", "wlc", "lblc", "lblcr", "dh", "sh", "sed", "nq", "fo", "ovf", "mh"]
)
ports = st.integers(1, 65535)


@st.composite
def service_keys(draw: st.DrawFn, family: int | None = None) -> ServiceKey:
    address: IPAddress = draw(addresses)
    if family is not None:
        address = draw(
            st.builds(IPv4Address, st.integers(1, 2**32 - 2))
            if family == socket.AF_INET
            else st.builds(IPv6Address, st.integers(1, 2**128 - 2))
        )
    if draw(st.booleans()):
        fam = socket.AF_INET if address.version == 4 else socket.AF_INET6
        return ServiceKey.mark(draw(st.integers(1, 2**32 - 1)), fam)
    return ServiceKey.inet(draw(st.sampled_from(list(Protocol))), address, draw(ports))


@st.composite
def services(draw: st.DrawFn) -> Service:
    key = draw(service_keys())
    persistent = draw(st.booleans())
    flags = ServiceFlags.PERSISTENT if persistent else ServiceFlags.NONE
    flags |= draw(st.sampled_from([ServiceFlags.NONE, ServiceFlags.SCHED1, ServiceFlags.SCHED2]))
    return Service(
        key,
        scheduler=draw(schedulers),
        flags=flags,
        timeout=draw(st.integers(1, 86400)) if persistent else 0,
        pe_name=draw(st.sampled_from(["", "sip"])) if persistent else "",
    )


def decode(data: bytes) -> ipvsmsg:
    message = ipvsmsg(data)
    message.decode()
    return message


@given(services(), st.sampled_from([ops.AddService, ops.EditService]))
def test_service_requests_decode_the_same_in_pyroute2(
    service: Service, op: type[ops.AddService] | type[ops.EditService]
) -> None:
    message = decode(genl.frame(FAMILY_ID, 1, 1, genl.operation_body(op(service))))
    assert message["cmd"] == CMD[op.__name__]
    attrs = message.get_attr("IPVS_CMD_ATTR_SERVICE")
    key = service.key
    assert attrs.get_attr("IPVS_SVC_ATTR_AF") == key.family
    if key.is_fwmark:
        assert attrs.get_attr("IPVS_SVC_ATTR_FWMARK") == key.fwmark
        assert attrs.get_attr("IPVS_SVC_ATTR_PORT") is None
    else:
        assert key.protocol is not None
        assert attrs.get_attr("IPVS_SVC_ATTR_PROTOCOL") == key.protocol
        assert ip_address(attrs.get_attr("IPVS_SVC_ATTR_ADDR")) == key.address
        assert attrs.get_attr("IPVS_SVC_ATTR_PORT") == key.port
    assert attrs.get_attr("IPVS_SVC_ATTR_SCHED_NAME") == service.scheduler
    assert attrs.get_attr("IPVS_SVC_ATTR_FLAGS")["flags"] == int(service.flags)
    assert attrs.get_attr("IPVS_SVC_ATTR_TIMEOUT") == service.timeout
    pe = attrs.get_attr("IPVS_SVC_ATTR_PE_NAME")
    assert (pe or "") == service.pe_name


@st.composite
def destinations(draw: st.DrawFn, family: int) -> Destination:
    address = draw(
        st.builds(IPv4Address, st.integers(1, 2**32 - 2))
        if family == socket.AF_INET
        else st.builds(IPv6Address, st.integers(1, 2**128 - 2))
    )
    forward = draw(st.sampled_from([Forward.MASQ, Forward.ROUTE, Forward.TUNNEL]))
    upper = draw(st.integers(0, 2**31 - 1))
    return Destination(
        address,
        draw(ports),
        forward=forward,
        weight=draw(st.integers(0, 65535)),
        u_threshold=upper,
        l_threshold=draw(st.integers(0, upper)),
        tun_type=draw(st.sampled_from(list(TunnelType)))
        if forward is Forward.TUNNEL
        else TunnelType.IPIP,
        tun_port=draw(ports) if forward is Forward.TUNNEL else 0,
        tun_flags=draw(st.sampled_from(list(TunnelFlags)))
        if forward is Forward.TUNNEL
        else TunnelFlags.NOCSUM,
    )


@given(st.data(), st.sampled_from([ops.AddDestination, ops.EditDestination]))
def test_destination_requests_decode_the_same_in_pyroute2(
    data: st.DataObject, op: type[ops.AddDestination] | type[ops.EditDestination]
) -> None:
    key = data.draw(service_keys())
    dest = data.draw(destinations(key.family))
    if key.is_fwmark and dest.port == 0:
        return
    message = decode(genl.frame(FAMILY_ID, 1, 1, genl.operation_body(op(key, dest))))
    assert message["cmd"] == CMD[op.__name__]
    attrs = message.get_attr("IPVS_CMD_ATTR_DEST")
    assert ip_address(attrs.get_attr("IPVS_DEST_ATTR_ADDR")) == dest.address
    assert attrs.get_attr("IPVS_DEST_ATTR_ADDR_FAMILY") == dest.family
    assert attrs.get_attr("IPVS_DEST_ATTR_PORT") == dest.port
    assert attrs.get_attr("IPVS_DEST_ATTR_FWD_METHOD") == dest.forward
    assert attrs.get_attr("IPVS_DEST_ATTR_WEIGHT") == dest.weight
    assert attrs.get_attr("IPVS_DEST_ATTR_U_THRESH") == dest.u_threshold
    assert attrs.get_attr("IPVS_DEST_ATTR_L_THRESH") == dest.l_threshold
    if dest.forward is Forward.TUNNEL:
        assert attrs.get_attr("IPVS_DEST_ATTR_TUN_TYPE") == dest.tun_type
        assert attrs.get_attr("IPVS_DEST_ATTR_TUN_FLAGS") == dest.tun_flags
        # The kernel reads TUN_PORT with nla_get_be16; pyroute2 0.9.7 declares
        # it a host-order uint16, so its value is the byte-swapped port.
        swapped = struct.unpack("<H", struct.pack(">H", dest.tun_port))[0]
        assert attrs.get_attr("IPVS_DEST_ATTR_TUN_PORT") == swapped
    service = message.get_attr("IPVS_CMD_ATTR_SERVICE")
    if key.is_fwmark:
        assert service.get_attr("IPVS_SVC_ATTR_FWMARK") == key.fwmark
    else:
        assert ip_address(service.get_attr("IPVS_SVC_ATTR_ADDR")) == key.address
        assert service.get_attr("IPVS_SVC_ATTR_PORT") == key.port
