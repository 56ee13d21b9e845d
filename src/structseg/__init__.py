"""structseg: semantic segmentation with CNNs and structured prediction."""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from structseg.engine.predict import Predictor

__version__ = "0.1.0"


def from_pretrained(path: Any, **options: Any) -> Predictor:
    """A :class:`~structseg.engine.predict.Predictor` from a directory ``structseg export --format pretrained`` (or
    :func:`structseg.engine.pretrained.save_pretrained`) wrote; see there for the options."""
    from structseg.engine.pretrained import from_pretrained as load

    return load(path, **options)
