"""ipvsadm 1.31's command line, parsed into a Command without doing anything.

parse() accepts exactly what ipvsadm accepts and fails with exactly its
message and exit status (ParseError), including its option/command
compatibility table. parse_restore() reads `ipvsadm -R` input.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from ipaddress import IPv4Address

from director.ipvs import ops
from director.ipvs.facts import (
    IP_VS_PENAME_MAXLEN,
    IP_VS_SCHEDNAME_MAXLEN,
    PERSISTENCE_TIMEOUT_MAX,
    PROTOCOL_NAMES,
)
from director.ipvs.model import (
    AF_INET,
    AF_INET6,
    DEFAULT_SCHEDULER,
    SCHEDULER_FLAGS,
    Destination,
    Forward,
    IPAddress,
    Protocol,
    Service,
    ServiceFlags,
    ServiceKey,
    SyncDaemon,
    SyncState,
    Timeouts,
    TunnelFlags,
    TunnelType,
)
from director.ipvsadm.commands import (
    Apply,
    Command,
    Help,
    ListConnections,
    ListDaemons,
    ListFormat,
    ListServices,
    ListTimeouts,
    Restore,
    Save,
    Version,
)
from director.ipvsadm.errors import ParseError, fail, try_help
from director.ipvsadm.libc import atoi, inet_aton, inet_pton4, inet_pton6, string_to_number
from director.ipvsadm.names import NUMERIC, Names
from director.ipvsadm.popt import Arg, Option, PoptError, Scanner

MAX_TIMEOUT = PERSISTENCE_TIMEOUT_MAX
SCHED_NAME_MAX = IP_VS_SCHEDNAME_MAXLEN - 1
PE_NAME_MAX = IP_VS_PENAME_MAXLEN
IFNAME_MAX = 15  # IP_VS_IFNAME_MAXLEN - 1
DEFAULT_MCAST_IFN = "eth0"
INT_MAX = 2**31 - 1
# libipvs's IPVS_SVC_PERSISTENT_TIMEOUT, what a bare -p gives (not the
# kernel's 300).
BARE_PERSISTENT_TIMEOUT = 360

OPTIONS = (
    Option("add-service", "A", Arg.NONE, "A"),
    Option("edit-service", "E", Arg.NONE, "E"),
    Option("delete-service", "D", Arg.NONE, "D"),
    Option("clear", "C", Arg.NONE, "C"),
    Option("list", "L", Arg.NONE, "L"),
    Option("list", "l", Arg.NONE, "L"),
    Option("zero", "Z", Arg.NONE, "Z"),
    Option("add-server", "a", Arg.NONE, "a"),
    Option("edit-server", "e", Arg.NONE, "e"),
    Option("delete-server", "d", Arg.NONE, "d"),
    Option("set", "", Arg.NONE, "set"),
    Option("help", "h", Arg.NONE, "h"),
    Option("version", "v", Arg.NONE, "v"),
    Option("restore", "R", Arg.NONE, "R"),
    Option("save", "S", Arg.NONE, "S"),
    Option("start-daemon", "", Arg.REQUIRED, "start-daemon"),
    Option("stop-daemon", "", Arg.REQUIRED, "stop-daemon"),
    Option("tcp-service", "t", Arg.REQUIRED, "t"),
    Option("udp-service", "u", Arg.REQUIRED, "u"),
    Option("sctp-service", "", Arg.REQUIRED, "sctp-service"),
    Option("fwmark-service", "f", Arg.REQUIRED, "f"),
    Option("scheduler", "s", Arg.REQUIRED, "s"),
    Option("persistent", "p", Arg.OPTIONAL, "p"),
    Option("netmask", "M", Arg.REQUIRED, "M"),
    Option("real-server", "r", Arg.REQUIRED, "r"),
    Option("masquerading", "m", Arg.NONE, "m"),
    Option("ipip", "i", Arg.NONE, "i"),
    Option("gatewaying", "g", Arg.NONE, "g"),
    Option("weight", "w", Arg.REQUIRED, "w"),
    Option("u-threshold", "x", Arg.REQUIRED, "x"),
    Option("l-threshold", "y", Arg.REQUIRED, "y"),
    Option("numeric", "n", Arg.NONE, "n"),
    Option("connection", "c", Arg.NONE, "c"),
    Option("mcast-interface", "", Arg.REQUIRED, "mcast-interface"),
    Option("syncid", "", Arg.REQUIRED, "syncid"),
    Option("timeout", "", Arg.NONE, "timeout"),
    Option("daemon", "", Arg.NONE, "daemon"),
    Option("stats", "", Arg.NONE, "stats"),
    Option("rate", "", Arg.NONE, "rate"),
    Option("thresholds", "", Arg.NONE, "thresholds"),
    Option("persistent-conn", "", Arg.NONE, "persistent-conn"),
    Option("nosort", "", Arg.NONE, "nosort"),
    Option("sort", "", Arg.NONE, "sort"),
    Option("exact", "X", Arg.NONE, "X"),
    Option("ipv6", "6", Arg.NONE, "6"),
    Option("ops", "o", Arg.NONE, "o"),
    Option("pe", "", Arg.REQUIRED, "pe"),
    Option("sched-flags", "b", Arg.REQUIRED, "b"),
    Option("mcast-group", "", Arg.REQUIRED, "mcast-group"),
    Option("mcast-port", "", Arg.REQUIRED, "mcast-port"),
    Option("mcast-ttl", "", Arg.REQUIRED, "mcast-ttl"),
    Option("sync-maxlen", "", Arg.REQUIRED, "sync-maxlen"),
    Option("tun-info", "", Arg.NONE, "tun-info"),
    Option("tun-type", "", Arg.REQUIRED, "tun-type"),
    Option("tun-port", "", Arg.REQUIRED, "tun-port"),
    Option("tun-nocsum", "", Arg.NONE, "tun-nocsum"),
    Option("tun-csum", "", Arg.NONE, "tun-csum"),
    Option("tun-remcsum", "", Arg.NONE, "tun-remcsum"),
)


class Cmd(enum.IntEnum):
    ADD = 0
    EDIT = 1
    DEL = 2
    FLUSH = 3
    LIST = 4
    ADDDEST = 5
    DELDEST = 6
    EDITDEST = 7
    TIMEOUT = 8
    STARTDAEMON = 9
    STOPDAEMON = 10
    RESTORE = 11
    SAVE = 12
    ZERO = 13


CMD_NAMES = (
    "add-service",
    "edit-service",
    "delete-service",
    "flush",
    "list",
    "add-server",
    "delete-server",
    "edit-server",
    "set",
    "start-daemon",
    "stop-daemon",
    "restore",
    "save",
    "zero",
)

# ipvsadm's optnames[], in the column order of the table below.
OPT_NAMES = (
    "numeric",
    "connection",
    "service-address",
    "scheduler",
    "persistent",
    "netmask",
    "real-server",
    "forwarding-method",
    "weight",
    "u-threshold",
    "l-threshold",
    "mcast-interface",
    "timeout",
    "daemon",
    "stats",
    "rate",
    "thresholds",
    "persistent-conn",
    "nosort",
    "syncid",
    "exact",
    "ops",
    "pe",
    "sched-flags",
    "mcast-group",
    "mcast-port",
    "mcast-ttl",
    "sync-maxlen",
    "tun-info",
    "tun-type",
    "tun-port",
    "tun-nocsum",
    "tun-csum",
    "tun-remcsum",
)
_COLUMN = {name: index for index, name in enumerate(OPT_NAMES)}

# commands_v_options: '+' compulsory, 'x' illegal, '1' at most one of, ' ' optional.
#   -n -c svc -s -p -M -r fwd -w -x -y mc tot dmn st rt thr pc srt sid ex ops pe -b grp
#   port ttl size tinf type tprt nocs csum remc
COMMANDS_V_OPTIONS = (
    "xx+" + "   " + "x" * 15 + "   " + "x" * 10,  # ADD
    "xx+" + "   " + "x" * 15 + "   " + "x" * 10,  # EDIT
    "xx+" + "x" * 31,  # DEL
    "x" * 34,  # FLUSH
    " 11" + "x" * 9 + "11" + " " * 7 + "x" * 7 + " " + "x" * 5,  # LIST
    "xx+xxx+" + " " * 4 + "x" * 18 + " " * 5,  # ADDDEST
    "xx+xxx+" + "x" * 27,  # DELDEST
    "xx+xxx+" + " " * 4 + "x" * 18 + " " * 5,  # EDITDEST
    "x" * 34,  # TIMEOUT
    "x" * 11 + " " + "x" * 7 + " " + "x" * 4 + " " * 4 + "x" * 6,  # STARTDAEMON
    "x" * 19 + " " + "x" * 14,  # STOPDAEMON
    "x" * 34,  # RESTORE
    " " + "x" * 33,  # SAVE
    "xx " + "x" * 31,  # ZERO
)

_SERVICE_TAGS = {"t": Protocol.TCP, "u": Protocol.UDP, "sctp-service": Protocol.SCTP}
_PROTOCOL_NAMES = PROTOCOL_NAMES
_FORMAT_TAGS = {
    "n": "numeric",
    "stats": "stats",
    "rate": "rate",
    "thresholds": "thresholds",
    "persistent-conn": "persistent_conn",
    "nosort": "nosort",
    "X": "exact",
    "tun-info": "tun_info",
}
_FIRST_COMMANDS = {
    "A": Cmd.ADD,
    "E": Cmd.EDIT,
    "D": Cmd.DEL,
    "a": Cmd.ADDDEST,
    "e": Cmd.EDITDEST,
    "d": Cmd.DELDEST,
    "C": Cmd.FLUSH,
    "L": Cmd.LIST,
    "Z": Cmd.ZERO,
    "set": Cmd.TIMEOUT,
    "R": Cmd.RESTORE,
    "S": Cmd.SAVE,
    "start-daemon": Cmd.STARTDAEMON,
    "stop-daemon": Cmd.STOPDAEMON,
}
_OPTION_COLUMNS = {
    "t": "service-address",
    "u": "service-address",
    "sctp-service": "service-address",
    "f": "service-address",
    "s": "scheduler",
    "p": "persistent",
    "M": "netmask",
    "r": "real-server",
    "i": "forwarding-method",
    "g": "forwarding-method",
    "m": "forwarding-method",
    "w": "weight",
    "x": "u-threshold",
    "y": "l-threshold",
    "c": "connection",
    "n": "numeric",
    "mcast-interface": "mcast-interface",
    "syncid": "syncid",
    "timeout": "timeout",
    "daemon": "daemon",
    "stats": "stats",
    "rate": "rate",
    "thresholds": "thresholds",
    "persistent-conn": "persistent-conn",
    "nosort": "nosort",
    "X": "exact",
    "o": "ops",
    "pe": "pe",
    "b": "sched-flags",
    "mcast-group": "mcast-group",
    "mcast-port": "mcast-port",
    "mcast-ttl": "mcast-ttl",
    "sync-maxlen": "sync-maxlen",
    "tun-info": "tun-info",
    "tun-type": "tun-type",
    "tun-port": "tun-port",
    "tun-nocsum": "tun-nocsum",
    "tun-csum": "tun-csum",
    "tun-remcsum": "tun-remcsum",
}
_TUNNEL_NAMES = ("ipip", "gue", "gre")
_TUNNEL_OPTIONS = ("tun-port", "tun-nocsum", "tun-csum", "tun-remcsum")
# tunnel_types_v_options, rows ipip, gue, gre
_TUNNEL_V_OPTIONS = ("xxxx", "+111", "x11x")
_SERVICE_ADDR = 1
_SERVICE_PORT = 2


@dataclass
class _Endpoint:
    """The address part of ipvsadm's ipvs_service_t / ipvs_dest_t."""

    family: int = 0
    address: IPAddress | None = None
    port: int = 0
    netmask: int = 0xFFFFFFFF


@dataclass
class _Entry:
    """ipvsadm's struct ipvs_command_entry while argv is being read."""

    cmd: Cmd | None = None
    options: set[str] = field(default_factory=set)
    format: dict[str, bool] = field(default_factory=dict)
    protocol: Protocol | None = None
    service: _Endpoint = field(default_factory=_Endpoint)
    fwmark: int = 0
    scheduler: str = ""
    flags: ServiceFlags = ServiceFlags.NONE
    timeout: int = 0
    pe_name: str = ""
    sched_flags_arg: str = ""
    dest: _Endpoint = field(default_factory=_Endpoint)
    forward: Forward = Forward.ROUTE
    weight: int = 1
    u_threshold: int = 0
    l_threshold: int = 0
    tun_type: TunnelType = TunnelType.IPIP
    tun_port: int = 0
    tun_flags: TunnelFlags = TunnelFlags.NOCSUM
    daemon_state: SyncState = SyncState.NONE
    mcast_ifn: str = ""
    syncid: int = 0
    sync_maxlen: int = 0
    mcast_group: IPAddress | None = None
    mcast_port: int = 0
    mcast_ttl: int = 0
    timeouts: Timeouts = field(default_factory=Timeouts)

    def set_option(self, column: str) -> None:
        if column in self.options:
            raise fail(f"multiple '{column}' options specified")
        self.options.add(column)


def parse(argv: Sequence[str], *, program: str = "ipvsadm", names: Names = NUMERIC) -> Command:
    """The Command for ipvsadm's arguments `argv` (without the program name).

    Raises ParseError with ipvsadm's message and exit status. `names`
    resolves host and service names (by default none resolve, as on a host
    without a resolver); `program` is argv[0] as it appears in messages.
    """
    return _parse([program, *argv], names, reading_stdin=False)


def parse_restore(
    text: str, *, program: str = "ipvsadm", names: Names = NUMERIC
) -> list[Command | ParseError]:
    """`ipvsadm -R` input, one entry per command line it would run.

    ipvsadm runs each line as it reads it. An entry that is a ParseError with
    `fatal` set ends the restore there with its exit status (the lines before
    stay applied); a non-fatal one is printed and the restore goes on, and the
    exit status of -R is that of its last line.
    """
    steps: list[Command | ParseError] = []
    canonical = _Canonical()
    for line in _restore_input(text):
        if isinstance(line, str):
            # A canonical line is taken whole; any other is split into words.
            command = canonical.line(line)
            if command is not None:
                steps.append(command)
                continue
            words = _words(line)
            if not words:
                continue
        else:
            words = line
        command = canonical.parse(words)
        if command is not None:
            steps.append(command)
            continue
        try:
            steps.append(_parse([program, *words], names, reading_stdin=True))
        except ParseError as error:
            steps.append(error)
            if error.fatal:
                break
    return steps


_BLANKS = re.compile("[ \t\r]+")


def restore_lines(text: str) -> list[list[str]]:
    """The argv (without program name) of each line ipvsadm -R runs, split as
    its config_stream_read() does with fscanf: words separated by blanks,
    every word "ipvsadm" dropped, "#" not special, and the input ending
    early when two blanks meet its end without a newline."""
    lines: list[list[str]] = []
    for line in _restore_input(text):
        words = _words(line) if isinstance(line, str) else line
        if words:
            lines.append(words)
    return lines


def _restore_input(text: str) -> Iterator[str | list[str]]:
    """restore_lines' input: each line up to the last newline, as text (the
    quirks are all at the input's end), then the argv of those after it,
    as the scanner reads them."""
    whole = text.rfind("\n") + 1
    if whole:
        yield from text[: whole - 1].split("\n")
    yield from _scan_lines(text[whole:])


def _words(line: str) -> list[str]:
    """One line's argv: its words, every word "ipvsadm" dropped."""
    return [w for w in _BLANKS.split(line) if w and w != "ipvsadm"]


def _scan_lines(text: str) -> list[list[str]]:
    """restore_lines, a character at a time, for any text."""
    lines: list[list[str]] = []
    pos, end = 0, len(text)
    blanks = " \t\r\n"
    while True:
        words: list[str] = []
        added = 0
        while True:
            if pos == end:
                if added:
                    lines.append(words)
                return lines
            if text[pos] in blanks:
                while pos < end and text[pos] in " \t\r":
                    pos += 1
                if pos == end:
                    return lines
                if text[pos] == "\n":
                    pos += 1
                    break
                continue
            start = pos
            while pos < end and text[pos] not in blanks:
                pos += 1
            if text[start:pos] != "ipvsadm":
                words.append(text[start:pos])
                added += 1
            if pos < end:
                pos += 1
                if text[pos - 1] == "\n":
                    break
        if words:
            lines.append(words)


_OCTET = r"(25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])"
_DOTTED_QUAD_PORT = re.compile(rf"{_OCTET}\.{_OCTET}\.{_OCTET}\.{_OCTET}:([1-9][0-9]{{0,4}})")
_WEIGHT = re.compile(r"0|[1-9][0-9]{0,9}")
# A canonical line exactly as -S writes it (one blank between words, none
# around): the words _Canonical.parse reads, without splitting the line.
_WORD = "([^ \t\r]+)"
_CANONICAL_ADD_SERVICE = re.compile(f"-A (-[tu]) {_WORD} -s {_WORD}")
_CANONICAL_ADD_SERVER = re.compile(f"-a (-[tu]) {_WORD} -r {_WORD} (-[mg]) -w {_WORD}")
_SCHEDULER = re.compile(f"[a-z]{{1,{SCHED_NAME_MAX}}}")
_CANONICAL_PROTOCOLS = {"-t": Protocol.TCP, "-u": Protocol.UDP}
_CANONICAL_FORWARDS = {"-m": Forward.MASQ, "-g": Forward.ROUTE}


class _Canonical:
    """The commonest lines of `ipvsadm -S` output, read without the option
    scanner: `-A -t|-u A.B.C.D:PORT -s SCHED` and `-a -t|-u A.B.C.D:PORT -r
    A.B.C.D:PORT -m|-g -w WEIGHT`, each word exactly as -S writes it (no
    leading zeros or signs, ports 1-65535, weights up to INT_MAX). parse()
    answers None for any other line, which the full parser then reads; for
    the lines it takes, the Command is the one the full parser gives (the
    unit tests compare the two). Endpoints repeat in a table: each is
    parsed once, and each service's key made once (the same object for
    every line of that service: the daemon's maps then find it by identity
    rather than comparing equal keys)."""

    def __init__(self) -> None:
        self._endpoints: dict[str, tuple[IPv4Address, int] | None] = {}
        self._keys: dict[tuple[Protocol, str], ServiceKey | None] = {}

    def line(self, line: str) -> Command | None:
        """parse() of a line's words, for a line with one blank between its
        words and none around them: split, it gives these very words (a word
        "ipvsadm", which the split drops, is no canonical endpoint, weight or
        scheduler, so such a line is None here as in parse)."""
        match = _CANONICAL_ADD_SERVER.fullmatch(line)
        if match is not None:
            protocol, service, real, forward, weight = match.groups()
            return self.parse(("-a", protocol, service, "-r", real, forward, "-w", weight))
        match = _CANONICAL_ADD_SERVICE.fullmatch(line)
        if match is not None:
            return self.parse(("-A", match[1], match[2], "-s", match[3]))
        return None

    def parse(self, words: Sequence[str]) -> Command | None:
        count = len(words)
        if count == 5:
            if words[0] != "-A" or words[3] != "-s":
                return None
            protocol = _CANONICAL_PROTOCOLS.get(words[1])
            key = None if protocol is None else self._key(protocol, words[2])
            if key is None or not _SCHEDULER.fullmatch(words[4]):
                return None
            return Apply(ops.AddService(Service(key, words[4], ServiceFlags.NONE, 0, 0xFFFFFFFF)))
        if count == 8:
            if words[0] != "-a" or words[3] != "-r" or words[6] != "-w":
                return None
            protocol = _CANONICAL_PROTOCOLS.get(words[1])
            forward = _CANONICAL_FORWARDS.get(words[5])
            key = None if protocol is None else self._key(protocol, words[2])
            real = self._endpoint(words[4])
            if key is None or forward is None or real is None:
                return None
            if not _WEIGHT.fullmatch(words[7]) or int(words[7]) > INT_MAX:
                return None
            # -g sends the service's port (ipvsadm's process_options)
            port = real[1] if forward is Forward.MASQ else key.port
            destination = Destination(real[0], port, forward, int(words[7]))
            return Apply(ops.AddDestination(key, destination))
        return None

    def _key(self, protocol: Protocol, word: str) -> ServiceKey | None:
        try:
            return self._keys[protocol, word]
        except KeyError:
            service = self._endpoint(word)
            key = None if service is None else ServiceKey(AF_INET, protocol, *service)
            self._keys[protocol, word] = key
            return key

    def _endpoint(self, word: str) -> tuple[IPv4Address, int] | None:
        if word in self._endpoints:
            return self._endpoints[word]
        found = None
        match = _DOTTED_QUAD_PORT.fullmatch(word)
        if match is not None and int(match[5]) <= 65535:
            a, b, c, d, port = map(int, match.groups())
            found = (IPv4Address(a << 24 | b << 16 | c << 8 | d), port)
        self._endpoints[word] = found
        return found


def _parse(argv: list[str], names: Names, *, reading_stdin: bool) -> Command:
    argv = [word.partition("\0")[0] for word in argv]
    program = argv[0]
    if len(argv) == 1:
        return ListServices()
    entry = _Entry()
    scanner = Scanner(argv, OPTIONS)
    try:
        first = scanner.next_option()
    except PoptError:
        raise try_help(program) from None
    if first is None:
        raise try_help(program)
    option, arg = first
    if option.tag == "h":
        return Help(program)
    if option.tag == "v":
        return Version()
    if option.tag not in _FIRST_COMMANDS:
        raise try_help(program)
    entry.cmd = _FIRST_COMMANDS[option.tag]
    if entry.cmd in (Cmd.STARTDAEMON, Cmd.STOPDAEMON):
        assert arg is not None
        states = {"master": SyncState.MASTER, "backup": SyncState.BACKUP}
        if arg not in states:
            raise fail(
                "illegal start-daemon parameter specified"
                if entry.cmd is Cmd.STARTDAEMON
                else "illegal start_daemon specified"
            )
        entry.daemon_state = states[arg]

    while True:
        try:
            item = scanner.next_option()
        except PoptError as error:
            raise ParseError(f"{scanner.bad_option}: {error.args[0]}\n", 255, fatal=False) from None
        if item is None:
            break
        option, arg = item
        if option.tag not in _OPTION_COLUMNS and option.tag != "6" and option.tag != "sort":
            raise fail(f"invalid option `{scanner.bad_option}'")
        _apply_option(entry, option.tag, arg, names)

    if entry.cmd is Cmd.TIMEOUT:
        values = [scanner.next_leftover() for _ in range(3)]
        if None in values:
            raise fail("--set option requires 3 timeout values")
        tcp, tcp_fin, udp = (_timeout(v, 0) for v in values)
        entry.timeouts = Timeouts(tcp, tcp_fin, udp)
    unexpected = scanner.next_leftover()
    if unexpected is not None:
        raise fail(f"unexpected argument {unexpected}")
    if entry.sched_flags_arg:
        entry.flags &= ~(ServiceFlags.SCHED1 | ServiceFlags.SCHED2 | ServiceFlags.SCHED3)
        entry.flags |= _sched_flags(entry.scheduler, entry.sched_flags_arg)

    _check_options(entry.cmd, entry.options)
    return _command(entry, program, reading_stdin)


def _apply_option(entry: _Entry, tag: str, arg: str | None, names: Names) -> None:
    if tag == "6":
        if not entry.fwmark:
            raise fail("-6 used before -f\n")
        entry.service.family = AF_INET6
        entry.service.netmask = 128
        return
    if tag == "sort":
        return
    entry.set_option(_OPTION_COLUMNS[tag])
    if tag in _FORMAT_TAGS:
        entry.format[_FORMAT_TAGS[tag]] = True
    value = arg if arg is not None else ""
    if tag in _SERVICE_TAGS:
        entry.protocol = _SERVICE_TAGS[tag]
        if not _parse_service(value, entry.service, entry.protocol, names) & _SERVICE_ADDR:
            raise fail("illegal virtual server address[:port] specified")
    elif tag == "f":
        entry.service.family = AF_INET
        entry.protocol = Protocol.TCP
        entry.fwmark = _fwmark(value)
    elif tag == "s":
        entry.scheduler = value[:SCHED_NAME_MAX]
    elif tag == "p":
        entry.flags |= ServiceFlags.PERSISTENT
        entry.timeout = _timeout(arg, 1)
    elif tag == "M":
        _netmask(entry.service, value, names)
    elif tag == "r":
        probe = _Endpoint(
            entry.service.family, entry.service.address, entry.service.port, entry.service.netmask
        )
        parsed = _parse_service(value, probe, entry.protocol, names)
        entry.dest = _Endpoint(probe.family, probe.address, probe.port)
        if not parsed & _SERVICE_ADDR:
            raise fail("illegal real server address[:port] specified")
        if parsed == _SERVICE_ADDR:
            entry.dest.port = entry.service.port
    elif tag in ("i", "g", "m"):
        entry.forward = {"i": Forward.TUNNEL, "g": Forward.ROUTE, "m": Forward.MASQ}[tag]
    elif tag == "w":
        entry.weight = _number(value, 0, INT_MAX, "illegal weight specified")
    elif tag == "x":
        entry.u_threshold = _number(value, 0, INT_MAX, "illegal u_threshold specified")
    elif tag == "y":
        entry.l_threshold = _number(value, 0, INT_MAX, "illegal l_threshold specified")
    elif tag == "mcast-interface":
        entry.mcast_ifn = value[:IFNAME_MAX]
    elif tag == "syncid":
        entry.syncid = _number(value, 0, 255, "illegal syncid specified")
    elif tag == "o":
        entry.flags |= ServiceFlags.ONEPACKET
    elif tag == "pe":
        entry.pe_name = value[:PE_NAME_MAX]
    elif tag == "b":
        entry.sched_flags_arg = value[:127]
    elif tag == "mcast-group":
        entry.mcast_group = _mcast_group(value)
    elif tag == "mcast-port":
        entry.mcast_port = _number(value, 1, 65535, "illegal mcast-port specified")
    elif tag == "mcast-ttl":
        entry.mcast_ttl = _number(value, 1, 255, "illegal mcast-ttl specified")
    elif tag == "sync-maxlen":
        entry.sync_maxlen = _number(value, 1, 65535 - 20 - 8, "illegal sync-maxlen specified")
    elif tag == "tun-type":
        if value not in _TUNNEL_NAMES:
            raise fail("illegal tunnel type specified")
        entry.tun_type = TunnelType(_TUNNEL_NAMES.index(value))
    elif tag == "tun-port":
        entry.tun_port = _number(value, 1, 65535, "illegal tunnel port specified")
    elif tag == "tun-csum":
        entry.tun_flags |= TunnelFlags.CSUM
    elif tag == "tun-remcsum":
        entry.tun_flags |= TunnelFlags.REMCSUM


def _number(text: str, low: int, high: int, message: str) -> int:
    value = string_to_number(text, low, high)
    if value is None:
        raise fail(message)
    return value


def _timeout(text: str | None, low: int) -> int:
    if text is None:
        return BARE_PERSISTENT_TIMEOUT
    value = string_to_number(text, low, MAX_TIMEOUT)
    if value is None:
        raise fail(f"invalid timeout value `{text}' specified")
    return value


def _fwmark(text: str) -> int:
    value = string_to_number(text, 1, 2**64 - 1)
    if value is None or value > 0xFFFFFFFF:
        raise fail(f"invalid fwmark value `{text}' specified")
    return value


def _netmask(service: _Endpoint, text: str, names: Names) -> None:
    if service.family != AF_INET6:
        mask = inet_aton(text) or names.host_address(text)
        if mask is None:
            raise fail("illegal virtual server persistent mask specified")
        service.netmask = int(mask)
    else:
        bits = atoi(text) & 0xFFFFFFFF
        service.netmask = bits
        if not 1 <= bits <= 128:
            raise fail("illegal ipv6 netmask specified")


def _mcast_group(text: str) -> IPAddress:
    if ":" in text:
        group6 = inet_pton6(text)
        if group6 is None or not group6.is_multicast:
            raise fail(f"invalid IPv6 mcast-group `{text}'")
        return group6
    group4 = inet_pton4(text)
    if group4 is None or not group4.is_multicast:
        raise fail(f"invalid IPv4 mcast-group `{text}'")
    return group4


def _parse_service(text: str, into: _Endpoint, protocol: Protocol | None, names: Names) -> int:
    """ipvsadm's parse_service(): host[:port], [ipv6]:port or ipv6, into
    `into` (left partly updated on failure, as ipvsadm does)."""
    if all(c in "0123456789" for c in text):
        return 0
    port_text: str | None = None
    host = text
    if text.startswith("["):
        host, bracket, after = text[1:].partition("]")
        if not bracket or not after.startswith(":"):
            return 0
        port_text = after[1:]
    address6 = inet_pton6(host)
    if address6 is not None:
        into.address, into.family, into.netmask = address6, AF_INET6, 128
    else:
        if ":" in host:
            host, _, port_text = host.rpartition(":")
        elif text.startswith("["):
            port_text = None
        address4 = inet_aton(host) or names.host_address(host)
        if address4 is None:
            return 0
        into.address, into.family = address4, AF_INET
    if port_text is None:
        return _SERVICE_ADDR
    port = string_to_number(port_text, 0, 65535)
    if port is None and protocol is not None:
        port = names.service_port(port_text, _PROTOCOL_NAMES[protocol])
    if port is None:
        return 0
    into.port = port
    return _SERVICE_ADDR | _SERVICE_PORT


def _sched_flags(scheduler: str, text: str) -> ServiceFlags:
    scheduler = scheduler or DEFAULT_SCHEDULER
    flags = ServiceFlags.NONE
    words = [word for word in text.split(",") if word]
    if not words:
        raise fail("invalid scheduler flag `'")
    for word in words:
        if word not in SCHEDULER_FLAGS:
            raise fail(f"invalid scheduler flag `{word}'")
        flag, needs = SCHEDULER_FLAGS[word]
        flags |= flag
        if needs and scheduler != needs:
            raise fail(f"incompatible scheduler flag `{word}'")
    return flags


def _check_options(cmd: Cmd, options: set[str]) -> None:
    """generic_opt_check(): the first column, left to right, that is wrong."""
    _check_matrix(COMMANDS_V_OPTIONS[cmd], OPT_NAMES, options, f"the '{CMD_NAMES[cmd]}' command")


def _check_tunnel_options(tun_type: TunnelType, options: set[str]) -> None:
    where = f"the '{_TUNNEL_NAMES[tun_type]}' tunnel type"
    _check_matrix(_TUNNEL_V_OPTIONS[tun_type], _TUNNEL_OPTIONS, options, where)


def _check_matrix(row: Sequence[str], names: Sequence[str], options: set[str], where: str) -> None:
    """One row of ipvsadm's compatibility tables: '+' required, 'x' illegal,
    '1' at most one of those so marked."""
    exclusive: str | None = None
    for column, name in enumerate(names):
        rule = row[column]
        if name not in options:
            if rule == "+":
                raise fail(f"You need to supply the '{name}' option for {where}")
            continue
        if rule == "x":
            raise fail(f"Illegal '{name}' option with {where}")
        if rule == "1":
            if exclusive is None:
                exclusive = name
                continue
            raise fail(f"The option '{name}' conflicts with the '{exclusive}' option in {where}")


def _service_key(entry: _Entry) -> ServiceKey:
    if entry.fwmark:
        return ServiceKey.mark(entry.fwmark, entry.service.family)
    assert entry.protocol is not None and entry.service.address is not None
    return ServiceKey(
        entry.service.family, entry.protocol, entry.service.address, entry.service.port
    )


def _list_format(entry: _Entry) -> ListFormat:
    return ListFormat(**entry.format)


def _command(entry: _Entry, program: str, reading_stdin: bool) -> Command:
    cmd, options = entry.cmd, entry.options
    assert cmd is not None
    if cmd in (Cmd.ADD, Cmd.EDIT):
        if (
            not entry.fwmark
            and not entry.service.port
            and not entry.flags & ServiceFlags.PERSISTENT
        ):
            raise fail("Zero port specified for non-persistent service")
        if (
            entry.flags & ServiceFlags.ONEPACKET
            and not entry.fwmark
            and entry.protocol is not Protocol.UDP
        ):
            raise fail("One-Packet Scheduling is only for UDP virtual services")
        service = Service(
            _service_key(entry),
            entry.scheduler or DEFAULT_SCHEDULER,
            entry.flags,
            entry.timeout,
            entry.service.netmask,
            entry.pe_name,
        )
        return Apply(ops.AddService(service) if cmd is Cmd.ADD else ops.EditService(service))
    if cmd in (Cmd.ADDDEST, Cmd.EDITDEST):
        if not entry.fwmark and entry.forward in (Forward.TUNNEL, Forward.ROUTE):
            entry.dest.port = entry.service.port
        if entry.dest.family != entry.service.family and entry.forward is not Forward.TUNNEL:
            raise fail("Different address family is allowed only for tunneling servers")
        if options & {"tun-type", *_TUNNEL_OPTIONS} and entry.forward is not Forward.TUNNEL:
            raise fail("Tunnel options conflict with forward method")
        _check_tunnel_options(entry.tun_type, options)
    if cmd is Cmd.LIST:
        if (
            options & {"connection", "timeout", "daemon"}
            and options & {"stats", "rate", "thresholds"}
        ) or (options & {"timeout", "daemon"} and "persistent-conn" in options):
            raise fail("options conflicts in the list command")
        if "connection" in options:
            return ListConnections(_list_format(entry))
        if "service-address" in options:
            return ListServices(_list_format(entry), _service_key(entry))
        if "timeout" in options:
            return ListTimeouts()
        if "daemon" in options:
            return ListDaemons()
        return ListServices(_list_format(entry))
    if cmd is Cmd.RESTORE:
        if reading_stdin:
            raise try_help(program)
        return Restore()
    if cmd is Cmd.SAVE:
        return Save(numeric="numeric" in options)
    return Apply(_operation(entry, cmd))


def _operation(entry: _Entry, cmd: Cmd) -> ops.Operation:
    if cmd is Cmd.FLUSH:
        return ops.Flush()
    if cmd is Cmd.DEL:
        return ops.DeleteService(_service_key(entry))
    if cmd is Cmd.ZERO:
        return ops.Zero(_service_key(entry) if "service-address" in entry.options else None)
    if cmd is Cmd.TIMEOUT:
        return ops.SetTimeouts(entry.timeouts)
    if cmd is Cmd.STARTDAEMON:
        return ops.StartDaemon(
            SyncDaemon(
                entry.daemon_state,
                entry.mcast_ifn or DEFAULT_MCAST_IFN,
                entry.syncid,
                entry.sync_maxlen,
                entry.mcast_group,
                entry.mcast_port,
                entry.mcast_ttl,
            )
        )
    if cmd is Cmd.STOPDAEMON:
        return ops.StopDaemon(entry.daemon_state)
    assert entry.dest.address is not None
    key = _service_key(entry)
    if cmd is Cmd.DELDEST:
        return ops.DeleteDestination(key, entry.dest.address, entry.dest.port)
    destination = Destination(
        entry.dest.address,
        entry.dest.port,
        entry.forward,
        entry.weight,
        entry.u_threshold,
        entry.l_threshold,
        entry.tun_type,
        entry.tun_port,
        entry.tun_flags,
    )
    if cmd is Cmd.ADDDEST:
        return ops.AddDestination(key, destination)
    return ops.EditDestination(key, destination)
