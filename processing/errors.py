"""Error classes raised by the InstAP data pipeline.

Every problem with one sample (bad media, bad boxes, bad captions) raises [`InstVLSampleError`], whose message names
the sample id and the field at fault, and whose `reason` is a short stable code so that training streams can count
skipped samples per reason.
"""

from __future__ import annotations

__all__ = ["BAD_SAMPLE_REASONS", "InstVLSampleError", "TooManyBadSamplesError"]


# The stable reason codes. Streams count skipped samples per code, so keep these short and do not rename them.
BAD_SAMPLE_REASONS = (
    "missing_file",  # a media path that does not exist under the media root
    "unsafe_media_path",  # a media path that resolves outside the data root (`../`, an absolute path elsewhere)
    "corrupt_media",  # bytes that FFmpeg/PIL cannot parse or decode (garbage, truncated)
    "truncated_media",  # a video cut short: fewer frames than its container declares, or listed frames that do not decode
    "zero_frames",  # a container without any video frame (no video stream, or an empty one)
    "unsupported_codec",  # a video stream for which this FFmpeg build has no decoder
    "malformed_record",  # a record that does not follow the InstVL schema (missing/ill-typed field)
    "malformed_instances",  # the `instances` field or one instance is not in the schema
    "bad_caption",  # empty caption, or bytes that are not UTF-8
    "invalid_box",  # x2 < x1 or y2 < y1
    "nan_coordinates",  # NaN or infinite box coordinates
    "box_outside_frame",  # a box that does not overlap the frame at all
    "frame_index_out_of_range",  # a trajectory frame index < 0 or >= the number of frames of the video
)


class InstVLSampleError(ValueError):
    """A sample of an InstVL data set cannot be used.

    Args:
        message (`str`):
            What is wrong, in words.
        sample_id (`str`, *optional*):
            The `id` of the record. Decoding helpers that do not know it leave it `None`; the data pipeline fills it
            in with [`~InstVLSampleError.with_context`] before the error reaches the user.
        field (`str`, *optional*):
            The field at fault, e.g. `"media"`, `"caption"` or `"instances[2].boxes[5]"`.
        reason (`str`, *optional*, defaults to `"malformed_record"`):
            One of [`BAD_SAMPLE_REASONS`].
    """

    def __init__(
        self,
        message: str,
        *,
        sample_id: str | None = None,
        field: str | None = None,
        reason: str = "malformed_record",
    ) -> None:
        if reason not in BAD_SAMPLE_REASONS:
            raise ValueError(f"Unknown bad-sample reason {reason!r}; expected one of {BAD_SAMPLE_REASONS}.")
        self.detail = message
        self.sample_id = sample_id
        self.field = field
        self.reason = reason
        super().__init__(self._format())

    def _format(self) -> str:
        sample = repr(self.sample_id) if self.sample_id is not None else "<unknown id>"
        field = f", field {self.field!r}" if self.field else ""
        return f"InstVL sample {sample}{field} [{self.reason}]: {self.detail}"

    def __str__(self) -> str:
        return self._format()

    def __reduce__(self):
        # Keyword-only constructor arguments: teach pickle (DataLoader workers send errors to the main process).
        return (_rebuild_sample_error, (self.detail, self.sample_id, self.field, self.reason))

    def with_context(self, sample_id: str | None = None, field: str | None = None) -> InstVLSampleError:
        """Fills in the sample id and/or the field where they are still unknown, and returns `self`."""
        if self.sample_id is None and sample_id is not None:
            self.sample_id = sample_id
        if self.field is None and field is not None:
            self.field = field
        self.args = (self._format(),)
        return self


def _rebuild_sample_error(detail, sample_id, field, reason) -> InstVLSampleError:
    return InstVLSampleError(detail, sample_id=sample_id, field=field, reason=reason)


class TooManyBadSamplesError(RuntimeError):
    """Raised by training streams when the number (or share) of skipped samples passes its cap.

    It exists so that a broken data set (wrong media root, wrong codec, wrong schema) stops training loudly instead
    of training on almost nothing.
    """
