"""The file's values that runtime changes keep from the table: what a
reload cannot apply, and what status shows beside the running values.

A service or real server of the file that a runtime change edited
(directorctl -E, -e) differs from the file in the values that change set,
each worded as its change from the running value to the file's (`weight 9
-> 4`, config.model's `service_changes` and `real_server_changes`); one
that a runtime change deleted (-D, -d) is hidden, the file's entry kept
out of the table (docs/runtime.md). Every reload names each of them (a `!`
line), not only those whose file entry it changed: the file is not in
effect until they are dropped.
"""

from __future__ import annotations

from dataclasses import dataclass

from director.config import Config, RealServerId
from director.config.model import real_server_changes, service_changes, value_text
from director.ipvs.model import ServiceKey, endpoint
from director.runtime import RuntimeLayer, describe_service

__all__ = ["TIMEOUTS", "Override", "overrides"]

TIMEOUTS = "[ipvs] timeouts"  # the setting a runtime --set keeps from applying


@dataclass(frozen=True)
class Override:
    """One service (a ServiceKey) or real server (a RealServerId) of the
    file kept from the table by a runtime change: `changes` from the
    running values to the file's, or none and `deleted`."""

    what: ServiceKey | RealServerId | str  # a str: a setting, "[ipvs] timeouts"
    changes: tuple[str, ...] = ()
    deleted: bool = False

    def text(self) -> str:
        """In words, with what drops the runtime change: 'real server
        tcp:10.0.0.1:80 10.0.1.3:80: weight 9 -> 4 in the file, not applied:
        edited at runtime (directorctl -e back to the file's values drops
        that)'."""
        what = self.what
        if isinstance(what, str):
            return (
                f"{what}: {', '.join(self.changes)} in the file, not applied: set at runtime"
                " (directorctl --set back to the file's values drops that)"
            )
        if isinstance(what, RealServerId):
            name = (
                f"real server {describe_service(what.service)} {endpoint(what.address, what.port)}"
            )
            undo = "-a" if self.deleted else "-e"
        else:
            name = f"service {describe_service(what)}"
            undo = "-A" if self.deleted else "-E"
        if self.deleted:
            return (
                f"{name}: in the file, not applied: deleted at runtime"
                f" (directorctl {undo} brings it back with the file's settings)"
            )
        return (
            f"{name}: {', '.join(self.changes)} in the file, not applied: edited at runtime"
            f" (directorctl {undo} back to the file's values drops that)"
        )


def overrides(file: Config, effective: Config, layer: RuntimeLayer) -> tuple[Override, ...]:
    """The runtime layer's timeouts (`--set`) where the file sets others,
    and its edits and deletions of services and real servers that the
    file (`file`, as read) has, against the running
    values (`effective`: the file with the layer over it), in the file's
    order of services and each service's real servers by address and
    port. O(the layer's entries) beside one look at each service."""
    if layer.empty:
        return ()
    found: list[Override] = []
    timeouts = file.ipvs.timeouts
    if layer.timeouts is not None and timeouts is not None:
        running = effective.ipvs.timeouts
        if running != timeouts:
            change = f"{value_text(running)} -> {value_text(timeouts)}"
            found.append(Override(TIMEOUTS, (change,)))
    services = {vs.key: vs for vs in effective.virtual_servers}
    edited_servers = layer.by_service
    deleted_servers: dict[ServiceKey, list[RealServerId]] = {}
    for rid in layer.deleted_real_servers:
        deleted_servers.setdefault(rid.service, []).append(rid)
    for vs in file.virtual_servers:
        key = vs.key
        now = services.get(key)
        if now is None:
            if key in layer.deleted_services:
                found.append(Override(key, deleted=True))
            continue
        if key in layer.services:
            changes = service_changes(now, vs)
            if changes:
                found.append(Override(key, changes))
        ids = [*edited_servers.get(key, ()), *deleted_servers.get(key, ())]
        if not ids:
            continue
        in_file, in_effect = vs.real_server_index, now.real_server_index
        for rid in sorted(ids, key=_address_order):
            rs = in_file.get(rid)
            if rs is None:
                continue  # added at runtime: no value of the file's
            running_rs = in_effect.get(rid)
            if running_rs is None:
                found.append(Override(rid, deleted=True))
            else:
                changes = real_server_changes(running_rs, rs)
                if changes:
                    found.append(Override(rid, changes))
    return tuple(found)


def _address_order(rid: RealServerId) -> tuple[int, int, int]:
    return rid.address.version, int(rid.address), rid.port
