"""UTF-8-safe streaming and stop strings that span token boundaries."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from localspec.textstream import StopMatcher, TextStream


def test_multibyte_characters_split_across_tokens_never_show_as_garbage():
    stream = TextStream()
    data = "héllo 世界 🎉".encode()
    shown = [stream.feed(data[i:i + 1]) for i in range(len(data))]
    assert "\ufffd" not in "".join(shown)
    assert "".join(shown) + stream.flush() == "héllo 世界 🎉"
    assert shown[1] == "" and shown[2] == "é"  # held until the character is complete


@given(st.text(max_size=40), st.lists(st.integers(1, 6), max_size=30))
def test_any_split_of_bytes_rebuilds_the_text(text, cuts):
    data = text.encode()
    stream = TextStream()
    out, pos = [], 0
    for cut in cuts:
        out.append(stream.feed(data[pos:pos + cut]))
        pos += cut
    out.append(stream.feed(data[pos:]))
    assert "".join(out) + stream.flush() == text


def test_stop_string_across_chunks_is_cut_and_never_shown():
    matcher = StopMatcher(["</end>"])
    shown = [matcher.feed(p) for p in ["abc</", "en", "d> tail"]]
    assert shown == ["abc", "", ""]
    assert matcher.stopped and matcher.flush() == ""


def test_partial_stop_that_does_not_complete_is_released():
    matcher = StopMatcher(["STOP"])
    assert matcher.feed("ST") == ""
    assert matcher.feed("x") == "STx"
    assert matcher.feed("STO") == ""
    assert matcher.flush() == "STO"


@given(st.text(alphabet="abS T", max_size=30), st.lists(st.integers(1, 4), max_size=12))
def test_stop_matching_equals_cutting_the_whole_text(text, cuts):
    stops = ["ST", "ba"]
    matcher = StopMatcher(stops)
    out, pos = [], 0
    for cut in cuts + [len(text)]:
        out.append(matcher.feed(text[pos:pos + cut]))
        pos += cut
    shown = "".join(out) + matcher.flush()
    first = min((i for i in (text.find(s) for s in stops) if i >= 0), default=len(text))
    assert shown == text[:first]
