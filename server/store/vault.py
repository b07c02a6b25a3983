"""Image files: atomic writes, thumbnails, signed temporary URLs.

Layout under the vault root: `keep/` holds images saved to the vault (permanent),
`temporary/` those of `save_to_vault: false` requests (purged once their link expires).
Every file is named by a random 128-bit token, so a vault URL is a capability: it cannot
be guessed, and it is the only handle on the file.
"""

from __future__ import annotations

import hashlib
import hmac
import io
import os
import secrets
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from PIL import ExifTags, Image
from PIL.PngImagePlugin import PngInfo

THUMBNAIL_SIZE = 256
TEMP_PREFIX = ".tmp-"
PIL_FORMATS = {"jpeg": "JPEG", "png": "PNG", "webp": "WEBP"}
MEDIA_TYPES = {"jpeg": "image/jpeg", "png": "image/png", "webp": "image/webp"}
EXTENSIONS = {"jpeg": "jpg", "png": "png", "webp": "webp"}


@dataclass(frozen=True)
class StoredFiles:
    token: str
    file_name: str
    thumb_name: str


class Vault:
    def __init__(self, root: Path, secret: bytes) -> None:
        self.root = root
        self._secret = secret
        for area in ("keep", "temporary", "inputs"):
            (root / area).mkdir(parents=True, exist_ok=True)

    @classmethod
    def open(cls, root: Path, shared_key: Callable[[bytes | None], bytes] | None = None) -> Vault:
        """Open the vault. `shared_key` (the store's signing_key) gives the key every node
        signs links with, made from this vault's own signing.key where one exists from
        before; without it the key is that file, created on first use."""
        root.mkdir(parents=True, exist_ok=True)
        key_path = root / "signing.key"
        legacy = key_path.read_bytes() if key_path.exists() else None
        if shared_key is not None:
            return cls(root, shared_key(legacy))
        if legacy is None:
            _write_atomic(key_path, secrets.token_bytes(32), mode=0o600)
        return cls(root, key_path.read_bytes())

    def save(
        self, image: Image.Image, fmt: str, quality: int, in_vault: bool, parameters: str
    ) -> StoredFiles:
        token = secrets.token_urlsafe(16)
        folder = f"{'keep' if in_vault else 'temporary'}/{token[:2]}"
        file_name = f"{folder}/{token}.{EXTENSIONS[fmt]}"
        thumb_name = f"{folder}/{token}.thumb.webp"
        _write_atomic(self.root / file_name, encode(image, fmt, quality, parameters))
        try:
            _write_atomic(self.root / thumb_name, thumbnail(image))
        except BaseException:
            (self.root / file_name).unlink(missing_ok=True)
            raise
        return StoredFiles(token, file_name, thumb_name)

    def save_input(self, png: bytes) -> tuple[str, str]:
        """Store an input image (an img2img's init image or mask) once per content: its
        vault name and SHA-256. The generations naming it are in the database
        (server/store/inputs.py); the orphan sweep removes one none names."""
        digest = hashlib.sha256(png).hexdigest()
        name = f"inputs/{digest[:2]}/{digest}.png"
        try:  # used again: new to the orphan sweep's age rule
            os.utime(self.root / name)
        except FileNotFoundError:
            self.write_inputs({name: png})
        return name, digest

    def write_inputs(self, files: dict[str, bytes]) -> None:
        """Write the input files (by vault name) that are not there."""
        for name, png in files.items():
            path = self.root / name
            if not path.exists():
                path.parent.mkdir(parents=True, exist_ok=True)
                _write_atomic(path, png)

    def remove_inputs(
        self, names: Iterable[str], named: Callable[[list[str]], set[str]]
    ) -> list[str]:
        """Remove input files no generation names, as far as the database said: `named`
        tells which of some names a generation names now. An admission may be naming one
        at this moment (it found the file, its record is not committed yet), so each file
        is read, removed, then put back if `named` says so once it is gone; the admission
        writes its inputs again after committing (write_inputs). Whichever side goes last,
        a named input stays. The names removed."""
        held: dict[str, bytes] = {}
        for name in names:
            path = self.root / name
            try:
                held[name] = path.read_bytes()
            except FileNotFoundError:
                continue
            path.unlink(missing_ok=True)
        kept = named(list(held)) if held else set()
        self.write_inputs({name: held[name] for name in kept})
        return [name for name in held if name not in kept]

    def path(self, name: str) -> Path:
        return self.root / name

    def delete(self, *names: str) -> None:
        for name in names:
            (self.root / name).unlink(missing_ok=True)

    def sign(self, name: str, expires: int) -> str:
        message = f"{name}:{expires}".encode()
        return hmac.new(self._secret, message, hashlib.sha256).hexdigest()[:32]

    def verify(self, name: str, expires: int, signature: str) -> bool:
        return expires >= time.time() and hmac.compare_digest(self.sign(name, expires), signature)

    def remove_orphans(self, referenced: set[str], min_age: float = 0.0) -> int:
        """Delete half-written temp files and files no record points to (a crash between
        writing an image or an input and committing its record). Run before the worker starts; on a
        vault other nodes write to, only files older than `min_age` seconds."""
        removed = 0
        newest = time.time() - min_age
        for area in ("keep", "temporary", "inputs"):
            for path in (self.root / area).rglob("*"):
                if not path.is_file() or (min_age > 0 and path.stat().st_mtime > newest):
                    continue
                name = path.relative_to(self.root).as_posix()
                if path.name.startswith(TEMP_PREFIX) or name not in referenced:
                    path.unlink(missing_ok=True)
                    removed += 1
        return removed


def encode(image: Image.Image, fmt: str, quality: int, parameters: str) -> bytes:
    buffer = io.BytesIO()
    if fmt == "png":
        # AUTOMATIC1111's "parameters" chunk: its PNG Info tab and ComfyUI read it back.
        info = PngInfo()
        info.add_text("parameters", parameters)
        # PNG is lossless; quality maps onto compression effort (higher quality, less effort).
        image.save(
            buffer, "PNG", pnginfo=info, compress_level=max(0, min(9, (100 - quality) // 10))
        )
    else:
        image.convert("RGB").save(
            buffer, PIL_FORMATS[fmt], quality=quality, exif=infotext_exif(parameters)
        )
    return buffer.getvalue()


def infotext_exif(parameters: str) -> Image.Exif:
    """The infotext as EXIF UserComment, as AUTOMATIC1111 writes it into JPEG and WebP
    (piexif's `UserComment.dump(text, encoding="unicode")`: the `UNICODE\\0` prefix, then
    UTF-16 in the big-endian byte order of piexif's TIFF header), so its PNG Info tab and
    `darkroom reproduce` read it back."""
    exif = Image.Exif()
    exif.endian = ">"
    exif.get_ifd(ExifTags.IFD.Exif)[ExifTags.Base.UserComment] = (
        b"UNICODE\0" + parameters.encode("utf-16-be")
    )
    return exif


def read_infotext(path: Path) -> str | None:
    """The infotext an image file carries (PNG `parameters`, or EXIF UserComment)."""
    try:
        with Image.open(path) as image:
            text = getattr(image, "text", {}).get("parameters")
            if text is not None:
                return str(text)
            comment = image.getexif().get_ifd(ExifTags.IFD.Exif).get(ExifTags.Base.UserComment)
    except OSError:
        return None
    if isinstance(comment, bytes) and comment.startswith(b"UNICODE\0"):
        return comment[8:].decode("utf-16-be", errors="replace")
    return comment if isinstance(comment, str) else None


def thumbnail(image: Image.Image) -> bytes:
    small = image.convert("RGB")
    small.thumbnail((THUMBNAIL_SIZE, THUMBNAIL_SIZE))
    buffer = io.BytesIO()
    small.save(buffer, "WEBP", quality=80)
    return buffer.getvalue()


def _write_atomic(path: Path, data: bytes, mode: int = 0o644) -> None:
    """Temp file + fsync + rename + fsync of the folder: a reader sees all or nothing."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temp = path.with_name(f"{TEMP_PREFIX}{secrets.token_hex(8)}-{path.name}")
    try:
        fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
        with os.fdopen(fd, "wb") as file:
            file.write(data)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temp, path)
    except BaseException:
        temp.unlink(missing_ok=True)
        raise
    folder = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(folder)
    finally:
        os.close(folder)
