"""What import-keepalived says where director differs (operator trial): the
quorum note says when director's count of servers and keepalived's weight
disagree; BFD_CHECK and FILE_CHECK are reported whole at their line, with
keepalived's timing (at once, on a change) rather than a probe's; the
warning about a result that fails --check names each service and where it
came from."""

from __future__ import annotations

import io
from pathlib import Path

from test_keepalived_import import checked, convert_text, note_texts

from director.keepalived.cli import main as cli_main

SERVICE = """\
virtual_server 10.0.0.1 80 {{
    delay_loop 6
    lb_algo rr
    lb_kind NAT
    protocol TCP
    quorum {quorum}
    sorry_server 10.0.9.9 80
{servers}}}
"""


def servers(*weights: int) -> str:
    return "".join(
        f"    real_server 10.0.1.{i} 80 {{\n        weight {w}\n        TCP_CHECK {{\n"
        "        }\n    }\n"
        for i, w in enumerate(weights, start=1)
    )


def quorum_note(quorum: int, *weights: int) -> str:
    conversion = convert_text(SERVICE.format(quorum=quorum, servers=servers(*weights)))
    checked(conversion)
    (note,) = [n for n in note_texts(conversion) if "quorum" in n and "sorry_server" not in n]
    return note


def test_quorum_with_equal_weights_agrees() -> None:
    note = quorum_note(6, 2, 2, 2)
    assert note.startswith("k.conf:6: quorum 6: ")
    assert "quorum = 3" in note and "every server weighs 2, so the two agree" in note


def test_quorum_with_weights_any_count_of_which_make_it_agrees() -> None:
    note = quorum_note(4, 2, 3)
    assert "quorum = 2" in note and "any 2 of these servers" in note and "agree" in note


def test_quorum_says_when_director_and_keepalived_differ() -> None:
    note = quorum_note(5, 4, 1, 2)
    assert "quorum = 2, the fewest that can weigh 5 (weights [1, 2, 4])" in note
    assert "2 of weights [1, 2] weigh 3, below 5" in note
    assert "keepalived has lost the quorum" in note and "director has not" in note


def test_quorum_of_weight_1_servers_needs_no_note() -> None:
    conversion = convert_text(SERVICE.format(quorum=2, servers=servers(1, 1, 1)))
    assert not [n for n in note_texts(conversion) if "quorum 2" in n]
    assert checked(conversion).virtual_servers[0].quorum == 2


EVENT_CHECKS = """\
track_file ready {
    file /run/ready
}
virtual_server 10.0.0.1 80 {
    delay_loop 6
    lb_algo rr
    protocol TCP
    real_server 10.0.1.1 80 {
        BFD_CHECK {
            name bfd1
            weight 10
        }
    }
    real_server 10.0.1.2 80 {
        FILE_CHECK {
            track_file ready
            weight 0
        }
    }
    real_server 10.0.1.3 80 {
        TCP_CHECK {
        }
        BFD_CHECK {
            name bfd2
        }
    }
}
"""


def test_bfd_and_file_checks_are_reported_whole_at_their_line() -> None:
    conversion = convert_text(EVENT_CHECKS)
    notes = note_texts(conversion)
    assert not [n for n in notes if "unknown keyword" in n], notes
    (bfd,) = [n for n in notes if n.startswith("k.conf:9: ")]
    assert bfd.startswith("k.conf:9: BFD_CHECK (name bfd1): not converted (director has no BFD")
    assert "exec check of `true`" in bfd
    (file_check,) = [n for n in notes if n.startswith("k.conf:15: ")]
    assert file_check.startswith("k.conf:15: FILE_CHECK (track_file ready): not converted")
    assert "as soon as it changes (inotify)" in file_check
    assert "no delay_loop, retry or connect_timeout" in file_check
    # Neither gets a probe's timing (retry -> fall, keepalived's retry spacing).
    assert not [n for n in notes if ("BFD_CHECK" in n or "FILE_CHECK" in n) and "fall" in n]
    assert "k.conf:1: track_file: not converted (director does not track files" in " ".join(notes)
    assert any(
        n.startswith("k.conf:23: BFD_CHECK: not converted (director has one check") for n in notes
    )
    config = checked(conversion)
    assert len(config.virtual_servers[0].real_servers) == 3


MISC_USERS = """\
virtual_server 10.0.0.1 80 {
    lb_algo rr
    protocol TCP
    real_server 10.0.1.1 80 {
        MISC_CHECK {
            misc_path "/bin/true"
            user nosuchuser-director-test-a
        }
    }
}
virtual_server_group web {
    10.0.0.2 443
}
virtual_server group web {
    lb_algo rr
    protocol TCP
    real_server 10.0.1.2 443 {
        MISC_CHECK {
            misc_path "/bin/true"
            user nosuchuser-director-test-b
        }
    }
}
"""


def test_a_result_that_fails_the_check_names_each_service_and_its_line(tmp_path: Path) -> None:
    source = tmp_path / "keepalived.conf"
    source.write_text(MISC_USERS)
    out, err = io.StringIO(), io.StringIO()
    assert cli_main([str(source)], out, err) == 0
    lines = err.getvalue().splitlines()
    at = lines.index(
        "directorctl import-keepalived: warning: the result does not pass directord --check here:"
    )
    # each line the error names: its check's in the output
    output = out.getvalue().splitlines()
    checks = [i for i, line in enumerate(output, 1) if line.startswith("check = ")]
    assert len(checks) == 2
    assert lines[at + 1] == (
        f"  virtual_server[0].check.user (10.0.0.1:80 tcp, line {checks[0]}): no such user: "
        f'"nosuchuser-director-test-a" (from {source}:1)'
    )
    assert lines[at + 2].startswith(
        f"  virtual_server[1].check.user (10.0.0.2:443 tcp, line {checks[1]}): "
    )
    assert lines[at + 2].endswith(f" (from {source}:14)")
