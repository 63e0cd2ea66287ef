"""Reading images (files, bytes, or in-memory arrays) into RGB float arrays in [0, 1], and masks into booleans."""

from __future__ import annotations

import hashlib
import io
import warnings
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

from defectmap.errors import DataError


class ImageTooLarge(DataError):
    """The image has more pixels than the configured limit (data.max_pixels)."""


IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")


def is_image_file(path: Path) -> bool:
    return path.is_file() and path.suffix.lower() in IMAGE_SUFFIXES and not path.name.startswith(".")


def file_digest(path: Path) -> str:
    """A short hash of a file's bytes: the same image under another name or folder has the same one."""
    with open(path, "rb") as f:
        return hashlib.file_digest(f, lambda: hashlib.blake2b(digest_size=16)).hexdigest()


def _open(path: Path | io.BytesIO, max_pixels: int, name: str | None = None) -> Image.Image:
    """Open and fully decode an image file or in-memory bytes (`name` labels the bytes in errors)."""
    if isinstance(path, Path):
        if not path.is_file():
            raise DataError(f"image {path} does not exist")
        if path.stat().st_size == 0:
            raise DataError(f"image {path} is an empty file")
    else:
        if not path.getbuffer().nbytes:
            raise DataError(f"image {name} is empty")
        path.name = name  # so error messages below name it
    previous = Image.MAX_IMAGE_PIXELS
    Image.MAX_IMAGE_PIXELS = max_pixels
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            warnings.filterwarnings("error", message="Truncated File Read")  # PIL's TIFF reader only warns
            warnings.filterwarnings("ignore", message="Corrupt EXIF data")
            image = Image.open(path)
            if image.width * image.height > max_pixels:
                raise ImageTooLarge(
                    f"image {path} has {image.width}x{image.height} pixels, over the limit of {max_pixels}; "
                    "raise data.max_pixels if it is genuine"
                )
            image.load()
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ImageTooLarge(f"image {path} exceeds the pixel limit {max_pixels}; raise data.max_pixels") from exc
    except UnidentifiedImageError as exc:
        raise DataError(f"{path} is not a readable image (expected PNG, JPG, BMP or TIFF)") from exc
    except (OSError, SyntaxError, ValueError, UserWarning) as exc:
        raise DataError(f"image {path} is damaged or truncated: {exc}") from exc
    finally:
        Image.MAX_IMAGE_PIXELS = previous
    return ImageOps.exif_transpose(image)


def load_image(path: str | Path, max_pixels: int = 100_000_000) -> np.ndarray:
    """An image as an (H, W, 3) float32 array in [0, 1].

    Grayscale is repeated to three channels; alpha is dropped (composited on black); palette and
    CMYK images are converted; 16-bit and 32-bit integer images are scaled by their full range.
    """
    return to_rgb_array(_open(Path(path), max_pixels))


def decode_image(data: bytes, name: str = "upload", max_pixels: int = 100_000_000) -> np.ndarray:
    """Like `load_image`, for the bytes of an image file (the service's uploads)."""
    return to_rgb_array(_open(io.BytesIO(data), max_pixels, name))


def image_from_memory(image, max_pixels: int = 100_000_000) -> np.ndarray:
    """An in-memory image (a PIL image, or a numpy array (H, W), (H, W, 1), (H, W, 3) RGB or (H, W, 4) RGBA) as
    `load_image` would give it from a file: uint8 and uint16 by their full range, bool as 0/1, floats as they
    are (they must lie in [0, 1]), alpha composited on black. A PIL image gets its EXIF orientation, as a file does.
    """
    if isinstance(image, Image.Image):
        if image.width * image.height > max_pixels:
            raise ImageTooLarge(f"image of {image.width}x{image.height} pixels is over the limit of {max_pixels}")
        return to_rgb_array(ImageOps.exif_transpose(image))
    if isinstance(image, torch.Tensor):  # torch's layout is (C, H, W); not guessed here
        raise DataError("give a numpy array (H, W, C), not a tensor: t.permute(1, 2, 0).cpu().numpy() for (C, H, W)")
    if not isinstance(image, np.ndarray):
        raise DataError(
            f"cannot read an image from a {type(image).__name__}: give a file path, a PIL image or a numpy array"
        )
    if image.ndim == 3 and image.shape[2] not in (1, 3, 4) and image.shape[0] in (1, 3, 4):
        raise DataError(f"array of shape {image.shape} looks channels-first: give (H, W, C), e.g. a.transpose(1, 2, 0)")
    if image.ndim not in (2, 3) or (image.ndim == 3 and image.shape[2] not in (1, 3, 4)) or 0 in image.shape:
        raise DataError(f"array of shape {image.shape} is not an image: expected (H, W) or (H, W, C) with C 1, 3 or 4")
    if image.shape[0] * image.shape[1] > max_pixels:
        raise ImageTooLarge(f"image of {image.shape[1]}x{image.shape[0]} pixels is over the limit of {max_pixels}")
    if image.dtype in (np.uint8, np.uint16):
        values = image.astype(np.float32) / np.iinfo(image.dtype).max
    elif image.dtype == np.bool_ or np.issubdtype(image.dtype, np.floating):
        values = image.astype(np.float32)
        if not np.isfinite(values).all() or values.min() < 0 or values.max() > 1:
            raise DataError("a float image must hold finite values in [0, 1]; divide 8-bit values by 255")
    else:
        raise DataError(f"arrays of {image.dtype} are not read as images: give uint8, uint16, bool or float in [0, 1]")
    if values.ndim == 2 or values.shape[2] == 1:
        return np.repeat(values.reshape(values.shape[0], values.shape[1], 1), 3, axis=2)
    if values.shape[2] == 4:
        return values[:, :, :3] * values[:, :, 3:]
    return np.ascontiguousarray(values)


def to_rgb_array(image: Image.Image) -> np.ndarray:
    if image.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        values = np.asarray(image, dtype=np.float32)
        peak = 65535.0 if image.mode.startswith("I;16") or values.max() <= 65535 else float(values.max())
        gray = np.clip(values / peak, 0.0, 1.0)
        return np.repeat(gray[:, :, None], 3, axis=2)
    if image.mode == "F":
        gray = np.clip(np.asarray(image, dtype=np.float32), 0.0, 1.0)
        return np.repeat(gray[:, :, None], 3, axis=2)
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        values = np.asarray(rgba, dtype=np.float32) / 255.0
        return values[:, :, :3] * values[:, :, 3:]
    return np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0


def load_mask(path: str | Path, size: tuple[int, int], max_pixels: int = 100_000_000) -> np.ndarray:
    """A ground-truth mask as an (H, W) bool array; pixels above half the range are defects.

    `size` is the (H, W) of the image it belongs to: a mask of another size is an error.
    """
    path = Path(path)
    image = _open(path, max_pixels)
    if image.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        values = np.asarray(image, dtype=np.float32)
        mask = values > (32767.5 if image.mode != "F" else 0.5)
    else:
        mask = np.asarray(image.convert("L")) > 127
    if mask.shape != tuple(size):
        raise DataError(f"mask {path} is {mask.shape[1]}x{mask.shape[0]} but its image is {size[1]}x{size[0]}")
    return mask
