"""Decoding and data-loading throughput of the InstAP data pipeline.

Three measurements, in one run:

1. Clips per second for sampling 16 frames (`"rand"`, training) at 224² from a 20 s MP4 made here (H.264 through
   PyAV), with the project's decoder (`instap_processing.decode_video`: demux index, decode only up to each needed
   frame, seek to keyframes) against decoding every frame with PyAV, for two keyframe intervals. Both then go through
   the same `InstAPVideoProcessor` (random resized crop, flip, normalize to 224²), and both decode with one FFmpeg
   thread, as DataLoader workers do.
2. Samples per second of the whole loader (`InstVLIterableDataset` + `DataLoader(num_workers=2)` +
   `InstAPDataCollator`: decode, crops, tokenization) at 224² x 16 frames, and at the tiny model's input size.
3. The training-step time of the `tiny` model preset (forward, backward, AdamW) on batches from that loader, to say
   whether loading or compute bounds a step at that size.

    python benchmarks/bench_decode.py            # about a minute on 2 CPU cores
    python benchmarks/bench_decode.py --seconds 30 --width 640 --height 360 --clips 6
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time

import av
import numpy as np
import torch
from torch.utils.data import DataLoader

from instap_processing import InstAPProcessor, InstAPVideoProcessor, decode_video, sample_frame_indices  # noqa: E402
from instap_processing.collator import InstAPDataCollator  # noqa: E402
from instap_processing.streaming import InstVLIterableDataset  # noqa: E402
from instap_processing.synthetic import SyntheticConfig, available_video_codec, generate_split  # noqa: E402
from instap_train.demo_data import build_caption_tokenizer  # noqa: E402


def make_video(seconds: int, width: int, height: int, fps: int, gop_size: int) -> bytes:
    """A textured scene panning and a bright square moving, so that the encoder has real work (and P/B frames)."""
    import io

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


def decode_every_frame(data: bytes, num_frames: int, generator: torch.Generator) -> torch.Tensor:
    """Baseline: decode the whole stream with PyAV, keep the sampled frames (converted to RGB only for those)."""
    import io

    with av.open(io.BytesIO(data)) as container:
        stream = container.streams.video[0]
        stream.codec_context.thread_count = 1
        total = stream.frames
        wanted = sample_frame_indices(total, num_frames, "rand", generator)
        wanted_set, kept = set(wanted), {}
        for position, frame in enumerate(container.decode(stream)):
            if position in wanted_set:
                kept[position] = frame.to_ndarray(format="rgb24")
    return torch.from_numpy(np.stack([kept[i] for i in wanted])).permute(0, 3, 1, 2)


def time_clips(function, clips: int) -> float:
    function()  # warm-up
    start = time.perf_counter()
    for _ in range(clips):
        function()
    return clips / (time.perf_counter() - start)


def bench_decoder(args) -> None:
    print(
        f"== 1. Decoding 16 frames at 224² from a {args.seconds} s {args.width}x{args.height} @ {args.fps} fps MP4"
    )
    video_processor = InstAPVideoProcessor(num_frames=16)
    for gop_size in args.gops:
        start = time.perf_counter()
        data = make_video(args.seconds, args.width, args.height, args.fps, gop_size)
        encode_seconds = time.perf_counter() - start
        generator = torch.Generator().manual_seed(0)

        def ours(data=data, generator=generator):
            clip = decode_video(data, num_frames=16, sampling="rand", generator=generator)
            return video_processor(clip, do_train_augment=True)["pixel_values"]

        def baseline(data=data, generator=generator):
            frames = decode_every_frame(data, 16, generator)
            return video_processor(frames, do_train_augment=True, do_sample_frames=False)["pixel_values"]

        assert ours().shape == baseline().shape == (1, 16, 3, 224, 224)
        decoded_per_clip = statistics.mean(
            decode_video(data, num_frames=16, sampling="rand", generator=generator).decoded_frame_count
            for _ in range(10)
        )
        ours_rate = time_clips(ours, args.clips)
        baseline_rate = time_clips(baseline, args.clips)
        print(
            f"  keyframe every {gop_size:>3} frames ({len(data) / 1e6:.1f} MB, codec "
            f"{available_video_codec()}, encoded in {encode_seconds:.1f} s): "
            f"project decoder {ours_rate:6.2f} clips/s ({decoded_per_clip:.0f} of {args.seconds * args.fps} frames "
            f"decoded) | PyAV decode-all {baseline_rate:6.2f} clips/s | ratio {ours_rate / baseline_rate:5.2f}x"
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


def bench_loader(args, tokenizer) -> list:
    print(
        f"== 2. Loader samples/s ({args.num_workers} workers, batch {args.batch_size}, decode + crops + tokenize)"
    )
    data = make_video(10, args.width, args.height, args.fps, 30)
    total = 10 * args.fps
    known = list(range(0, total, 5))
    records = [
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
    processor = InstAPProcessor(InstAPVideoProcessor(num_frames=16), tokenizer)
    dataset = InstVLIterableDataset(records, num_frames=16, batch_size=args.batch_size)
    rate, _ = loader_rate(dataset, InstAPDataCollator(processor), args.batch_size, args.num_workers, 10**6)
    print(
        f"  224² x 16 frames, 10 s {args.width}x{args.height} clips, 2 instances each: {rate:6.2f} samples/s"
    )

    # The synthetic InstVL at the tiny model's input (32², 4 frames), for the comparison with its step time.
    config = SyntheticConfig(num_samples={"train": args.loader_samples * 2})
    synthetic = list(generate_split("train", args.loader_samples * 2, config))
    tiny_processor = InstAPProcessor(
        InstAPVideoProcessor(size={"height": 32, "width": 32}, num_frames=4, patch_size=8), tokenizer
    )
    dataset = InstVLIterableDataset(
        synthetic, num_frames=4, batch_size=args.batch_size, media_type_weights={"image": 0.5, "video": 0.5}
    )
    rate, batches = loader_rate(
        dataset, InstAPDataCollator(tiny_processor), args.batch_size, args.num_workers, 10**6
    )
    print(f"  tiny input (32² x 4 frames, synthetic 64 px InstVL, images and videos): {rate:6.2f} samples/s")
    return [rate, batches]


def bench_model(args, tokenizer, loader_result) -> None:
    print("== 3. Tiny-model training step vs the loader")
    try:
        from modeling_instap import InstAPConfig, InstAPForPreTraining
    except ImportError as error:  # pragma: no cover - the model package is written alongside
        print(f"  TODO: modeling_instap is not importable ({error}); model step not measured.")
        return
    config = InstAPConfig.from_preset("tiny")
    for name in (
        "pad",
        "cls",
        "sep",
        "mask",
    ):  # the tiny test vocabulary numbers its special tokens differently
        setattr(config.text_config, f"{name}_token_id", getattr(tokenizer, f"{name}_token_id"))
    model = InstAPForPreTraining(config).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    loader_samples_per_second, batches = loader_result
    step_times = []
    for batch in batches[: args.model_steps + 1]:
        start = time.perf_counter()
        loss = model(**batch).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        step_times.append(time.perf_counter() - start)
    step = statistics.median(step_times[1:] or step_times)
    compute_rate = args.batch_size / step
    bound = "loading" if loader_samples_per_second < compute_rate else "compute"
    print(
        f"  tiny preset, batch {args.batch_size}: median step {step * 1000:.0f} ms = {compute_rate:.1f} samples/s "
        f"(torch threads: {torch.get_num_threads()}) vs loader {loader_samples_per_second:.1f} samples/s "
        f"-> {bound}-bound (measured one after the other; on a shared 2-core machine they also compete for the cores)"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=int, default=20)
    parser.add_argument("--width", type=int, default=320)
    parser.add_argument("--height", type=int, default=240)
    parser.add_argument("--fps", type=int, default=30)
    parser.add_argument("--gops", type=int, nargs="+", default=[30, 250], help="keyframe intervals to test")
    parser.add_argument("--clips", type=int, default=8, help="clips per decoder measurement")
    parser.add_argument("--num-workers", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--loader-samples", type=int, default=32)
    parser.add_argument("--model-steps", type=int, default=5)
    args = parser.parse_args()
    torch.manual_seed(0)

    with tempfile.TemporaryDirectory() as directory:
        tokenizer = build_caption_tokenizer([{"caption": "a red square moves left on a grey background"}], directory)
    bench_decoder(args)
    loader_result = bench_loader(args, tokenizer)
    bench_model(args, tokenizer, loader_result)


if __name__ == "__main__":
    main()
