"""Images in chat requests: every `image_url` becomes checked bytes before vLLM sees it.

`data:` URLs are decoded strictly. http(s) URLs are fetched here, not by vLLM, and only from allowed hosts:
the name is resolved once, every address must be public (no loopback / private / link-local / metadata
targets), the connection is pinned to the checked address (no DNS rebinding between check and fetch), and
redirects are refused rather than followed. Any other scheme (file:, ftp:...) is refused. Bytes are capped
while they stream in, and the pixel count is read from the image header before anything is decoded.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import io
import ipaddress
import socket
from dataclasses import dataclass
from urllib.parse import urlsplit

import httpx
import pybase64
from PIL import Image, UnidentifiedImageError

from .errors import InvalidRequest

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
NAT64_PREFIX = ipaddress.IPv6Network("64:ff9b::/96")  # the last 32 bits are an IPv4 address


@dataclass(frozen=True)
class ImageLimits:
    max_image_bytes: int
    max_image_pixels: int


@dataclass(frozen=True)
class MediaUrlPolicy:
    allowed_domains: frozenset[str]
    allow_private_addresses: bool = False

    def checked_target(self, url: str) -> tuple[str, str, int]:
        """(scheme, host, port) of an http(s) URL this policy allows, before any name is resolved."""
        if "\\" in url or any(ord(char) < 0x21 for char in url):
            raise InvalidRequest("image URL has characters URLs may not carry", reason="image_url_refused")
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https"):
            raise InvalidRequest("image_url must be a data: URL or an http(s) URL", reason="image_url_scheme")
        if parts.username is not None or parts.password is not None or "@" in parts.netloc:
            raise InvalidRequest("image URLs with credentials are refused", reason="image_url_refused")
        host = (parts.hostname or "").rstrip(".").lower()
        if host not in self.allowed_domains:
            raise InvalidRequest("image URL host is not in the allowed media domains", reason="image_url_refused")
        try:
            port = parts.port or (443 if parts.scheme == "https" else 80)
        except ValueError:
            raise InvalidRequest("image URL has an invalid port", reason="image_url_refused") from None
        return parts.scheme, host, port

    def address_allowed(self, address: IPAddress) -> bool:
        return self.allow_private_addresses or is_public_address(address)


def is_public_address(address: IPAddress) -> bool:
    """Globally routable unicast only: refuses loopback, RFC 1918, link-local (cloud metadata at
    169.254.169.254), CGNAT, unspecified, multicast, reserved, and IPv4 hidden inside IPv6 (mapped, 6to4,
    Teredo, NAT64)."""
    if isinstance(address, ipaddress.IPv6Address):
        embedded = address.ipv4_mapped or address.sixtofour or (address.teredo[1] if address.teredo else None)
        if address in NAT64_PREFIX:
            embedded = ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
        if embedded is not None:
            return is_public_address(embedded)
    return address.is_global and not address.is_multicast


async def resolve_addresses(host: str, port: int) -> list[IPAddress]:
    try:
        infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror:
        raise InvalidRequest("image URL host does not resolve", reason="image_url_unreachable") from None
    return [ipaddress.ip_address(info[4][0].split("%")[0]) for info in infos]


def decode_data_url(url: str) -> bytes:
    header, comma, payload = url.partition(",")
    media_type = header.removeprefix("data:").split(";")[0].strip().lower()
    if not comma or not header.endswith(";base64"):
        raise InvalidRequest("data: image URLs must be base64", reason="image_invalid")
    if not media_type.startswith("image/"):
        raise InvalidRequest(f"data: URL media type {media_type!r} is not an image", reason="image_invalid")
    try:
        return pybase64.b64decode(payload, validate=True)  # vLLM's decoder: 0.8 ms, not 27, for 5 MB
    except (binascii.Error, ValueError):
        raise InvalidRequest("data: URL is not valid base64", reason="image_invalid") from None


def check_image(data: bytes, limits: ImageLimits) -> str:
    """Raises unless `data` is one whole image within the limits; returns its MIME type."""
    if len(data) > limits.max_image_bytes:
        raise InvalidRequest(f"image is larger than {limits.max_image_bytes} bytes", reason="image_too_large")
    try:
        with Image.open(io.BytesIO(data)) as image:  # reads the header only
            width, height = image.size
            if width * height > limits.max_image_pixels:
                raise InvalidRequest(f"image has {width}x{height} pixels, more than {limits.max_image_pixels}",
                                     reason="image_too_many_pixels")
            mime_type = image.get_format_mimetype() or "image/png"
            image.load()  # a truncated or corrupt file fails here, not inside the engine
    except InvalidRequest:
        raise
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, Image.DecompressionBombError):
        raise InvalidRequest("image data cannot be decoded", reason="image_invalid") from None
    return mime_type


async def fetch_image(url: str, policy: MediaUrlPolicy, limits: ImageLimits, timeout_s: float) -> bytes:
    scheme, host, port = policy.checked_target(url)
    addresses = await resolve_addresses(host, port)
    if not addresses or not all(policy.address_allowed(address) for address in addresses):
        raise InvalidRequest("image URL resolves to a private or reserved address", reason="image_url_refused")
    pinned = addresses[0]
    parts = urlsplit(url)
    literal = f"[{pinned}]" if pinned.version == 6 else str(pinned)
    target = f"{scheme}://{literal}:{port}{parts.path or '/'}{'?' + parts.query if parts.query else ''}"
    # The TLS name (SNI, certificate check) stays the host's, while the socket goes to the checked address.
    extensions = {"sni_hostname": host} if scheme == "https" else {}
    try:
        async with httpx.AsyncClient(follow_redirects=False, timeout=timeout_s, trust_env=False) as client:
            async with client.stream("GET", target, headers={"Host": parts.netloc}, extensions=extensions) as reply:
                if reply.is_redirect:
                    raise InvalidRequest("image URL redirects; redirects are not followed",
                                         reason="image_url_redirect")
                if reply.status_code != 200:
                    raise InvalidRequest(f"image URL answered HTTP {reply.status_code}",
                                         reason="image_url_unreachable")
                return await _read_capped(reply, limits.max_image_bytes)
    except httpx.HTTPError:
        raise InvalidRequest("image URL could not be fetched", reason="image_url_unreachable") from None


async def _read_capped(reply: httpx.Response, max_bytes: int) -> bytes:
    declared = reply.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > max_bytes:
        raise InvalidRequest(f"image is larger than {max_bytes} bytes", reason="image_too_large")
    body = bytearray()
    async for chunk in reply.aiter_bytes():
        body += chunk
        if len(body) > max_bytes:
            raise InvalidRequest(f"image is larger than {max_bytes} bytes", reason="image_too_large")
    return bytes(body)


def as_data_url(data: bytes, mime_type: str) -> str:
    return f"data:{mime_type};base64,{base64.b64encode(data).decode()}"
