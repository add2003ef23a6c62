"""The rig itself: a test's namespace has an IPVS table of its own."""

from __future__ import annotations

import subprocess


def ipvsadm(*args: str) -> str:
    return subprocess.run(["ipvsadm", *args], check=True, capture_output=True, text=True).stdout


def test_each_test_gets_an_empty_ipvs_table(netns: str) -> None:
    assert ipvsadm("-Sn") == ""
    ipvsadm("-A", "-t", "10.0.0.1:80", "-s", "rr")
    assert ipvsadm("-Sn") == "-A -t 10.0.0.1:80 -s rr\n"


def test_namespace_is_not_shared_with_the_previous_test(netns: str) -> None:
    assert ipvsadm("-Sn") == ""
    host = subprocess.run(
        ["nsenter", "-t", "1", "-n", "ipvsadm", "-Sn"], check=True, capture_output=True, text=True
    ).stdout
    assert "10.0.0.1:80" not in host
