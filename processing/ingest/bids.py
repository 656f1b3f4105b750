"""BIDS file-name entities and sidecar inheritance (BIDS 1.9, Appendix: entity table).

Only names are handled here; listing files is the engine's job, so the same rules apply to a
local folder and to ``s3://``.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

# Entities in the order BIDS requires them in a file name.
ENTITY_ORDER: tuple[str, ...] = (
    "sub", "ses", "sample", "task", "tracksys", "acq", "nuc", "voi", "ce", "trc", "stain",
    "rec", "dir", "run", "mod", "echo", "flip", "inv", "mt", "part", "proc", "hemi", "space",
    "split", "recording", "chunk", "seg", "res", "den", "label", "from", "to", "mode", "desc",
    "contrast", "stat",  # statistical derivatives (BIDS Stats Models outputs)
)  # fmt: skip
_KNOWN = frozenset(ENTITY_ORDER)
_PAIR = re.compile(r"^([a-zA-Z]+)-([a-zA-Z0-9+]+)$")
_EXTENSIONS = (".nii.gz", ".nii", ".tsv.gz", ".tsv", ".json", ".bval", ".bvec", ".zarr")


class BidsNameError(ValueError):
    """A file name that does not follow the BIDS entity rules."""


@dataclass(frozen=True)
class BidsFile:
    """One BIDS file identified by its name.

    Attributes
    ----------
    path : str
        Path or URL as listed (not opened here).
    entities : dict
        Entity key -> label, e.g. ``{"sub": "01", "ses": "pre", "task": "cuff", "run": "1"}``.
    suffix : str
        ``bold``, ``events``, ``T1w``, ...
    extension : str
        ``.nii.gz``, ``.tsv``, ``.json``, ...
    """

    path: str
    entities: Mapping[str, str] = field(hash=False)
    suffix: str
    extension: str

    @property
    def stem(self) -> str:
        """The name without extension, e.g. ``sub-01_task-x_run-1_bold``."""
        return build_bids_name(self.entities, self.suffix)

    def get(self, key: str, default: str | None = None) -> str | None:
        """Entity value or ``default``."""
        return self.entities.get(key, default)


def build_bids_name(entities: Mapping[str, str], suffix: str, extension: str = "") -> str:
    """Compose a BIDS name with entities in the canonical order."""
    parts = [f"{key}-{entities[key]}" for key in ENTITY_ORDER if key in entities]
    return "_".join([*parts, suffix]) + extension


def parse_bids_name(path: str) -> BidsFile:
    """Split a BIDS file name into entities, suffix and extension.

    Parameters
    ----------
    path : str
        A path or URL whose last component is a BIDS name.

    Raises
    ------
    BidsNameError
        Unknown entity, malformed ``key-label`` pair, or repeated entity; the message names the
        file and the offending part.
    """
    name = path.rstrip("/").rsplit("/", 1)[-1]
    extension = next((ext for ext in _EXTENSIONS if name.endswith(ext)), "")
    if not extension and "." in name:
        extension = name[name.index(".") :]
    body = name[: len(name) - len(extension)] if extension else name
    *pairs, suffix = body.split("_")
    if not suffix or "-" in suffix:
        raise BidsNameError(f"{path}: no suffix after the entities (expected e.g. '_bold').")
    entities: dict[str, str] = {}
    for pair in pairs:
        match = _PAIR.match(pair)
        if match is None:
            raise BidsNameError(
                f"{path}: '{pair}' is not a key-label pair; labels are letters and digits only."
            )
        key, label = match.groups()
        if key not in _KNOWN:
            raise BidsNameError(
                f"{path}: unknown BIDS entity '{key}' in '{pair}'. Known entities: "
                f"{', '.join(ENTITY_ORDER)}. Rename the file or move it out of the dataset."
            )
        if key in entities:
            raise BidsNameError(f"{path}: entity '{key}' appears twice.")
        entities[key] = label
    return BidsFile(path=path, entities=entities, suffix=suffix, extension=extension)


def inheritance_chain(target: BidsFile, candidates: Iterable[BidsFile]) -> list[BidsFile]:
    """Sidecars that apply to ``target`` by the BIDS inheritance principle, least specific first.

    A candidate applies when it has the same suffix, and each of its entities is present in the
    target with the same label. Candidates must already be restricted to the target's directory
    and its parents (the engine knows directories; this function knows names).
    """
    applicable = [
        c
        for c in candidates
        if c.suffix == target.suffix
        and c.extension == ".json"
        and all(target.entities.get(k) == v for k, v in c.entities.items())
    ]
    return sorted(applicable, key=lambda c: (len(c.entities), c.path.count("/")))


def merge_sidecars(chain: Iterable[Mapping[str, object]]) -> dict[str, object]:
    """Merge sidecar dictionaries, later (more specific) ones overriding earlier ones."""
    merged: dict[str, object] = {}
    for sidecar in chain:
        merged.update(sidecar)
    return merged
