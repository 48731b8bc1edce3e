"""How the zero-shot retrieval evaluation scales with the split size, dual encoder and re-ranking apart.

`instap_eval.zero_shot.zero_shot_retrieval` on the `tiny` InstAP with random tensors as videos (no decoding) and
random captions, N videos and N captions (one each), for N = 1K, 2K, 4K and a fixed k:

* dual encoder: embed every caption and video, the N x N similarity matrix (in chunks);
* re-ranking: re-encode the videos (the fusion context is never held for the split) and score the top k of every
  query in both directions with the matching head: 2 N k fused pairs.

Both should grow linearly in N at fixed k (the N² similarity and top-k are tiny next to the encoders at these
sizes; the rank computation, outside both timings, is chunked). The table gives each time, its ratio to N = 1K
measured in the same run, and the growth exponent log(t_N / t_1K) / log(N / 1K) (1 = linear, 2 = quadratic), plus
the least-squares exponent over all sizes, and the number of pairs the matching head scored (exactly 2 N k when
N > k: the algorithmic cost; a time ratio above it is the machine, e.g. caches or other jobs).

    python benchmarks/bench_retrieval.py                     # ~1 min on 2 busy CPU cores
    python benchmarks/bench_retrieval.py --sizes 1000 2000 4000 8000 --k 128 --num_frames 4
    python benchmarks/bench_retrieval.py --config umt --sizes 100 --compare-gathered   # UMT's dimensions, 8 x 112²
"""

from __future__ import annotations

import argparse
import math
import time

import torch
from bench_model import umt_dims_config

from instap_eval.zero_shot import zero_shot_retrieval
from modeling_instap import InstAPConfig, InstAPModel


def run_once(
    model, videos: torch.Tensor, input_ids, attention_mask, k: int, batch_size: int, fusion_batch_size: int,
    gathered: bool = False,
):
    """(dual encoder s, re-ranking s, total s, fused pairs) of one full evaluation. `gathered`: each pair's video
    tokens copied out for the matching head (the path before `match_score` took `video_index`), so every pair
    projects its video's cross-attention keys and values again."""
    pairs = 0
    original = model.match_score

    def counting_match_score(video_hidden_states, text_hidden_states, attention_mask=None, video_attention_mask=None,
                             video_index=None):
        nonlocal pairs
        # With `video_index` each video comes once and the index holds one entry per pair.
        pairs += (video_hidden_states if video_index is None else video_index).shape[0]
        if gathered and video_index is not None:
            video_hidden_states = video_hidden_states[video_index]
            video_attention_mask = None if video_attention_mask is None else video_attention_mask[video_index]
            video_index = None
        return original(video_hidden_states, text_hidden_states, attention_mask, video_attention_mask, video_index)

    model.match_score = counting_match_score
    try:
        start = time.perf_counter()
        result = zero_shot_retrieval(
            model,
            lambda: iter(videos.split(batch_size)),
            input_ids,
            attention_mask,
            torch.arange(videos.shape[0]),
            k=k,
            fusion_batch_size=fusion_batch_size,
        )
        total = time.perf_counter() - start
    finally:
        del model.match_score
    return result.timings["dual_encoder_s"], result.timings["rerank_s"], total, pairs


def fitted_exponent(sizes: list[int], times: list[float]) -> float:
    """Least-squares slope of log(time) against log(N)."""
    xs, ys = [math.log(n) for n in sizes], [math.log(t) for t in times]
    mean_x, mean_y = sum(xs) / len(xs), sum(ys) / len(ys)
    denominator = sum((x - mean_x) ** 2 for x in xs)
    return sum((x - mean_x) * (y - mean_y) for x, y in zip(xs, ys)) / denominator if denominator else float("nan")


def main(argv=None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[1000, 2000, 4000], help="N (the first is the reference)")
    parser.add_argument("--k", type=int, default=16, help="candidates re-ranked per query (fixed across N)")
    parser.add_argument(
        "--config", choices=["tiny", "umt"], default="tiny",
        help="tiny, or the dimensions of the speed issue's comparison with UMT (`bench_model.py --configs umt`)",
    )
    parser.add_argument("--num_frames", type=int, default=None, help="2 for tiny, 8 for umt by default")
    parser.add_argument("--text_length", type=int, default=16)
    parser.add_argument("--batch_size", type=int, default=256, help="videos per encoder batch")
    parser.add_argument("--fusion_batch_size", type=int, default=512)
    parser.add_argument("--repeats", type=int, default=2, help="runs per size (round-robin); the fastest counts")
    parser.add_argument(
        "--threads", type=int, default=1,
        help="torch threads; 1 by default: on a shared CPU, small ops with more threads than free cores spin-wait and "
             "times vary several-fold between runs",
    )
    parser.add_argument(
        "--compare-gathered", action="store_true",
        help="also re-rank with each pair's video tokens gathered (keys and values projected per pair, the path "
             "before `video_index`), alternating with the default, and print the re-ranking time ratio",
    )
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    config = InstAPConfig.from_preset("tiny") if args.config == "tiny" else umt_dims_config()
    if args.num_frames is None:
        args.num_frames = 2 if args.config == "tiny" else 8
    model = InstAPModel(config).eval()
    size = config.vision_config.image_size
    vocab = config.text_config.vocab_size

    def data(count: int):
        generator = torch.Generator().manual_seed(count)
        videos = torch.randn(count, args.num_frames, 3, size, size, generator=generator)
        ids = torch.randint(4, vocab, (count, args.text_length), generator=generator)
        ids[:, 0] = config.text_config.cls_token_id
        ids[:, -1] = config.text_config.sep_token_id
        return videos, ids, torch.ones_like(ids)

    run_once(model, *data(min(128, args.sizes[0])), k=args.k, batch_size=args.batch_size, fusion_batch_size=args.fusion_batch_size)  # warm-up
    # Round-robin over the sizes, so that a change in the machine's load hits every size; the fastest run counts.
    runs: dict[int, list] = {count: [] for count in args.sizes}
    gathered_runs: dict[int, list] = {count: [] for count in args.sizes}
    for repeat in range(args.repeats):
        for count in args.sizes:
            videos, ids, mask = data(count)
            runs[count].append(run_once(model, videos, ids, mask, args.k, args.batch_size, args.fusion_batch_size))
            dual, rerank, _, pairs = runs[count][-1]
            print(f"run {repeat + 1}, N={count}: dual encoder {dual:.2f} s, re-ranking {rerank:.2f} s ({pairs} fused pairs)",
                  flush=True)
            if args.compare_gathered:
                gathered_runs[count].append(run_once(
                    model, videos, ids, mask, args.k, args.batch_size, args.fusion_batch_size, gathered=True
                ))
                print(f"run {repeat + 1}, N={count}, videos gathered per pair: re-ranking "
                      f"{gathered_runs[count][-1][1]:.2f} s", flush=True)
    rows = []
    for count in args.sizes:
        dual, rerank, total = (min(values) for values in list(zip(*runs[count]))[:3])
        rows.append({"n": count, "dual_s": dual, "rerank_s": rerank, "total_s": total, "pairs": runs[count][0][3]})

    reference = rows[0]
    print(f"\nZero-shot retrieval, {args.config} InstAP, k={args.k}, {args.num_frames} frames at {size}², "
          f"{args.threads} threads (ratios and exponents against N={reference['n']})\n")
    print("| N | dual encoder s | ratio | exponent | re-ranking s | ratio | exponent | fused pairs | ratio | total s |")
    print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for row in rows:
        cells = [str(row["n"])]
        for key in ("dual_s", "rerank_s"):
            ratio = row[key] / reference[key]
            scale = row["n"] / reference["n"]
            exponent = math.log(ratio) / math.log(scale) if scale != 1 else float("nan")
            row[key.replace("_s", "_ratio")], row[key.replace("_s", "_exponent")] = ratio, exponent
            cells += [f"{row[key]:.2f}", f"{ratio:.2f}", "-" if scale == 1 else f"{exponent:.2f}"]
        cells += [str(row["pairs"]), f"{row['pairs'] / reference['pairs']:.2f}", f"{row['total_s']:.2f}"]
        print("| " + " | ".join(cells) + " |")
    if args.compare_gathered:
        print("\n| N | re-ranking s, videos gathered per pair | re-ranking s, each video once (`video_index`) | ratio |")
        print("|---:|---:|---:|---:|")
        for row in rows:
            gathered_s = min(run[1] for run in gathered_runs[row["n"]])
            row["rerank_gathered_s"] = gathered_s
            row["pairs_gathered"] = gathered_runs[row["n"]][0][3]
            print(f"| {row['n']} | {gathered_s:.2f} | {row['rerank_s']:.2f} | {row['rerank_s'] / gathered_s:.2f} |")
    sizes = [row["n"] for row in rows]
    if len(rows) > 1:
        print(f"\nFitted exponent over all sizes: dual encoder {fitted_exponent(sizes, [r['dual_s'] for r in rows]):.2f}, "
              f"re-ranking {fitted_exponent(sizes, [r['rerank_s'] for r in rows]):.2f} (1 = linear in N).")
    return rows


if __name__ == "__main__":
    main()
