"""The two values the imaging package hands on: a grey pixel array and what the file said about itself."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class ImageMeta:
    """What a decoded file declared. DICOM fills most fields; a raster file only the first few.

    `photometric` is the DICOM Photometric Interpretation, or Pillow's mode ("L", "I;16") for a raster file.
    `patient_id` is PHI: callers hash it before storing anything.
    """

    format: str
    height: int
    width: int
    bits_stored: int | None = None
    photometric: str | None = None
    transfer_syntax: str | None = None
    modality: str | None = None
    body_part: str | None = None
    view: str | None = None
    sex: str | None = None
    age: int | None = None
    patient_id: str | None = None
    study_uid: str | None = None
    series_uid: str | None = None
    sop_uid: str | None = None


@dataclass(frozen=True)
class DecodedImage:
    """A single grey image: float32 (H, W) in [0, 1] where 0 is black and brighter means denser.

    `reduction` is the (rows, columns) whole factors by which a decode given a target side shrank the pixels from
    the file's own size (`meta.height` x `meta.width`); (1, 1) for a full-size decode. The two may differ, as
    the box step of a resize to a square does: such pixels are for `to_model_input(..., extent=extent)` and
    other resizes that take `extent`, not for showing as they are.
    """

    pixels: np.ndarray
    meta: ImageMeta
    reduction: tuple[int, int] = (1, 1)

    @property
    def extent(self) -> tuple[float, float] | None:
        """(height, width) the whole image spans in `pixels`' units, for `to_model_input`: a reduced decode's last
        row and column may average a partial block, so the image ends inside them. None at full size."""
        if self.reduction == (1, 1):
            return None
        return self.meta.height / self.reduction[0], self.meta.width / self.reduction[1]
