"""Operations as log fields: a started sync daemon logs every setting it was
started with, and leaves out those left to the kernel's defaults."""

from __future__ import annotations

from ipaddress import ip_address

from director.ipvs.model import (
    Destination,
    DestinationEntry,
    Forward,
    Protocol,
    Service,
    ServiceEntry,
    ServiceFlags,
    ServiceKey,
    SyncDaemon,
    SyncState,
)
from director.ipvs.oplog import brief_operation, describe_operation, operation_lines
from director.ipvs.ops import (
    AddDestination,
    AddService,
    DeleteDestination,
    EditDestination,
    EditService,
    StartDaemon,
    StopDaemon,
)


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


def test_an_operation_in_brief_is_its_fields_on_one_line() -> None:
    """A drift repair's warning spells out its operations so (trial: it
    named the services only, not what was found in them)."""
    key = ServiceKey.inet(Protocol.TCP, "10.0.0.1", 80)
    sh = Service(key, scheduler="sh", flags=ServiceFlags.PERSISTENT | ServiceFlags.SCHED2, timeout=300)  # fmt: skip
    assert brief_operation(EditService(sh)) == (
        "edit_service TCP 10.0.0.1:80 scheduler=sh flags=persistent,sh-port timeout=300"
    )
    server = Destination(ip_address("10.0.0.2"), 8080, Forward.MASQ, 0)
    assert brief_operation(AddDestination(key, server)) == (
        "add_destination TCP 10.0.0.1:80 10.0.0.2:8080 forward=masq weight=0"
    )
    assert brief_operation(DeleteDestination(key, ip_address("10.0.0.2"), 8080)) == (
        "delete_destination TCP 10.0.0.1:80 10.0.0.2:8080"
    )
    assert brief_operation(StopDaemon(SyncState.BACKUP)) == "stop_daemon state=BACKUP"


def test_an_edit_in_brief_says_what_was_found() -> None:
    """Trial (stop 31): a repaired weight gave the weight put back, not
    the one found ("weight=2" for a hand-set 77), and a repaired scheduler
    likewise. With the kernel's entry as found, an edit gives the fields it
    changes as found->wanted; with nothing to compare (no entry, or a
    change the fields do not show: a threshold), all its fields."""
    key = ServiceKey.inet(Protocol.TCP, "10.0.0.1", 80)
    wanted = Destination(ip_address("10.0.0.2"), 8080, Forward.MASQ, 2)
    hand_set = Destination(ip_address("10.0.0.2"), 8080, Forward.MASQ, 77)
    other = DestinationEntry(Destination(ip_address("10.0.0.3"), 8080, Forward.MASQ, 9))
    found = ServiceEntry(Service(key, scheduler="rr"), (other, DestinationEntry(hand_set)))
    edit = EditDestination(key, wanted)
    assert brief_operation(edit, found) == (
        "edit_destination TCP 10.0.0.1:80 10.0.0.2:8080 weight=77->2"
    )
    moved = Destination(ip_address("10.0.0.2"), 8080, Forward.ROUTE, 1)
    found = ServiceEntry(Service(key), (DestinationEntry(moved),))
    assert brief_operation(edit, found) == (
        "edit_destination TCP 10.0.0.1:80 10.0.0.2:8080 forward=route->masq weight=1->2"
    )
    wrr = Service(key, scheduler="wrr")
    assert (
        brief_operation(EditService(wrr), ServiceEntry(Service(key, scheduler="rr")))
        == "edit_service TCP 10.0.0.1:80 scheduler=rr->wrr"
    )
    sh = Service(key, scheduler="sh", flags=ServiceFlags.SCHED2)
    assert brief_operation(EditService(sh), ServiceEntry(Service(key, scheduler="sh"))) == (
        "edit_service TCP 10.0.0.1:80 flags=none->sh-port"
    )
    assert brief_operation(edit) == (
        "edit_destination TCP 10.0.0.1:80 10.0.0.2:8080 forward=masq weight=2"
    )
    thresholds = ServiceEntry(Service(key), (DestinationEntry(wanted),))
    assert brief_operation(edit, thresholds) == (
        "edit_destination TCP 10.0.0.1:80 10.0.0.2:8080 forward=masq weight=2"
    )


def test_a_run_of_like_destination_operations_is_one_line() -> None:
    """A start's fill at 10,000 real servers wrote 10,100 ipvs_op lines,
    6-8 s of a start in the VM (stop 25): a run of like operations on one
    service's destinations is one ipvs_ops line, in the operations' order."""
    web = ServiceKey.inet(Protocol.TCP, "10.0.0.1", 80)
    mail = ServiceKey.inet(Protocol.TCP, "10.0.0.1", 25)

    def dest(last: int, weight: int = 1, forward: Forward = Forward.ROUTE) -> Destination:
        return Destination(ip_address(f"10.0.1.{last}"), 80, forward, weight)

    ops = [
        AddService(Service(web)),
        AddDestination(web, dest(1)),
        AddDestination(web, dest(2)),
        AddDestination(web, dest(3)),
        AddDestination(web, dest(4, weight=5)),  # another weight: a line of its own
        AddDestination(mail, dest(5)),  # another service
        AddDestination(mail, dest(6, forward=Forward.MASQ)),  # another forwarding method
        DeleteDestination(mail, ip_address("10.0.1.7"), 80),
        DeleteDestination(mail, ip_address("10.0.1.8"), 80),
        EditDestination(mail, dest(9)),
    ]
    lines = list(operation_lines(ops))
    assert [(event, fields["op"], fields.get("rs")) for event, fields in lines] == [
        ("ipvs_op", "add_service", None),
        ("ipvs_ops", "add_destination", ["10.0.1.1:80", "10.0.1.2:80", "10.0.1.3:80"]),
        ("ipvs_op", "add_destination", "10.0.1.4:80"),
        ("ipvs_op", "add_destination", "10.0.1.5:80"),
        ("ipvs_op", "add_destination", "10.0.1.6:80"),
        ("ipvs_ops", "delete_destination", ["10.0.1.7:80", "10.0.1.8:80"]),
        ("ipvs_op", "edit_destination", "10.0.1.9:80"),
    ]
    assert lines[1][1] == {
        "op": "add_destination",
        "vs": "TCP 10.0.0.1:80",
        "rs": ["10.0.1.1:80", "10.0.1.2:80", "10.0.1.3:80"],
        "forward": "route",
        "weight": 1,
        "count": 3,
    }
    assert lines[5][1] == {
        "op": "delete_destination",
        "vs": "TCP 10.0.0.1:25",
        "rs": ["10.0.1.7:80", "10.0.1.8:80"],
        "count": 2,
    }
    assert list(operation_lines([])) == []
