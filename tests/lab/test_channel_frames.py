"""Channels' pure parts: the frame codec, the options that ask for channels and links, the
guest config's "channels" key, and QEMU's rendering of them (no guest booted)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from uniklab.backends.base import InstanceSpec, spec_from_json, spec_to_json
from uniklab.backends.qemu_argv import build_argv
from uniklab.channels import (
    MAX_PAYLOAD,
    ChannelSpec,
    Decoder,
    Frame,
    FrameError,
    Kind,
    Link,
    encode,
    encode_data,
    parse_link,
)
from uniklab.errors import UsageError
from uniklab.guest.config import Channel, GuestConfig
from uniklab.options import RunOptions

FRAMES = st.lists(
    st.builds(
        Frame,
        st.sampled_from(list(Kind)),
        st.integers(0, 2**32 - 1),
        st.just(b""),
    )
    | st.builds(Frame, st.just(Kind.DATA), st.integers(0, 2**32 - 1), st.binary(max_size=300)),
    max_size=20,
)


@given(FRAMES, st.lists(st.integers(1, 64), min_size=1, max_size=8))
def test_frames_survive_any_split(frames: list[Frame], cuts: list[int]) -> None:
    data = b"".join(encode(f.kind, f.conn, f.payload) for f in frames)
    d, got, at, i = Decoder(), [], 0, 0
    while at < len(data):
        step = cuts[i % len(cuts)]
        got += d.feed(data[at : at + step])
        at, i = at + step, i + 1
    assert got == frames


def test_large_data_is_split_into_frames() -> None:
    data = bytes(range(256)) * 300  # 76800 bytes
    frames = Decoder().feed(b"".join(encode_data(5, data)))
    assert all(len(f.payload) <= MAX_PAYLOAD and f.conn == 5 for f in frames)
    assert b"".join(f.payload for f in frames) == data
    with pytest.raises(ValueError, match="payload"):
        encode(Kind.DATA, 1, bytes(MAX_PAYLOAD + 1))


@pytest.mark.parametrize(
    "header",
    [
        b"\x00\x00\x00\x00\x00\x00\x00\x01",  # kind 0
        b"\x09\x00\x00\x00\x00\x00\x00\x01",  # unknown kind
        b"\x02\x01\x00\x00\x00\x00\x00\x01",  # pad not 0
        b"\x01\x00\x00\x01\x00\x00\x00\x01",  # OPEN with a payload
        b"\x02\x00\x40\x01\x00\x00\x00\x01",  # DATA over MAX_PAYLOAD
    ],
)
def test_bad_headers_are_refused(header: bytes) -> None:
    with pytest.raises(FrameError):
        Decoder().feed(header)


def test_links_parse_or_say_why() -> None:
    assert parse_link("master:6379") == Link("master", 6379, 6379)
    assert parse_link("master:6379:16379") == Link("master", 6379, 16379)
    for bad in ("master", "master:", ":6379", "master:0", "master:6379:70000", "a b:1", "m:1:2:3"):
        with pytest.raises(UsageError) as exc:
            parse_link(bad)
        assert "\n" not in str(exc.value)


def test_run_options_for_channels() -> None:
    o = RunOptions(net="none", channels=[6379, "16379"], links=["m:6379:16380"])
    assert o.offline and o.nets == () and o.channels == (6379, 16379)
    assert o.link_requests == (Link("m", 6379, 16380),)
    assert not RunOptions().offline
    again = dataclasses.replace(o, name="x")  # as the rumprun verb re-places options
    assert again.offline and again.link_requests == o.link_requests and again.nets == ()
    for bad in (
        {"channels": [0]},
        {"channels": ["x"]},
        {"channels": [6379, 6379]},
        {"links": ["nope"]},
        {"net": "none", "publish": [(0, 6379)]},
        {"net": ["none", "lab"]},
    ):
        with pytest.raises(UsageError):
            RunOptions(**bad)  # type: ignore[arg-type]


def test_channel_names_and_guest_config() -> None:
    served, link = ChannelSpec(6379), ChannelSpec(16379, "out", "/run/1/chan-6379.sock")
    assert (served.name, link.name) == ("uniklab.6379", "uniklab.l16379")
    cfg = GuestConfig(channels=[Channel(name=link.name, port=16379, dir="out")])
    assert GuestConfig.decode(cfg.encode()) == cfg
    assert '"channels":[{"name":"uniklab.l16379","port":16379,"dir":"out"}]' in cfg.to_json()
    with pytest.raises(ValueError):
        Channel(name="Bad Name", port=1)


def _spec(channels: tuple[ChannelSpec, ...]) -> InstanceSpec:
    return InstanceSpec(
        name="c1",
        kernel=Path("/images/x/kernel"),
        initrd=Path("/images/x/initrd"),
        cmdline="quiet",
        memory_mb=128,
        vcpus=1,
        rundir=Path("/run/ukl/3"),
        channels=channels,
    )


def test_qemu_renders_a_virtserialport_per_channel() -> None:
    link = ChannelSpec(16379, "out", "/run/ukl/2/chan-6379.sock", "m:6379")
    spec = _spec((ChannelSpec(6379), link))
    argv = build_argv(spec, accel="tcg", tsc_khz=None)
    at = argv.index("virtio-serial-device,id=vser0")
    assert argv[at - 1] == "-device"
    assert argv[at + 1 : at + 9] == [
        "-chardev",
        "socket,id=ch0,path=/run/ukl/3/vser-uniklab.6379.sock,server=on,wait=off",
        "-device",
        "virtserialport,bus=vser0.0,chardev=ch0,name=uniklab.6379",
        "-chardev",
        "socket,id=ch1,path=/run/ukl/3/vser-uniklab.l16379.sock,server=on,wait=off",
        "-device",
        "virtserialport,bus=vser0.0,chardev=ch1,name=uniklab.l16379",
    ]
    assert not any("virtio-serial" in a for a in build_argv(_spec(()), accel="tcg", tsc_khz=None))
    assert spec_from_json(spec_to_json(spec)) == spec
    again = spec_from_json({k: v for k, v in spec_to_json(spec).items() if k != "channels"})
    assert again == dataclasses.replace(spec, channels=())


def test_a_spec_links_to_instances_declared_before() -> None:
    from uniklab.testing.spec import parse

    head = '[[tests]]\nname = "t"\ncommand = "true"\n'
    ok = parse(
        head + '[[instances]]\nname = "m"\nimage = "redis"\nnets = ["none"]\n'
        '[[instances]]\nname = "r"\nimage = "redis"\nnets = ["none"]\nlinks = ["m:6379:16379"]\n',
        "ok.toml",
    )
    links = ok.instances[1].options(name="r-abc123").link_requests
    assert links == (Link("m-abc123", 6379, 16379),)
    with pytest.raises(UsageError, match="link m:6379: not an instance declared before it"):
        parse(head + '[[instances]]\nname = "r"\nimage = "redis"\nlinks = ["m:6379"]\n', "bad")
