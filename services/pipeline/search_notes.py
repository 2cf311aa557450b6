"""What a reader needs beside the ranked hits: how close they are on a scale that means something (a band from
services.pipeline.similarity_band), whether a hit is the query's own patient, the tally's honest title, and
warnings when the neighbours cannot be taken at face value.

Warning codes (stable, for clients to switch on):
- `far_neighbours`: the best hit scores below the collection's 5th percentile of nearest-neighbour scores.
- `one_source`: every hit comes from one source.
- `age_group`: every hit with an age is pediatric (< 18) while the query is adult, or the reverse (only when the
  query's age is known).
- `no_age_dropped`: an age filter left out the films that have no age (the message says how many).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from services.index import Hit
from services.pipeline.similarity_band import Calibration

ADULT_AGE = 18


@dataclass(frozen=True)
class HitNote:
    """One hit's percentile and band (None without a calibration, or for recommend scores) and whether it is
    the query's own patient."""

    percentile: float | None
    band: str | None
    same_patient: bool


def hit_notes(
    hits: Sequence[Hit], calibration: Calibration | None, *, query_patient: str | None, cosine: bool = True
) -> list[HitNote]:
    """A note per hit. Bands need cosine scores: a recommend score is on another scale and gets none."""
    out = []
    for h in hits:
        percentile, band = calibration.band(h.score) if calibration is not None and cosine else (None, None)
        same = query_patient is not None and h.payload.get("patient_hash") == query_patient
        out.append(HitNote(percentile, band, same))
    return out


def tally_title(n: int) -> str:
    """The label tally is the neighbours' labels, not a diagnosis: say so."""
    return f"labels of the {n} most similar film{'' if n == 1 else 's'}"


def warnings_for(
    hits: Sequence[Hit],
    calibration: Calibration | None,
    *,
    query_age: int | None = None,
    no_age_dropped: int | None = None,
    cosine: bool = True,
) -> list[dict[str, str]]:
    """The warnings that hold for these hits, in the order a reader should see them."""
    out: list[dict[str, str]] = []
    if hits and calibration is not None and cosine and hits[0].score < calibration.p05:
        out.append(
            {
                "code": "far_neighbours",
                "message": f"the best match scores {hits[0].score:.3f}, below what 95% of the films here score "
                f"against their nearest neighbour ({calibration.p05:.3f}): this image is unlike the archive, "
                "so its neighbours say little about it",
            }
        )
    sources = {h.payload.get("source") for h in hits}
    if len(hits) > 1 and len(sources) == 1 and None not in sources:
        out.append(
            {
                "code": "one_source",
                "message": f"every result comes from one source ({sources.pop()}): the "
                "neighbours may share how that source acquired or processed its films",
            }
        )
    ages = [a for h in hits if isinstance(a := h.payload.get("age"), int | float)]
    if query_age is not None and ages:
        query_adult = query_age >= ADULT_AGE
        if all((a >= ADULT_AGE) != query_adult for a in ages):
            them, it = ("pediatric", "an adult") if query_adult else ("adult", "a pediatric")
            out.append(
                {
                    "code": "age_group",
                    "message": f"every result with an age is {them} while the query is {it} "
                    "film: the labels of the neighbours may not carry over",
                }
            )
    if no_age_dropped:
        out.append(
            {
                "code": "no_age_dropped",
                "message": f"the age filter leaves out the {no_age_dropped} "
                f"{'film here that has' if no_age_dropped == 1 else 'films here that have'} no recorded age",
            }
        )
    return out
