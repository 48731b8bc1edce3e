"""Decoding with PyAV/PIL: sources, sampled frames only, seeking, VFR, rotation, short videos, bad media."""

import io

import av
import numpy as np
import pytest
import torch
from media_utils import BAD_MEDIA, bad_media_case, frame_index_of, indexed_frames, write_image, write_video

from instap_processing.decoding import decode_image, decode_media, decode_video
from instap_processing.errors import InstVLSampleError
from instap_processing.sampling import sample_frame_indices


@pytest.fixture(scope="module")
def video_40(tmp_path_factory):
    """40 frames, keyframe every 4 frames, with B-frames (libx264 default)."""
    path = tmp_path_factory.mktemp("media") / "clip.mp4"
    data = write_video(indexed_frames(40), path, gop_size=4)
    return path, data


def decoded_indices(decoded) -> list[int]:
    return [frame_index_of(frame.numpy()) for frame in decoded.frames]


# ------------------------------------------------------------------------------------------------------------------
# Sampling


def test_middle_sampling_matches_segment_middles():
    assert sample_frame_indices(32, 16, "middle") == list(range(1, 32, 2))
    assert sample_frame_indices(16, 16, "middle") == list(range(16))
    assert sample_frame_indices(100, 4, "middle") == [12, 37, 62, 87]


def test_rand_sampling_takes_one_frame_per_segment_and_is_seedable():
    generator = torch.Generator().manual_seed(0)
    draws = [sample_frame_indices(100, 4, "rand", generator) for _ in range(50)]
    for indices in draws:
        for segment, index in enumerate(indices):
            assert 25 * segment <= index < 25 * (segment + 1)
    assert len({tuple(d) for d in draws}) > 40  # random, not constant
    again = [sample_frame_indices(100, 4, "rand", torch.Generator().manual_seed(0)) for _ in range(1)]
    assert again[0] == draws[0]


def test_short_video_repeats_frames_in_order():
    indices = sample_frame_indices(3, 8, "middle")
    assert len(indices) == 8 and indices == sorted(indices) and set(indices) == {0, 1, 2}
    assert sample_frame_indices(1, 4, "rand") == [0, 0, 0, 0]


def test_sampling_rejects_bad_arguments():
    with pytest.raises(ValueError):
        sample_frame_indices(0, 4)
    with pytest.raises(ValueError):
        sample_frame_indices(10, 4, "uniform")


# ------------------------------------------------------------------------------------------------------------------
# Decoding


@pytest.mark.parametrize("source_kind", ["path", "str", "bytes", "file"])
def test_decode_from_every_source_kind(video_40, source_kind):
    path, data = video_40
    source = {"path": path, "str": str(path), "bytes": data, "file": io.BytesIO(data)}[source_kind]
    decoded = decode_video(source, num_frames=8)
    assert decoded.frames.shape == (8, 3, 48, 64) and decoded.frames.dtype == torch.uint8
    assert decoded.frame_indices == sample_frame_indices(40, 8, "middle")
    assert decoded_indices(decoded) == decoded.frame_indices
    assert decoded.total_num_frames == 40 and decoded.fps == pytest.approx(10.0)
    assert not decoded.repeated_frames


@pytest.mark.parametrize("indices", [[0, 5, 9, 17, 33, 39], [39, 0, 16, 16], [8, 9, 10, 24], list(range(40))])
def test_seeking_returns_exactly_the_requested_frames(video_40, indices):
    decoded = decode_video(video_40[1], frame_indices=indices)
    assert decoded_indices(decoded) == indices


def test_only_needed_frames_are_decoded(video_40):
    """Frames after the last needed one are never decoded, and seeking skips whole GOPs."""
    decoded = decode_video(video_40[1], frame_indices=[1, 30], skip_unneeded_frames=False)
    # Frame 1 (GOP 0) and frame 30 (its GOP starts at 28): a few frames each plus decoder delay, not 31.
    assert decoded.decoded_frame_count <= 12
    assert decode_video(video_40[1]).decoded_frame_count == 40


def test_unneeded_b_frames_are_dropped_by_the_decoder():
    frames = indexed_frames(60)
    for t in range(
        60
    ):  # a small square moving along the top rows (outside the index marks): x264 uses B-frames
        frames[t, 0:8, t % 56 : t % 56 + 8] = 255
    data = write_video(frames, gop_size=60)
    with_skip = decode_video(data, frame_indices=[5, 50])
    without = decode_video(data, frame_indices=[5, 50], skip_unneeded_frames=False)
    assert decoded_indices(with_skip) == decoded_indices(without) == [5, 50]
    assert with_skip.decoded_frame_count < without.decoded_frame_count <= 60


def test_frames_come_channels_last_as_ffmpeg_writes_them(video_40):
    decoded = decode_video(video_40[1], frame_indices=[3, 20, 21])
    assert decoded.frames.shape == (3, 3, 48, 64) and decoded.frames.permute(0, 2, 3, 1).is_contiguous()
    repeated = decode_video(video_40[1], frame_indices=[21, 3, 3])  # reordered: gathered from the same frames
    assert torch.equal(repeated.frames, decoded.frames[[2, 0, 0]])
    image = decode_image(write_image(indexed_frames(1)[0], image_format="PNG"))
    assert image.frames.permute(0, 2, 3, 1).is_contiguous()


@pytest.mark.parametrize("num_threads, thread_type", [(2, "FRAME"), (2, "SLICE"), (2, "AUTO"), (0, "FRAME")])
def test_threaded_decoding_gives_the_same_frames(video_40, num_threads, thread_type):
    indices = [0, 5, 9, 17, 33, 39]
    single = decode_video(video_40[1], frame_indices=indices)
    threaded = decode_video(video_40[1], frame_indices=indices, num_threads=num_threads, thread_type=thread_type)
    assert torch.equal(threaded.frames, single.frames)


@pytest.mark.parametrize("settings", [{"thread_type": "frame"}, {"thread_type": "PARALLEL"}, {"num_threads": -1},
                                      {"num_threads": 1.5}, {"num_threads": True}])  # fmt: skip
def test_bad_thread_settings_are_refused(video_40, settings):
    with pytest.raises(ValueError, match="thread"):
        decode_video(video_40[1], num_frames=2, **settings)


def test_a_frame_size_change_within_the_stream_is_named():
    # MPEG-TS streams concatenate byte-wise: the second half has smaller frames.
    data = write_video(indexed_frames(6), container_format="mpegts", gop_size=2)
    data += write_video(indexed_frames(6, height=32, width=48), container_format="mpegts", gop_size=2)
    with pytest.raises(InstVLSampleError, match="frame size changes") as raised:
        decode_video(data, sample_id="resized")
    assert raised.value.reason == "corrupt_media" and raised.value.sample_id == "resized"
    assert decode_video(data, frame_indices=[0, 5]).frames.shape == (2, 3, 48, 64)  # the first half alone is fine


def test_variable_frame_rate_counts_frames_not_time():
    # Alternating 50 ms and 150 ms gaps: sampling by time would pick other frames than sampling by index.
    pts = np.cumsum([0] + [50 if i % 2 else 150 for i in range(29)])
    data = write_video(indexed_frames(30), pts_ms=pts.tolist())
    decoded = decode_video(data, frame_indices=[0, 7, 15, 29])
    assert decoded_indices(decoded) == [0, 7, 15, 29]
    assert decoded.timestamps == pytest.approx([pts[i] / 1000 for i in [0, 7, 15, 29]], abs=1e-3)


@pytest.mark.parametrize("rotation", [90, -90, 180])
def test_rotation_metadata_is_applied(rotation):
    frames = np.zeros((3, 48, 64, 3), dtype=np.uint8)
    frames[:, :16, :16] = 255  # white square in the top-left corner of the stored frame
    decoded = decode_video(write_video(frames, rotation=rotation, gop_size=1), num_frames=3)
    expected = np.rot90(frames[0], k=rotation // 90)
    image = decoded.frames[0].permute(1, 2, 0).numpy()
    assert image.shape == expected.shape
    assert decoded.rotation == rotation
    assert np.abs(image.astype(int) - expected.astype(int)).mean() < 8


def test_short_video_repeats_frames_and_says_so():
    decoded = decode_video(write_video(indexed_frames(3)), num_frames=8)
    assert decoded.frames.shape[0] == 8 and decoded.repeated_frames
    assert decoded_indices(decoded) == decoded.frame_indices == sample_frame_indices(3, 8)
    assert decoded.to_video_metadata().frames_indices == decoded.frame_indices


def test_decode_all_frames_when_nothing_is_sampled():
    decoded = decode_video(write_video(indexed_frames(6)))
    assert decoded_indices(decoded) == list(range(6))


def test_mpeg4_and_webm_containers_decode():
    for codec, container_format in [("mpeg4", "mp4"), ("libvpx-vp9", "webm")]:
        data = write_video(indexed_frames(10), codec=codec, container_format=container_format)
        assert decoded_indices(decode_video(data, frame_indices=[2, 7])) == [2, 7]


@pytest.mark.parametrize("image_format", ["JPEG", "PNG"])
def test_decode_image_is_one_frame(image_format):
    array = np.zeros((20, 30, 3), dtype=np.uint8)
    array[:, :10, 0] = 200
    decoded = decode_media(write_image(array, image_format=image_format), "image", num_frames=16)
    assert decoded.frames.shape == (1, 3, 20, 30) and decoded.media_type == "image"
    assert (
        decoded.frames[0, 0, :, :10].float().mean() > 150 and decoded.frames[0, 0, :, 20:].float().mean() < 50
    )


def test_image_exif_orientation_is_applied():
    array = np.zeros((20, 30, 3), dtype=np.uint8)
    decoded = decode_image(write_image(array, exif_orientation=6))  # rotate 90° clockwise for display
    assert decoded.frames.shape == (1, 3, 30, 20)


# ------------------------------------------------------------------------------------------------------------------
# Bad media: each gives an InstVLSampleError naming the sample and the reason


def expect_error(reason, function, *args, **kwargs):
    with pytest.raises(InstVLSampleError) as info:
        function(*args, sample_id="sample-7", **kwargs)
    assert info.value.reason == reason
    assert "sample-7" in str(info.value) and "media" in str(info.value)
    return info.value


@pytest.mark.parametrize("case", BAD_MEDIA)
def test_bad_media(case, tmp_path):
    media, media_type, reason = bad_media_case(case, tmp_path)
    expect_error(reason, decode_media, media, media_type, num_frames=4)


def test_truncated_faststart_video_fails_cleanly(tmp_path):
    # With the index ("moov") first, a cut-off file still opens and lists frames whose data is missing.
    path = tmp_path / "faststart.mp4"
    container = av.open(str(path), mode="w", format="mp4", options={"movflags": "faststart"})
    stream = container.add_stream("libx264", rate=10)
    stream.width, stream.height, stream.pix_fmt = 64, 48, "yuv420p"
    for frame in indexed_frames(20):
        for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
            container.mux(packet)
    for packet in stream.encode():
        container.mux(packet)
    container.close()
    data = path.read_bytes()
    with pytest.raises(InstVLSampleError) as info:
        decode_video(data[: len(data) // 2], num_frames=4, sample_id="x")
    assert info.value.reason in ("corrupt_media", "zero_frames", "truncated_media")


@pytest.mark.parametrize("container_format,codec", [("matroska", "libx264"), ("webm", "libvpx-vp9")])
def test_a_video_cut_anywhere_is_never_a_silently_shorter_video(tmp_path, container_format, codec):
    """Policy: a cut Matroska/WebM file (it still opens and demuxes, with fewer frames) is an error, never a shorter
    clip: every cut either decodes all 12 frames (11: a last frame lost is within the rounding the check allows) or
    raises a documented reason."""
    buffer = io.BytesIO()
    with av.open(buffer, mode="w", format=container_format) as container:
        stream = container.add_stream(codec, rate=8)
        stream.width, stream.height, stream.pix_fmt = 32, 32, "yuv420p"
        for frame in indexed_frames(12, height=32, width=32):
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    data = buffer.getvalue()
    assert decode_video(data, sample_id="full").total_num_frames == 12
    outcomes = set()
    for cut in range(1, len(data), max(1, len(data) // 60)):
        try:
            video = decode_video(data[:cut], num_frames=4, sample_id="cut")
        except InstVLSampleError as error:
            assert error.sample_id == "cut" and error.field == "media"
            outcomes.add(error.reason)
            continue
        assert video.total_num_frames >= 11, cut
        outcomes.add("complete")
    assert "truncated_media" in outcomes and outcomes <= {"truncated_media", "corrupt_media", "zero_frames", "complete"}


def test_frame_indices_beyond_the_video(video_40):
    error = expect_error("frame_index_out_of_range", decode_video, video_40[1], frame_indices=[3, 40])
    assert "40" in str(error)
