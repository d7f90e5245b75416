"""Image decoding: every bit depth and mode either converted correctly or refused clearly; any
bytes at all give a 4xx error, never another exception."""

from __future__ import annotations

import io

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from adapters import Preprocessing
from tta_server.codec.errors import ApiError
from tta_server.codec.images import decode_image

PRE = Preprocessing(input_size=(8, 8), mean=(0.5,) * 3, std=(0.5,) * 3, resize="none")


def encode(image: Image.Image, fmt: str = "PNG") -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt)
    return buffer.getvalue()


def test_16_bit_greyscale_keeps_its_range() -> None:
    grey = (np.arange(64).reshape(8, 8) * 1000).astype(np.uint16)
    tensor = decode_image(encode(Image.fromarray(grey)), "img", PRE, 10**6)
    expected = np.round(grey / 65535 * 255) / 255
    np.testing.assert_allclose(tensor[0].numpy(), expected, atol=1e-6)
    assert float(tensor.max()) > 0.9  # not clipped to white, not crushed to black


@pytest.mark.parametrize("mode", ["RGB", "L", "P", "RGBA", "LA", "CMYK", "1"])
def test_8_bit_modes_match_pillows_rgb_conversion(mode: str) -> None:
    rgb = Image.fromarray(np.random.default_rng(0).integers(0, 256, (8, 8, 3), dtype=np.uint8))
    image = rgb.convert(mode)
    data = encode(image, "TIFF" if mode == "CMYK" else "PNG")
    reference = np.asarray(Image.open(io.BytesIO(data)).convert("RGB"), dtype=np.float32) / 255
    np.testing.assert_allclose(decode_image(data, "img", PRE, 10**6).permute(1, 2, 0).numpy(), reference)


@pytest.mark.parametrize(
    ("array", "fragment"),
    [
        (np.random.default_rng(0).random((8, 8)).astype(np.float32), "floating-point"),
        ((np.arange(64).reshape(8, 8) * 10**6).astype(np.int32), "32-bit integer"),
    ],
)
def test_images_without_a_defined_range_are_refused(array: np.ndarray, fragment: str) -> None:
    with pytest.raises(ApiError, match=fragment) as raised:
        decode_image(encode(Image.fromarray(array), "TIFF"), "img", PRE, 10**6)
    assert raised.value.status == 422


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=512), st.sampled_from([b"", b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff", b"GIF89a", b"II*\x00"]))
def test_arbitrary_bytes_give_a_4xx_or_an_image(payload: bytes, magic: bytes) -> None:
    try:
        tensor = decode_image(magic + payload, "img", PRE, 10**6)
    except ApiError as exc:
        assert exc.status == 422 and exc.message.startswith("img")
    else:
        assert tensor.shape == (3, 8, 8)


@pytest.mark.parametrize(("payload", "fragment"), [(b"", "is empty"), (b"hello, world", "not in an image format")])
def test_unreadable_files_are_named_without_internal_object_names(payload: bytes, fragment: str) -> None:
    with pytest.raises(ApiError) as caught:
        decode_image(payload, "image 0 (a.bin)", PRE, 10**6)
    assert caught.value.status == 422
    assert fragment in caught.value.message and "PNG, JPEG" in caught.value.message
    assert "BytesIO" not in caught.value.message and "0x" not in caught.value.message
