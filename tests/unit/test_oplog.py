"""Operations as log fields: a started sync daemon logs every setting it was
started with, and leaves out those left to the kernel's defaults."""

from __future__ import annotations

from ipaddress import ip_address

from director.ipvs.model import Protocol, Service, ServiceFlags, ServiceKey, SyncDaemon, SyncState
from director.ipvs.oplog import describe_operation
from director.ipvs.ops import AddService, EditService, StartDaemon, StopDaemon


def test_a_started_sync_daemon_logs_its_settings() -> None:
    daemon = SyncDaemon(
        SyncState.BACKUP,
        "eth1",
        syncid=9,
        sync_maxlen=1500,
        mcast_group=ip_address("ff02::81"),
        mcast_port=8849,
        mcast_ttl=3,
    )
    assert describe_operation(StartDaemon(daemon)) == {
        "op": "start_daemon",
        "state": "BACKUP",
        "mcast_ifn": "eth1",
        "syncid": 9,
        "sync_maxlen": 1500,
        "mcast_group": "ff02::81",
        "mcast_port": 8849,
        "mcast_ttl": 3,
    }


def test_kernel_defaults_are_left_out() -> None:
    assert describe_operation(StartDaemon(SyncDaemon(SyncState.MASTER, "eth0"))) == {
        "op": "start_daemon",
        "state": "MASTER",
        "mcast_ifn": "eth0",
        "syncid": 0,
    }


def test_a_stopped_sync_daemon_names_its_role() -> None:
    assert describe_operation(StopDaemon(SyncState.MASTER)) == {
        "op": "stop_daemon",
        "state": "MASTER",
    }


def test_a_services_flags_are_logged_by_their_ipvsadm_names() -> None:
    """Before, `flags` was the kernel's number (edit_service ... flags=19):
    the operator had to decode IP_VS_SVC_F_* by hand (stop 27's trial)."""
    key = ServiceKey.inet(Protocol.TCP, "10.0.0.1", 80)
    sh = Service(
        key,
        scheduler="sh",
        flags=ServiceFlags.PERSISTENT | ServiceFlags.HASHED | ServiceFlags.SCHED2,
        timeout=300,
    )
    assert describe_operation(EditService(sh))["flags"] == ["persistent", "sh-port"]
    rr = Service(key, scheduler="rr", flags=ServiceFlags.ONEPACKET | ServiceFlags.SCHED3)
    assert describe_operation(AddService(rr))["flags"] == ["ops", "flag-3"]
    assert describe_operation(AddService(Service(key)))["flags"] == []
