"""File -> pixels: sniff (DICOM by its magic, never the extension), decode DICOM or raster, preprocess.

Every failure is a `DecodeError(path, reason)`; no decoder's own exception escapes.
"""

from services.imaging.decode import decode_bytes, decode_image, max_file_bytes
from services.imaging.files import read_regular_file
from services.imaging.preprocess import to_model_input
from services.imaging.sniff import is_dicom
from services.imaging.types import DecodedImage, ImageMeta

__all__ = [
    "DecodedImage",
    "ImageMeta",
    "decode_bytes",
    "decode_image",
    "is_dicom",
    "max_file_bytes",
    "read_regular_file",
    "to_model_input",
]
