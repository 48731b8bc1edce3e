# Copyright 2026 The InstAP Authors. Licensed under the Apache License, Version 2.0.
"""Gradient-weighted activation maps of a phrase on a video (METHOD §5, Fig. 4).

The phrase is fused with the clip's tokens and scored by the matching head; the map says which video tokens that
positive ("matches") logit depends on. Two readings, both in the spec:

* ``method="attention"`` (default; Grad-CAM on attention, Chefer et al. 2021 / ALBEF's visualisation): for every
  fusion layer, the cross-attention map ``A`` (heads x text tokens x video tokens) times its gradient ``dlogit/dA``,
  rectified: ``relu(dA * A)``, averaged over heads and over the phrase's (non-padding) tokens, summed over the
  fusion layers.
* ``method="features"``: gradient x token features, ``relu(sum_c dlogit/dV[n, c] * V[n, c])`` for every video
  token ``V[n]`` (the fusion layers' keys/values).

The token scores are reshaped to the token grid ``(t, h, w)`` (a tubelet's score is repeated over its frames),
upsampled bilinearly to the frame size and divided by their maximum over the whole clip, so the map lies in
``[0, 1]`` with maximum 1 and frames are comparable. If every rectified score is 0 (the logit decreases with every
token's attention), the map falls back to the unweighted quantity (mean cross-attention, or ``|dV * V|``).

The evaluation transform resizes the whole frame to the model input (no crop), so the token grid covers the source
frame and the map is returned at the source frame size (or ``size``). `save_activation_strip` draws the maps over
the frames (a jet-like heat colour blended with the frame) as one PNG strip; `box_mass_ratio` measures how much of
a map falls inside a box, per unit area, relative to outside it.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F

from instap_processing.decoding import IMAGE_EXTENSIONS, DecodedVideo, decode_image, decode_media

from .zero_shot import backbone_of

__all__ = [
    "activation_map",
    "box_mass_ratio",
    "heat_colors",
    "load_clip",
    "main",
    "save_activation_figure",
    "save_activation_strip",
    "token_relevance",
    "visualize_phrase",
]

Method = Literal["attention", "features"]
_IMAGE_MAGIC = (b"\xff\xd8\xff", b"\x89PNG\r\n\x1a\n", b"GIF87a", b"GIF89a", b"BM")


def load_clip(video: Any, num_frames: int) -> DecodedVideo:
    """The frames the map is computed on: a path or bytes is decoded (``middle`` sampling of ``num_frames``; an image
    is one frame); a `DecodedVideo` is used as is; an array/tensor ``(T, H, W, 3)``, ``(T, 3, H, W)`` or one image
    ``(H, W, 3)`` (uint8) is taken as the clip's frames."""
    if isinstance(video, DecodedVideo):
        return video
    if isinstance(video, (str, os.PathLike)):
        is_image = os.fspath(video).lower().endswith(IMAGE_EXTENSIONS)
        return decode_image(video) if is_image else decode_media(video, "video", num_frames=num_frames)
    if isinstance(video, (bytes, bytearray, memoryview)):
        head = bytes(video[:12])
        if head.startswith(_IMAGE_MAGIC) or (head[:4] == b"RIFF" and head[8:12] == b"WEBP"):
            return decode_image(video)
        return decode_media(video, "video", num_frames=num_frames)
    frames = torch.as_tensor(np.asarray(video)) if not isinstance(video, torch.Tensor) else video
    if frames.ndim == 3:
        frames = frames.unsqueeze(0)
    if frames.ndim != 4:
        raise ValueError(f"Frames must be (T, H, W, 3) or (T, 3, H, W), got shape {tuple(frames.shape)}.")
    if frames.shape[-1] == 3 and frames.shape[1] != 3:
        frames = frames.permute(0, 3, 1, 2)
    frames = frames.contiguous()
    count = int(frames.shape[0])
    return DecodedVideo(frames=frames, frame_indices=list(range(count)), total_num_frames=count,
                        media_type="image" if count == 1 else "video")


def token_relevance(
    model,
    pixel_values: torch.Tensor,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    method: Method = "attention",
) -> torch.Tensor:
    """Rectified gradient-weighted relevance of every video token for the matching head's positive logit.

    Args:
        pixel_values: ``(1, T, 3, H, W)`` the processed clip.
        input_ids, attention_mask: ``(1, L)`` the tokenised phrase.

    Returns:
        ``(t, h, w)`` float32 scores >= 0 on the token grid (not normalised).
    """
    backbone = backbone_of(model)
    if method not in ("attention", "features"):
        raise ValueError(f"method must be 'attention' or 'features', got {method!r}.")
    was_training = backbone.training
    backbone.eval()
    device = next(backbone.parameters()).device
    # Only eager attention returns the cross-attention maps (and keeps their graph): switch the fusion tower to it.
    attention_kernel = backbone.text_model.config._attn_implementation
    backbone.text_model.set_attn_implementation("eager")
    try:
        with torch.enable_grad():
            with torch.no_grad():
                video = backbone.vision_model(pixel_values.to(device)).last_hidden_state
                text = backbone.get_text_features(input_ids.to(device), attention_mask.to(device)).last_hidden_state
            # The graph starts at the video tokens, so it exists even when no parameter requires grad.
            video = video.detach().float().requires_grad_(True)
            fused = backbone.fuse(text.float(), attention_mask.to(device), video, output_attentions=True)
            logit = backbone.itm_head(fused.last_hidden_state[:, 0].to(backbone.itm_head.weight.dtype))[0, 1]
            attentions = tuple(fused.cross_attentions)
            *attention_grads, video_grad = torch.autograd.grad(logit, attentions + (video,))
    finally:
        backbone.train(was_training)
        backbone.text_model.set_attn_implementation(attention_kernel)

    if method == "attention":
        token_weights = attention_mask[0].to(device=device, dtype=torch.float32)
        token_weights = token_weights / token_weights.sum().clamp(min=1.0)

        def over_text(per_layer: Sequence[torch.Tensor]) -> torch.Tensor:
            # (1, heads, L, N) per layer -> mean over heads -> weighted mean over the phrase's tokens -> sum of layers.
            return sum((maps[0].float().mean(dim=0) * token_weights[:, None]).sum(dim=0) for maps in per_layer)

        relevance = over_text([torch.relu(grad * attn) for grad, attn in zip(attention_grads, attentions)])
        if not relevance.max() > 0:
            relevance = over_text(attentions)
    else:
        products = (video_grad * video)[0].sum(dim=-1)
        relevance = torch.relu(products)
        if not relevance.max() > 0:
            relevance = products.abs()

    vision = backbone.config.vision_config
    frames, height, width = pixel_values.shape[1], pixel_values.shape[-2], pixel_values.shape[-1]
    grid = (frames // vision.tubelet_size, height // vision.patch_size, width // vision.patch_size)
    return relevance.detach().float().cpu().reshape(grid)


def activation_map(
    model,
    processor,
    video: Any,
    phrase: str,
    *,
    method: Method = "attention",
    num_frames: int | None = None,
    size: tuple[int, int] | None = None,
) -> torch.Tensor:
    """The phrase's gradient-weighted activation map over the clip's frames.

    Args:
        model: an `InstAPModel` (or a model holding one as ``.instap``, e.g. `InstAPForPreTraining`).
        processor: its `InstAPProcessor` (frames through its evaluation transform, the phrase through its tokenizer).
        video: a path or bytes (decoded with ``middle`` sampling), a `DecodedVideo`, or uint8 frames (see `load_clip`).
        phrase: the text to localise.
        method: ``"attention"`` or ``"features"`` (module docstring).
        num_frames: frames sampled from a video (default: the processor's).
        size: ``(H, W)`` of the returned map (default: the frames' size).

    Returns:
        ``(T, H, W)`` float32 in ``[0, 1]`` with maximum 1, one map per frame of the clip.
    """
    clip = load_clip(video, num_frames or processor.video_processor.num_frames)
    pixel_values = processor.video_processor([clip], do_train_augment=False, return_tensors="pt")["pixel_values"]
    tokens = processor.tokenize([phrase])
    relevance = token_relevance(model, pixel_values, tokens["input_ids"], tokens["attention_mask"], method)
    tubelet = backbone_of(model).config.vision_config.tubelet_size
    relevance = relevance.repeat_interleave(tubelet, dim=0)[: clip.num_frames]
    size = tuple(size) if size is not None else (clip.height, clip.width)
    maps = F.interpolate(relevance[:, None], size=size, mode="bilinear", align_corners=False)[:, 0].clamp(min=0)
    peak = maps.max()
    if not peak > 0:  # a zero map (no relevance anywhere): uniform
        return torch.ones_like(maps)
    return maps / peak


def heat_colors(values: np.ndarray) -> np.ndarray:
    """A jet-like colour map: ``(...)`` values in [0, 1] -> ``(..., 3)`` RGB in [0, 1] (blue, cyan, yellow, red)."""
    values = np.clip(np.asarray(values, dtype=np.float32), 0.0, 1.0)[..., None]
    centres = np.array([0.75, 0.5, 0.25], dtype=np.float32)  # red, green, blue peaks
    return np.clip(1.5 - np.abs(4.0 * values - 4.0 * centres), 0.0, 1.0)


def _frames_as_hwc_uint8(frames: Any) -> np.ndarray:
    array = frames.detach().cpu().numpy() if isinstance(frames, torch.Tensor) else np.asarray(frames)
    if array.ndim == 3:
        array = array[None]
    if array.ndim != 4:
        raise ValueError(f"frames must be (T, H, W, 3) or (T, 3, H, W), got shape {array.shape}.")
    if array.shape[1] == 3 and array.shape[-1] != 3:
        array = array.transpose(0, 2, 3, 1)
    if array.dtype != np.uint8:
        scale = 255.0 if array.max() <= 1.0 else 1.0
        array = np.clip(array * scale, 0, 255).astype(np.uint8)
    return array


def save_activation_strip(
    frames: Any,
    maps: torch.Tensor | np.ndarray,
    path: str | os.PathLike,
    *,
    alpha: float = 0.5,
    with_frames: bool = True,
    gap: int = 2,
) -> str:
    """Draws ``maps`` over ``frames`` and saves one PNG strip (frames left to right).

    Args:
        frames: ``(T, H, W, 3)`` or ``(T, 3, H, W)``, uint8 (or floats in [0, 1]).
        maps: ``(T, H', W')`` in [0, 1]; resized to the frame size if needed.
        alpha: weight of the heat colour in the blend ``(1 - alpha) * frame + alpha * heat(map)``.
        with_frames: add a top row with the plain frames.
        gap: white pixels between tiles.

    Returns:
        the path written.
    """
    from PIL import Image

    frames = _frames_as_hwc_uint8(frames)
    maps = torch.as_tensor(np.asarray(maps) if not isinstance(maps, torch.Tensor) else maps).detach().float().cpu()
    if maps.ndim == 2:
        maps = maps[None]
    if maps.shape[0] != frames.shape[0]:
        raise ValueError(f"{maps.shape[0]} maps for {frames.shape[0]} frames.")
    count, height, width = frames.shape[:3]
    if tuple(maps.shape[-2:]) != (height, width):
        maps = F.interpolate(maps[:, None], size=(height, width), mode="bilinear", align_corners=False)[:, 0]
    heat = heat_colors(maps.clamp(0, 1).numpy()) * 255.0
    overlays = np.clip((1.0 - alpha) * frames.astype(np.float32) + alpha * heat, 0, 255).astype(np.uint8)
    rows = [frames, overlays] if with_frames else [overlays]
    canvas = np.full(
        (len(rows) * height + (len(rows) - 1) * gap, count * width + (count - 1) * gap, 3), 255, dtype=np.uint8
    )
    for row, tiles in enumerate(rows):
        for index, tile in enumerate(tiles):
            top, left = row * (height + gap), index * (width + gap)
            canvas[top : top + height, left : left + width] = tile
    path = os.fspath(path)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    Image.fromarray(canvas).save(path, format="PNG")
    return path


def visualize_phrase(model, processor, video: Any, phrase: str, path: str | os.PathLike, **kwargs) -> torch.Tensor:
    """`activation_map` of ``phrase`` on ``video``, drawn with `save_activation_strip` to ``path``; returns the maps."""
    strip_options = {key: kwargs.pop(key) for key in ("alpha", "with_frames", "gap") if key in kwargs}
    clip = load_clip(video, kwargs.get("num_frames") or processor.video_processor.num_frames)
    maps = activation_map(model, processor, clip, phrase, **kwargs)
    save_activation_strip(clip.frames, maps, path, **strip_options)
    return maps


def box_mass_ratio(activation: torch.Tensor | np.ndarray, box: Sequence[float] | torch.Tensor | np.ndarray) -> float:
    """How concentrated a map is inside a box: (mass inside / area inside) / (mass outside / area outside).

    Args:
        activation: ``(H, W)`` or ``(T, H, W)`` non-negative map.
        box: ``[x1, y1, x2, y2]`` in the map's pixels (one box for every frame), or ``(T, 4)`` one box per frame.
            A pixel ``(i, j)`` is inside when its centre ``(j + 0.5, i + 0.5)`` lies in ``[x1, x2) x [y1, y2)``.

    Returns:
        1 for a map that ignores the box (e.g. uniform), > 1 when the map is denser inside, < 1 when denser outside;
        ``inf`` when all mass is inside, ``nan`` when the map is 0 everywhere or the box covers none or all pixels.
    """
    maps = torch.as_tensor(np.asarray(activation) if not isinstance(activation, torch.Tensor) else activation)
    maps = maps.detach().double().cpu()
    if maps.ndim == 2:
        maps = maps[None]
    if maps.ndim != 3:
        raise ValueError(f"activation must be (H, W) or (T, H, W), got shape {tuple(maps.shape)}.")
    if (maps < 0).any():
        raise ValueError("activation must be non-negative.")
    boxes = torch.as_tensor(np.asarray(box) if not isinstance(box, torch.Tensor) else box).double().cpu()
    boxes = boxes.reshape(-1, 4).expand(maps.shape[0], 4) if boxes.numel() == 4 else boxes.reshape(-1, 4)
    if boxes.shape[0] != maps.shape[0]:
        raise ValueError(f"{boxes.shape[0]} boxes for {maps.shape[0]} maps.")
    height, width = maps.shape[-2:]
    ys = torch.arange(height, dtype=torch.float64) + 0.5
    xs = torch.arange(width, dtype=torch.float64) + 0.5
    inside_x = (xs[None, :] >= boxes[:, 0:1]) & (xs[None, :] < boxes[:, 2:3])  # (T, W)
    inside_y = (ys[None, :] >= boxes[:, 1:2]) & (ys[None, :] < boxes[:, 3:4])  # (T, H)
    inside = inside_y[:, :, None] & inside_x[:, None, :]
    area_in, area_out = inside.sum().item(), (~inside).sum().item()
    mass_in, mass_out = maps[inside].sum().item(), maps[~inside].sum().item()
    if area_in == 0 or area_out == 0 or mass_in + mass_out == 0:
        return float("nan")
    if mass_out == 0:
        return float("inf")
    return (mass_in / area_in) / (mass_out / area_out)


def save_activation_figure(
    frames: Any,
    maps: torch.Tensor | np.ndarray,
    path: str | os.PathLike,
    *,
    phrase: str,
    boxes: Sequence[Sequence[float]] | None = None,
    alpha: float = 0.5,
    tile_inches: float = 2.6,
) -> str:
    """A readable figure of the maps: one panel per frame (drawn large, nearest-neighbour), the map blended over it
    with a colour bar, the phrase as the title and, when known, the instance's box per frame (one box for all).

    Args:
        frames: ``(T, H, W, 3)`` or ``(T, 3, H, W)``. maps: ``(T, H', W')`` in [0, 1] (resized to the frames).
        boxes: ``[x1, y1, x2, y2]`` in frame pixels, one for every frame or one per frame.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Rectangle

    frames = _frames_as_hwc_uint8(frames)
    maps = torch.as_tensor(np.asarray(maps) if not isinstance(maps, torch.Tensor) else maps).detach().float().cpu()
    if maps.ndim == 2:
        maps = maps[None]
    count, height, width = frames.shape[:3]
    if maps.shape[0] != count:
        raise ValueError(f"{maps.shape[0]} maps for {count} frames.")
    if tuple(maps.shape[-2:]) != (height, width):
        maps = F.interpolate(maps[:, None], size=(height, width), mode="bilinear", align_corners=False)[:, 0]
    per_frame_boxes = None
    if boxes is not None:
        per_frame_boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
        if len(per_frame_boxes) == 1:
            per_frame_boxes = np.repeat(per_frame_boxes, count, axis=0)
        if len(per_frame_boxes) != count:
            raise ValueError(f"{len(per_frame_boxes)} boxes for {count} frames.")
    figure, axes = plt.subplots(1, count, figsize=(tile_inches * count + 1.0, tile_inches + 0.6), squeeze=False)
    image = None
    for index, axis in enumerate(axes[0]):
        axis.imshow(frames[index], interpolation="nearest")
        image = axis.imshow(maps[index].numpy(), cmap="jet", alpha=alpha, vmin=0.0, vmax=1.0, interpolation="bilinear")
        if per_frame_boxes is not None:
            x1, y1, x2, y2 = per_frame_boxes[index]
            axis.add_patch(Rectangle((x1 - 0.5, y1 - 0.5), x2 - x1, y2 - y1, fill=False, edgecolor="white", linewidth=2))
        axis.set_title(f"frame {index}", fontsize=9)
        axis.axis("off")
    figure.suptitle(f'"{phrase}"', fontsize=11)
    figure.colorbar(image, ax=list(axes[0]), fraction=0.02, pad=0.02, label="relevance")
    path = os.fspath(path)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    figure.savefig(path, dpi=100, bbox_inches="tight")
    plt.close(figure)
    return path


def main(argv: Sequence[str] | None = None) -> str:
    """`python -m instap_eval.visualize --model DIR --media FILE --phrase TEXT [--box x1 y1 x2 y2] [--output PNG]`."""
    import argparse

    parser = argparse.ArgumentParser(
        prog="python -m instap_eval.visualize",
        description="Draw the gradient-weighted activation map of a phrase on an image or video (METHOD §5, Fig. 4).",
    )
    parser.add_argument("--model", required=True, help="an InstAP folder (e.g. the demo's outputs/instap-tiny-align)")
    parser.add_argument("--media", required=True, help="an image or video file")
    parser.add_argument("--phrase", required=True, help="the text to localise, e.g. 'a red square'")
    parser.add_argument("--box", type=float, nargs=4, metavar=("X1", "Y1", "X2", "Y2"),
                        help="the instance's box in source pixels, drawn on every frame")
    parser.add_argument("--method", choices=["attention", "features"], default="attention")
    parser.add_argument("--num_frames", type=int, default=None, help="frames sampled from a video (default: the processor's)")
    parser.add_argument("--output", default="activation_map.png")
    args = parser.parse_args(argv)

    from instap_processing import InstAPProcessor
    from modeling_instap import InstAPModel

    if not os.path.exists(args.media):
        parser.error(f"--media {args.media!r}: no such file.")
    model = InstAPModel.from_pretrained(args.model).eval()
    processor = InstAPProcessor.from_pretrained(args.model)
    clip = load_clip(args.media, args.num_frames or processor.video_processor.num_frames)
    maps = activation_map(model, processor, clip, args.phrase, method=args.method)
    path = save_activation_figure(clip.frames, maps, args.output, phrase=args.phrase, boxes=args.box)
    print(f"wrote {path}")
    return path


if __name__ == "__main__":
    main()
