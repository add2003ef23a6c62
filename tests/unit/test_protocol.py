import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from director.control.messages import Request, Response
from director.control.protocol import (
    ErrorKind,
    ProtocolError,
    RequestDecoder,
    decode_request,
    decode_response,
    encode_error,
    encode_request,
    encode_response,
)


def events(decoder: RequestDecoder) -> list[Request | ProtocolError]:
    out = []
    while (event := decoder.next_event()) is not None:
        out.append(event)
    return out


def decode_all(data: bytes, max_line: int = 1024) -> list[Request | ProtocolError]:
    decoder = RequestDecoder(max_line)
    decoder.feed(data)
    decoder.feed_eof()
    return events(decoder)


def test_argv_request() -> None:
    [request] = decode_all(b'{"v": 1, "argv": ["-L", "-n"]}\n')
    assert request == Request(argv=("-L", "-n"))
    assert dict(request.args) == {}


def test_command_request_with_args() -> None:
    [request] = decode_all(b'{"v":1,"command":"drain","args":{"service":"t:1.2.3.4:80"}}\n')
    assert isinstance(request, Request)
    assert request.argv is None
    assert request.command == "drain"
    assert dict(request.args) == {"service": "t:1.2.3.4:80"}


def test_several_requests_split_anywhere() -> None:
    data = b'{"v":1,"argv":["-Ln"]}\n\n{"v":1,"command":"status"}\r\n{"v":1,"argv":[]}'
    for cut in range(len(data) + 1):
        decoder = RequestDecoder()
        decoder.feed(data[:cut])
        decoder.feed(data[cut:])
        decoder.feed_eof()
        assert events(decoder) == [
            Request(argv=("-Ln",)),
            Request(command="status"),
            Request(argv=()),
        ]


def test_unterminated_line_waits_for_more() -> None:
    decoder = RequestDecoder()
    decoder.feed(b'{"v":1,"argv":["-Ln"]}')
    assert decoder.next_event() is None
    assert decoder.buffered == len(b'{"v":1,"argv":["-Ln"]}')
    decoder.feed(b"\n")
    assert decoder.next_event() == Request(argv=("-Ln",))
    assert decoder.buffered == 0


@pytest.mark.parametrize(
    ("line", "kind", "message"),
    [
        (b"\xff{}", ErrorKind.NOT_UTF8, "request is not UTF-8: byte 0xff at offset 0"),
        (b"{", ErrorKind.NOT_JSON, "request is not JSON: Expecting property name"),
        (b'{"v": NaN}', ErrorKind.NOT_JSON, "NaN is not a JSON value"),
        (b"[" * 100_000, ErrorKind.NOT_JSON, "request is not JSON"),
        (b"[1]", ErrorKind.NOT_OBJECT, "request must be a JSON object, not a list"),
        (b'"-Ln"', ErrorKind.NOT_OBJECT, "not a string"),
        (b'{"argv": []}', ErrorKind.BAD_VERSION, '"v" is missing (expected 1)'),
        (b'{"v": 2, "argv": []}', ErrorKind.BAD_VERSION, '"v" is 2, this server speaks version 1'),
        (b'{"v": true, "argv": []}', ErrorKind.BAD_VERSION, '"v" is true'),
        (b'{"v": 1}', ErrorKind.BAD_FIELD, 'exactly one of "argv" and "command"'),
        (b'{"v": 1, "argv": [], "command": "x"}', ErrorKind.BAD_FIELD, "exactly one of"),
        (
            b'{"v": 1, "argv": "-Ln"}',
            ErrorKind.BAD_FIELD,
            '"argv" must be a list of strings, not a string',
        ),
        (
            b'{"v": 1, "argv": ["-L", 1]}',
            ErrorKind.BAD_FIELD,
            '"argv"[1] must be a string, not a number',
        ),
        (
            b'{"v": 1, "command": ""}',
            ErrorKind.BAD_FIELD,
            '"command" must be a non-empty string, not ""',
        ),
        (b'{"v": 1, "command": null}', ErrorKind.BAD_FIELD, "not null"),
        (
            b'{"v": 1, "command": "status", "args": []}',
            ErrorKind.BAD_FIELD,
            '"args" must be an object, not a list',
        ),
        (b'{"v": 1, "argv": [], "id": 7}', ErrorKind.BAD_FIELD, "unknown field 'id'"),
    ],
)
def test_bad_requests_say_what_is_wrong(line: bytes, kind: ErrorKind, message: str) -> None:
    [error] = decode_all(line + b"\n", max_line=200_000)
    assert isinstance(error, ProtocolError)
    assert error.kind is kind
    assert message in error.message
    assert not error.fatal
    assert error.status == 2


def test_bad_line_does_not_disturb_the_next() -> None:
    first, second = decode_all(b'{"v":1,argv}\n{"v":1,"argv":["-S"]}\n')
    assert isinstance(first, ProtocolError)
    assert second == Request(argv=("-S",))


def test_too_long_line_is_reported_once_and_skipped_without_buffering() -> None:
    decoder = RequestDecoder(max_line=100)
    decoder.feed(b"x" * 60)
    assert decoder.next_event() is None
    decoder.feed(b"x" * 60)
    [error] = events(decoder)
    assert isinstance(error, ProtocolError)
    assert error.kind is ErrorKind.TOO_LONG
    assert error.message == "request is longer than 100 bytes without a newline"
    assert error.fatal
    for _ in range(1000):
        decoder.feed(b"y" * 1000)
        assert decoder.buffered == 0
    assert events(decoder) == []
    decoder.feed(b'y\n{"v":1,"argv":["-Ln"]}\n')
    assert events(decoder) == [Request(argv=("-Ln",))]


def test_line_of_exactly_the_limit_is_accepted() -> None:
    line = b'{"v":1,"argv":["' + b"a" * 80 + b'"]}'
    assert decode_all(line + b"\n", max_line=len(line)) == [Request(argv=("a" * 80,))]
    [error] = decode_all(line + b"\n", max_line=len(line) - 1)
    assert isinstance(error, ProtocolError)
    assert error.kind is ErrorKind.TOO_LONG


def test_too_long_line_ending_in_the_same_chunk() -> None:
    [error, request] = decode_all(b"z" * 300 + b'\n{"v":1,"argv":[]}\n', max_line=100)
    assert isinstance(error, ProtocolError)
    assert error.kind is ErrorKind.TOO_LONG
    assert request == Request(argv=())


def test_encode_request_round_trip() -> None:
    request = Request(argv=("-R",), args={"stdin": "-A -t 1.2.3.4:80 -s rr\n"})
    [decoded] = decode_all(encode_request(request))
    assert isinstance(decoded, Request)
    assert decoded.argv == request.argv
    assert dict(decoded.args) == dict(request.args)


def test_response_round_trip_and_shape() -> None:
    response = Response(0, "IP Virtual Server version 1.2.1 (size=4096)\n", "", {"a": [1]})
    line = encode_response(response)
    assert line.endswith(b"\n") and line.count(b"\n") == 1
    assert json.loads(line) == {
        "v": 1,
        "status": 0,
        "stdout": response.stdout,
        "stderr": "",
        "data": {"a": [1]},
    }
    assert decode_response(line) == response
    assert "data" not in json.loads(encode_response(Response(1, "", "no\n")))


def test_error_response() -> None:
    error = ProtocolError(ErrorKind.BUSY, "too many connections (128), try again")
    assert json.loads(encode_error(error)) == {
        "v": 1,
        "status": 1,
        "stdout": "",
        "stderr": "directord: too many connections (128), try again\n",
        "error": "busy",
    }


@pytest.mark.parametrize(
    "line", [b"[]", b'{"v":2}', b'{"v":1,"status":"0","stdout":"","stderr":""}']
)
def test_decode_response_rejects_non_responses(line: bytes) -> None:
    with pytest.raises(ValueError):
        decode_response(line)


# What a request can carry: no lone surrogates (no UTF-8 encoder writes them),
# and no NUL in an argv word (no command line holds one).
words = st.text(st.characters(exclude_categories=("Cs",)), max_size=20)
argv_words = st.text(
    st.characters(exclude_categories=("Cs",), exclude_characters="\0"), max_size=20
)
requests = st.one_of(
    st.builds(
        Request,
        argv=st.lists(argv_words, max_size=8).map(tuple),
        args=st.dictionaries(words, st.one_of(words, st.integers(), st.booleans()), max_size=3),
    ),
    st.builds(
        Request,
        command=st.text(st.characters(exclude_categories=("Cs",)), min_size=1, max_size=20),
        args=st.dictionaries(
            words,
            st.one_of(words, st.none(), st.floats(allow_nan=False, allow_infinity=False)),
            max_size=3,
        ),
    ),
)


@given(st.lists(requests, max_size=5), st.data())
def test_fuzz_round_trip_in_arbitrary_chunks(batch: list[Request], data: st.DataObject) -> None:
    wire = b"".join(encode_request(r) for r in batch)
    cuts = sorted(data.draw(st.lists(st.integers(0, len(wire)), max_size=6)))
    decoder = RequestDecoder()
    for start, end in zip([0, *cuts], [*cuts, len(wire)], strict=True):
        decoder.feed(wire[start:end])
    decoder.feed_eof()
    decoded = events(decoder)
    assert [(r.argv, r.command, dict(r.args)) for r in decoded if isinstance(r, Request)] == [
        (r.argv, r.command, dict(r.args)) for r in batch
    ]
    assert len(decoded) == len(batch)


@given(st.lists(st.binary(max_size=300), max_size=20), st.integers(1, 256))
def test_fuzz_arbitrary_bytes(chunks: list[bytes], max_line: int) -> None:
    decoder = RequestDecoder(max_line)
    for chunk in chunks:
        decoder.feed(chunk)
        assert decoder.buffered <= max_line
        for event in events(decoder):
            assert isinstance(event, Request | ProtocolError)
    decoder.feed_eof()
    assert decoder.buffered == 0
    for event in events(decoder):
        assert isinstance(event, Request | ProtocolError)


json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=10),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=20,
)


@given(st.dictionaries(st.sampled_from(["v", "argv", "command", "args", "x"]), json_values))
def test_fuzz_json_objects_give_a_request_or_a_typed_error(value: dict[str, object]) -> None:
    event = decode_request(json.dumps(value).encode())
    if isinstance(event, ProtocolError):
        assert event.message
        assert event.kind in (ErrorKind.BAD_VERSION, ErrorKind.BAD_FIELD)
    else:
        assert (event.argv is None) != (event.command is None)
        assert event.argv is None or all(isinstance(w, str) for w in event.argv)


@pytest.mark.parametrize(
    ("line", "where"),
    [
        (rb'{"v":1,"argv":["-L","\ud800"]}', '"argv"[1]'),
        (rb'{"v":1,"command":"status","args":{"a":[1,{"k":"x\udfff"}]}}', '"args"["a"][1]["k"]'),
        (rb'{"v":1,"command":"status","args":{"\udc00":1}}', 'a key in "args"'),
        (rb'{"v":1,"command":"\ud83dx"}', '"command"'),
    ],
)
def test_a_lone_surrogate_escape_is_not_utf8(line: bytes, where: str) -> None:
    assert decode_request(line) == ProtocolError(
        ErrorKind.NOT_UTF8,
        f"request is not UTF-8: {where} holds a lone surrogate escape"
        r" (\ud800-\udfff without its pair)",
    )


def test_a_surrogate_pair_escape_is_one_character() -> None:
    request = decode_request(rb'{"v":1,"argv":["\ud83d\ude00"]}')
    assert request == Request(argv=("\U0001f600",))


def test_a_lone_surrogate_deep_in_args_is_found_without_recursion() -> None:
    depth = 900  # json.loads goes as deep as the recursion limit lets it
    line = b'{"v":1,"command":"status","args":{"a":' + b"[" * depth + rb'"\ud800"'
    line += b"]" * depth + b"}}"
    error = decode_request(line)
    assert isinstance(error, ProtocolError)
    assert error.kind is ErrorKind.NOT_UTF8


def test_a_nul_in_argv_is_refused() -> None:
    assert decode_request(rb'{"v":1,"argv":["-s","rr\u0000x"]}') == ProtocolError(
        ErrorKind.BAD_FIELD, '"argv"[1] holds a NUL character, which no command line can hold'
    )


def test_a_number_past_pythons_digit_limit_is_not_json() -> None:
    error = decode_request(b'{"v":' + b"1" * 5000 + b',"argv":[]}')
    assert isinstance(error, ProtocolError)
    assert error.kind is ErrorKind.NOT_JSON
    assert "4300 digits" in error.message
