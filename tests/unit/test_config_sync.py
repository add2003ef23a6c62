"""[ipvs.sync] in the config: the keys, the kernel's ranges, and an error
naming the key for each bad value."""

from __future__ import annotations

from ipaddress import ip_address

import pytest

from director.config import ConfigError, parse_config
from director.config.model import SyncRole, SyncSettings
from director.ipvs.facts import NO_MODULES
from director.ipvs.model import SyncDaemon, SyncState


def sync(body: str) -> SyncSettings | None:
    return parse_config("[ipvs.sync]\n" + body, "t.toml", NO_MODULES).ipvs.sync


def errors(body: str) -> list[str]:
    with pytest.raises(ConfigError) as info:
        sync(body)
    return info.value.errors


BASE = 'role = "master"\ninterface = "eth1"\nsyncid = 7\n'


def test_no_section_means_no_sync_daemon() -> None:
    assert parse_config("", "t.toml", NO_MODULES).ipvs.sync is None


def test_the_required_keys_alone_leave_the_rest_to_the_kernel() -> None:
    settings = sync(BASE)
    assert settings == SyncSettings(SyncRole.MASTER, "eth1", 7)
    assert settings.daemons() == {SyncState.MASTER: SyncDaemon(SyncState.MASTER, "eth1", 7)}


def test_every_key_set() -> None:
    settings = sync(
        'role = "both"\ninterface = "bond0.12"\nsyncid = 0\ngroup = "ff02::81"\n'
        "port = 8850\nttl = 3\nmaxlen = 65487\n"
    )
    assert settings == SyncSettings(
        SyncRole.BOTH, "bond0.12", 0, ip_address("ff02::81"), 8850, 3, 65487
    )
    assert set(settings.daemons()) == {SyncState.MASTER, SyncState.BACKUP}
    backup = settings.daemons()[SyncState.BACKUP]
    assert (backup.mcast_group, backup.mcast_port, backup.mcast_ttl) == (
        ip_address("ff02::81"),
        8850,
        3,
    )


def test_missing_keys_are_named() -> None:
    assert errors("") == [
        "ipvs.sync.role: required (master, backup, both)",
        "ipvs.sync.interface: required: the interface sync messages use",
        "ipvs.sync.syncid: required (0..255; 0: a backup takes every master's)",
    ]


@pytest.mark.parametrize(
    ("line", "error"),
    [
        ('role = "slave"', 'ipvs.sync.role: must be one of master, backup, both: "slave"'),
        ("role = 1", "ipvs.sync.role: expected a string, got an integer: 1"),
        (
            'interface = "a-very-long-name0"',
            "ipvs.sync.interface: longer than an interface name may be (15 bytes): "
            '"a-very-long-name0"',
        ),
        (
            'interface = "eth0:1"',
            'ipvs.sync.interface: not an interface name (no "/", ":", spaces, "." or ".."): '
            '"eth0:1"',
        ),
        ('interface = ""', 'ipvs.sync.interface: empty: ""'),
        ("syncid = 256", "ipvs.sync.syncid: must be between 0 and 255: 256"),
        ("syncid = -1", "ipvs.sync.syncid: must be between 0 and 255: -1"),
        (
            'group = "10.0.0.1"',
            'ipvs.sync.group: not a multicast address (224.0.0.0/4, ff00::/8): "10.0.0.1"',
        ),
        (
            'group = "2001:db8::1"',
            'ipvs.sync.group: not a multicast address (224.0.0.0/4, ff00::/8): "2001:db8::1"',
        ),
        ('group = "sync.example"', 'ipvs.sync.group: not an IP address: "sync.example"'),
        ("port = 0", "ipvs.sync.port: must be between 1 and 65535: 0"),
        ("ttl = 256", "ipvs.sync.ttl: must be between 1 and 255: 256"),
        ("ttl = 0", "ipvs.sync.ttl: must be between 1 and 255: 0"),
        ("maxlen = 0", "ipvs.sync.maxlen: must be between 1 and 65535: 0"),
        (
            "maxlen = 65508",
            "ipvs.sync.maxlen: must be between 1 and 65507 for role master (with this group): 65508",
        ),
        ("bogus = 1", "ipvs.sync.bogus: unknown key"),
    ],
)
def test_a_bad_value_is_named(line: str, error: str) -> None:
    key = line.split(" ", 1)[0]
    body = "".join(f"{x}\n" for x in BASE.splitlines() if not x.startswith(key + " ")) + line
    assert errors(body) == [error]


def test_a_backups_maxlen_is_at_least_1024_and_an_ipv6_groups_at_most_65487() -> None:
    assert sync(BASE + "maxlen = 100") == SyncSettings(SyncRole.MASTER, "eth1", 7, maxlen=100)
    backup = BASE.replace("master", "backup")
    assert errors(backup + "maxlen = 1023") == [
        "ipvs.sync.maxlen: must be between 1024 and 65507 for role backup "
        "(a backup's is at least 1024): 1023"
    ]
    both = BASE.replace("master", "both")
    assert errors(both + 'group = "ff02::81"\nmaxlen = 65488') == [
        "ipvs.sync.maxlen: must be between 1024 and 65487 for role both (with this group): 65488"
    ]
    assert sync(both + "maxlen = 1024") is not None


def test_the_section_must_be_a_table() -> None:
    with pytest.raises(ConfigError) as info:
        parse_config("[ipvs]\nsync = true\n", "t.toml", NO_MODULES)
    assert info.value.errors == ["ipvs.sync: expected a table, got a boolean: true"]


def test_the_example_config_has_a_sync_section_that_parses() -> None:
    from pathlib import Path

    example = Path(__file__).resolve().parents[2] / "conf" / "director-sync.toml"
    config = parse_config(example.read_text(encoding="utf-8"), str(example), NO_MODULES)
    assert config.ipvs.sync is not None and config.ipvs.sync.role is SyncRole.MASTER
