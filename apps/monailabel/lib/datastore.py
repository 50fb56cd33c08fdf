"""The app's local datastore: MONAI Label's, with final labels checked before they are stored.

``PUT /datastore/label?image=<id>&tag=final`` stores a file only when
:func:`mssn_monai.data.annotations.read_point_labels` reads it (ASAP XML, QuPath GeoJSON or DSA JSON);
anything else is answered ``422`` with one line naming the image and what is wrong, the same line goes to
the server log, and the datastore is left as it was. Other tags are stored as they come.
"""

from __future__ import annotations

import logging
import pathlib

from fastapi import HTTPException
from monailabel.datastore.local import LocalDatastore
from monailabel.interfaces.datastore import DefaultLabelTag

from lib.core import check_label_file

logger = logging.getLogger(__name__)


class PointLabelDatastore(LocalDatastore):
    """A :class:`LocalDatastore` that rejects a final label it cannot read as mitosis / mimic points."""

    def save_label(self, image_id, label_filename, label_tag, label_info):
        if (label_tag or DefaultLabelTag.FINAL.value) == DefaultLabelTag.FINAL.value:
            ext = "".join(pathlib.Path(label_filename).suffixes)
            try:
                points = check_label_file(label_filename, name=f"for image {image_id!r} (uploaded *{ext})")
            except ValueError as e:
                logger.error(str(e))
                raise HTTPException(status_code=422, detail=str(e)) from e
            logger.info(
                f"label for {image_id}: {len(points.mitoses)} mitoses, {len(points.mimics)} mimics"
                + (f", ignored classes {points.ignored}" if points.ignored else "")
            )
            label_info = {**(label_info or {}), "mitoses": len(points.mitoses), "mimics": len(points.mimics)}
        return super().save_label(image_id, label_filename, label_tag, label_info)
