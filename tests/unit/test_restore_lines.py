"""A -R's lines take shortcuts one request per line does not (the canonical
lines read without the option scanner, a real server's line of a managed
service recorded without the routing of Controller._change, the effective
config merged service by service, the state file's records kept from the
last save): random scripts, run as one -R and as one request per line on
two daemons, must answer the same errors and statuses and leave the same
runtime layer and the same state file."""

from __future__ import annotations

import tempfile
from pathlib import Path

import trio
import trio.testing
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_handler import rig, until

from director import statefile
from director.ipvsadm import parse_restore

SERVICES = ("10.0.0.1:80", "10.0.0.2:80", "10.0.0.3:80")  # the first is the config's
SERVERS = ("10.0.1.1:80", "10.0.1.2:80", "10.0.2.1:80")
_service = st.sampled_from(SERVICES)
_server = st.sampled_from(SERVERS)
_weight = st.integers(0, 3).map(str)
_line = st.one_of(
    st.builds("-A -t {} -s {}".format, _service, st.sampled_from(["rr", "wrr", "nosuch"])),
    st.builds("-E -t {} -s {}".format, _service, st.sampled_from(["sh", "nosuch"])),
    st.builds("-D -t {}".format, _service),
    st.builds("-a -t {} -r {} -m -w {}".format, _service, _server, _weight),
    st.builds("-a -t {} -r {} -g".format, _service, _server),
    st.builds("-e -t {} -r {} -m -w {}".format, _service, _server, _weight),
    st.builds("-d -t {} -r {}".format, _service, _server),
    st.just("-C"),
    st.builds("-a -t {} -w {}".format, _service, _weight),  # no -r: -R stops
    st.builds("-a -t {} -r {} -m -w -1".format, _service, _server),  # and here
)


async def _run(script: list[str], where: Path) -> tuple[list[tuple[int, str]], tuple[int, str]]:
    (where / "lines").mkdir()
    (where / "restore").mkdir()
    async with rig(where / "lines") as lines:
        await until(lambda: lines.weights() == {"10.0.1.1:80": 5})
        one_by_one = [await lines.ipvsadm(*line.split()) for line in script]
    async with rig(where / "restore") as restore:
        await until(lambda: restore.weights() == {"10.0.1.1:80": 5})
        whole = await restore.ipvsadm("-R", stdin="".join(f"{line}\n" for line in script))
    return [(r.status, r.stderr) for r in one_by_one], (whole.status, whole.stderr)


@settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
@given(st.lists(_line, min_size=1, max_size=14))
def test_a_restore_is_its_lines_one_request_each(script: list[str]) -> None:
    # One request per line up to the first line a -R stops at (one ipvsadm
    # cannot parse: it exits there), that one included.
    script = script[: len(parse_restore("".join(f"{line}\n" for line in script)))]
    with tempfile.TemporaryDirectory() as tmp:
        where = Path(tmp)
        clock = trio.testing.MockClock(autojump_threshold=0)
        lines, (status, stderr) = trio.run(_run, script, where, clock=clock)
        assert stderr == "".join(e for _, e in lines)
        assert status == lines[-1][0]
        saved = [(where / d / "state.json") for d in ("lines", "restore")]
        layers = [statefile.load(path).layer for path in saved]
        assert layers[0] == layers[1]
        # The records of the layer, as the state file writes them.
        texts = [path.read_text() for path in saved]
        assert [_records(t) for t in texts] == [_records(texts[0])] * 2


def _records(text: str) -> str:
    """The state file without "owned_services" (a service a line added
    and a later line deleted is owned until a pass deletes it: one request
    per line passes after each, the -R once)."""
    head, _, rest = text.partition('"owned_services"')
    return head + rest.partition("],\n")[2] if rest else text
