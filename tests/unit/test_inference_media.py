"""Image URL and image-bytes checks of the inference service. Non-loopback addresses are judged at the
address-validation layer only: nothing here opens a connection."""

from __future__ import annotations

import base64
import io
import ipaddress

import pytest
from PIL import Image

from inference_service.errors import InvalidRequest
from inference_service.media import ImageLimits, MediaUrlPolicy, check_image, decode_data_url, is_public_address

LIMITS = ImageLimits(max_image_bytes=1_000_000, max_image_pixels=512 * 512)
POLICY = MediaUrlPolicy(frozenset({"images.example.com"}))


def _png(width: int = 8, height: int = 8) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (width, height), "red").save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.mark.parametrize("address", [
    "127.0.0.1", "127.8.9.10", "10.0.0.1", "172.16.5.4", "192.168.1.1", "169.254.169.254", "100.64.0.1",
    "0.0.0.0", "224.0.0.1", "255.255.255.255", "::1", "::", "fe80::1", "fc00::1", "fd00:ec2::254",
    "::ffff:127.0.0.1", "::ffff:169.254.169.254", "2002:7f00:1::1", "64:ff9b::a00:1",
])
def test_private_loopback_link_local_and_metadata_addresses_are_refused(address: str) -> None:
    assert not is_public_address(ipaddress.ip_address(address))


@pytest.mark.parametrize("address", ["93.184.216.34", "8.8.8.8", "2606:4700:4700::1111"])
def test_public_addresses_are_allowed(address: str) -> None:
    assert is_public_address(ipaddress.ip_address(address))


@pytest.mark.parametrize("url", [
    "http://images.example.com\\@evil.test/a.png",     # parsers disagree on which host this is
    "http://images.example.com@evil.test/a.png",       # userinfo: the real host is evil.test
    "http://user:pw@images.example.com/a.png",         # credentials are never sent
    "http://evil.test/a.png",
    "http://images.example.com.evil.test/a.png",
    "http://127.0.0.1/a.png",
    "http://[::1]/a.png",
    "file:///etc/passwd",
    "ftp://images.example.com/a.png",
    "http://images.example.com:99999/a.png",
    "http://images.example.com/a b.png",
])
def test_url_tricks_and_other_hosts_and_schemes_are_refused(url: str) -> None:
    with pytest.raises(InvalidRequest):
        POLICY.checked_target(url)


def test_an_allowed_host_passes_with_its_port() -> None:
    assert POLICY.checked_target("https://Images.Example.com./a.png?x=1") == ("https", "images.example.com", 443)
    assert POLICY.checked_target("http://images.example.com:8080/a.png") == ("http", "images.example.com", 8080)


def test_data_urls_must_be_base64_images() -> None:
    png = _png()
    assert decode_data_url("data:image/png;base64," + base64.b64encode(png).decode()) == png
    for url in ("data:text/plain;base64,aGVsbG8=", "data:image/png;base64,!!!!", "data:image/png,rawbytes",
                "data:image/png;base64"):
        with pytest.raises(InvalidRequest):
            decode_data_url(url)


def test_whole_small_images_pass_including_one_pixel() -> None:
    assert check_image(_png(), LIMITS) == "image/png"
    assert check_image(_png(1, 1), LIMITS) == "image/png"


@pytest.mark.parametrize("data, reason", [
    (b"", "image_invalid"),
    (b"GIF89a not really", "image_invalid"),
    (_png(64, 64)[:-40], "image_invalid"),            # truncated
    (b"x" * 1_000_001, "image_too_large"),
])
def test_empty_truncated_fake_and_oversized_images_are_refused(data: bytes, reason: str) -> None:
    with pytest.raises(InvalidRequest) as refused:
        check_image(data, LIMITS)
    assert refused.value.reason == reason


def test_a_decompression_bomb_is_refused_from_its_header_before_decoding() -> None:
    bomb = _png(4000, 4000)  # a few KB of zlib that would decode to 48 MB
    assert len(bomb) < 100_000
    with pytest.raises(InvalidRequest) as refused:
        check_image(bomb, LIMITS)
    assert refused.value.reason == "image_too_many_pixels"
