"""What a normalization job is given: the image's description and the settings."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bidstrain.config import NormalizeConfig, TimeConfig
from bidstrain.dataset.bids import parse_name
from bidstrain.errors import BidstrainError

#: The config key of each modality's mask, for error messages.


@dataclass(frozen=True)
class ImageInfo:
    """What normalization needs to know about an image besides its voxels.

    Attributes
    ----------
    modality : str
        ``bold``, ``T1w`` or ``dwi``.
    subject : str
        Subject label.
    session : str
        Session label, or ``""``.
    entities : dict
        BIDS entities of the file name.
    repetition_time : float or None
        Seconds between volumes (BOLD); None otherwise.
    bval : list of float or None
        DWI b-values, one per volume.
    bvec : list of list of float or None
        DWI b-vectors, 3 rows of one value per volume (as in ``.bvec``).
    """

    modality: str
    subject: str
    session: str = ""
    entities: dict[str, str] = field(default_factory=dict)
    repetition_time: float | None = None
    bval: list[float] | None = None
    bvec: list[list[float]] | None = None

    @classmethod
    def from_ingest(cls, subject_record: Mapping[str, Any], image: str | Path) -> ImageInfo:
        """The entry of ``image`` in a subject's ingest record (what
        ``results/ingest/sub-X.json`` holds: :func:`bidstrain.ingest.records.ingest_images`).

        Raises
        ------
        BidstrainError
            When the record has no entry of the image.
        """
        wanted = Path(image).resolve()
        for record in subject_record["images"]:
            if Path(record["path"]).resolve() == wanted:
                return cls(
                    modality=record["modality"],
                    subject=record["subject"],
                    session=record["session"],
                    entities=dict(record["entities"]),
                    repetition_time=record["repetition_time"],
                    bval=record.get("bval"),
                    bvec=record.get("bvec"),
                )
        raise BidstrainError(
            "no entry of this image in the subject's ingest record (rerun its normalize job)",
            path=image,
            subject=subject_record.get("subject"),
        )

    @classmethod
    def from_name(cls, image: str | Path, repetition_time: float | None) -> ImageInfo:
        """Describe an image from its BIDS file name alone (data that arrives later)."""
        parsed = parse_name(Path(image).name)
        if parsed is None or "sub" not in parsed[0]:
            raise BidstrainError("not a BIDS file name (sub-<label>_..._bold.nii[.gz])", path=image)
        entities, suffix, _ = parsed
        return cls(
            modality=suffix,
            subject=entities["sub"],
            session=entities.get("ses", ""),
            entities=entities,
            repetition_time=repetition_time,
        )


@dataclass(frozen=True)
class Options:
    """How one image is normalized: its mask, and the job's ``normalize`` settings
    (:meth:`from_config`; the schema holds their defaults).

    Attributes
    ----------
    mask : str
        ``epi``, ``head``, ``none`` or the path of a mask image (see
        :mod:`bidstrain.normalize.masking`).
    ddof : int
        Delta degrees of freedom of the standard deviation.
    nonfinite : {"error", "mask"}
        What NaN/Inf inside the mask does: an error, or the voxel leaves the mask (counted).
        NaN/Inf outside the mask is never read into the store and is ignored.
    block_volumes : int
        Volumes per streamed block; rounded up to a whole number of store chunks.
    storage : str
        How the store keeps the normalized values: ``float32`` (exact), ``float16`` or
        ``bitround-N`` (:class:`bidstrain.io.store.Storage`).
    target_tr : float or None
        The repetition time BOLD runs are resampled to (config ``time.tr``); None keeps
        each run's.
    time_method : str
        How (config ``time.method``: :mod:`bidstrain.normalize.resample_time`).
    """

    mask: str
    ddof: int
    nonfinite: str
    block_volumes: int
    storage: str
    target_tr: float | None
    time_method: str

    @classmethod
    def from_config(cls, normalize: NormalizeConfig, time: TimeConfig, mask: str) -> Options:
        """The options of an image with ``mask`` under the ``normalize`` and ``time``
        sections."""
        return cls(
            mask=mask,
            ddof=normalize.ddof,
            nonfinite=normalize.nonfinite,
            block_volumes=normalize.block_volumes,
            storage=normalize.storage,
            target_tr=time.target_tr,
            time_method=time.method,
        )
