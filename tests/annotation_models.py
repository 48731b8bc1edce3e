"""Tiny random-weight models of the annotation pipeline's transformers classes, built offline from their configs and
saved to local folders (loaded back by path, as the pipeline loads real checkpoints): Grounding DINO, SAM 2 video,
and an Idefics3 (SmolVLM architecture) captioner. Not a test module.

Constraints found while building them (transformers 5.24): Grounding DINO hard-codes the bert-base-uncased ids of
[CLS], [SEP], "." and "?" (101, 102, 1012, 1029) and needs >= 2 decoder layers; SAM 2's memory width is fixed at 64,
its hidden size must be a multiple of 64 above 64, and a Hiera global-attention block cannot open a stage;
`BertTokenizer` takes its vocabulary as `vocab=` (`vocab_file=` is ignored).
"""

from __future__ import annotations

from pathlib import Path

import torch


def _write_bert_vocab(path: Path) -> int:
    """BERT-style WordPiece vocab whose special ids match what Grounding DINO hard-codes.

    GroundingDinoModel uses SPECIAL_TOKENS = [101, 102, 1012, 1029] = [CLS], [SEP], ".", "?" (bert-base-uncased
    ids) to build the per-phrase text self-attention mask, so the tiny vocab must put those tokens at those ids.
    """
    vocab = ["[PAD]"] + [f"[unused{i}]" for i in range(1, 100)] + ["[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    vocab += ["a", "an", "the", "person", "car", "dog", "cat", "truck", "bicycle", "tree", "bus", "and", "##s"]
    vocab += [f"[unused{i}]" for i in range(100, 100 + 1012 - len(vocab))]
    vocab += ["."]  # id 1012
    vocab += [f"[unused{i}]" for i in range(2000, 2000 + 1029 - len(vocab))]
    vocab += ["?", ",", "!"]  # "?" id 1029
    assert [vocab.index(t) for t in ("[CLS]", "[SEP]", ".", "?")] == [101, 102, 1012, 1029]
    path.write_text("\n".join(vocab) + "\n")
    return len(vocab)


def tiny_grounding_dino(folder):
    from transformers import (
        AutoModelForZeroShotObjectDetection,
        AutoProcessor,
        BertConfig,
        BertTokenizer,
        GroundingDinoConfig,
        GroundingDinoForObjectDetection,
        GroundingDinoImageProcessor,
        GroundingDinoProcessor,
        SwinConfig,
    )

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    vocab_file = folder / "vocab_src.txt"
    vocab_size = _write_bert_vocab(vocab_file)
    # NB (v5): BertTokenizerFast is an alias of BertTokenizer; the vocab file goes in `vocab=`.
    # `vocab_file=` is silently ignored and you get a useless default vocab ([CLS]=2, everything [UNK]).
    tokenizer = BertTokenizer(vocab=str(vocab_file), do_lower_case=True)
    image_processor = GroundingDinoImageProcessor(size={"shortest_edge": 64, "longest_edge": 96})
    processor = GroundingDinoProcessor(image_processor=image_processor, tokenizer=tokenizer)

    backbone_config = SwinConfig(
        image_size=64,
        embed_dim=8,
        depths=[1, 1, 1, 1],
        num_heads=[1, 1, 1, 1],
        window_size=4,
        out_features=["stage2", "stage3", "stage4"],
    )
    text_config = BertConfig(
        vocab_size=vocab_size,
        hidden_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=64,
    )
    config = GroundingDinoConfig(
        backbone_config=backbone_config,
        text_config=text_config,
        d_model=32,
        encoder_layers=1,
        decoder_layers=2,  # >=2 required: bbox_embed tying regex '^bbox_embed.(?![0])\d+' needs a layer 1
        encoder_ffn_dim=64,
        decoder_ffn_dim=64,
        encoder_attention_heads=2,
        decoder_attention_heads=2,
        num_queries=10,
        num_feature_levels=4,
        encoder_n_points=2,
        decoder_n_points=2,
        max_text_len=32,
    )
    torch.manual_seed(0)
    model = GroundingDinoForObjectDetection(config).eval()
    model.save_pretrained(folder)
    processor.save_pretrained(folder)

    model = AutoModelForZeroShotObjectDetection.from_pretrained(folder).eval()
    processor = AutoProcessor.from_pretrained(folder)
    return model, processor


def tiny_sam2_video(folder, image_size: int = 128):
    from transformers import (
        AutoProcessor,
        Sam2HieraDetConfig,
        Sam2ImageProcessor,
        Sam2VideoConfig,
        Sam2VideoMaskDecoderConfig,
        Sam2VideoModel,
        Sam2VideoProcessor,
        Sam2VideoPromptEncoderConfig,
        Sam2VideoVideoProcessor,
        Sam2VisionConfig,
    )

    S = image_size  # must be divisible by 16 (patch stride 4 x 3 query-pool stages of 2 ... lowest FPN level = S/16)
    # Hidden size shared by FPN / prompt encoder / mask decoder / memory attention. It must be a multiple of 64
    # and > 64: memory_encoder_output_channels (mem_dim) must be 64 (the memory cross-attention has kv_in_dim=64
    # hard-coded) and object pointers are split into hidden/mem_dim chunks, which breaks when hidden == mem_dim.
    H = 128
    backbone_config = Sam2HieraDetConfig(
        hidden_size=12,
        image_size=[S, S],
        blocks_per_stage=[1, 1, 2, 1],
        embed_dim_per_stage=[12, 24, 48, 96],
        num_attention_heads_per_stage=[1, 1, 1, 1],
        window_size_per_stage=[8, 4, 4, 4],
        # a global block must NOT be the first block of a stage (query-pool + window 0 -> ZeroDivisionError)
        global_attention_blocks=[3],
        window_positional_embedding_background_size=[4, 4],
    )
    vision_config = Sam2VisionConfig(
        backbone_config=backbone_config,
        backbone_channel_list=[96, 48, 24, 12],  # reversed embed_dim_per_stage
        backbone_feature_sizes=[[S // 4, S // 4], [S // 8, S // 8], [S // 16, S // 16]],
        fpn_hidden_size=H,
    )
    prompt_encoder_config = Sam2VideoPromptEncoderConfig(hidden_size=H, image_size=S, patch_size=16, mask_input_channels=8)
    mask_decoder_config = Sam2VideoMaskDecoderConfig(hidden_size=H, mlp_dim=64, num_attention_heads=2, iou_head_hidden_dim=32)
    config = Sam2VideoConfig(
        vision_config=vision_config,
        prompt_encoder_config=prompt_encoder_config,
        mask_decoder_config=mask_decoder_config,
        image_size=S,
        num_maskmem=3,
        memory_attention_hidden_size=H,
        memory_attention_num_layers=1,
        memory_attention_feed_forward_hidden_size=64,
        memory_attention_rope_feat_sizes=[S // 16, S // 16],
        memory_encoder_hidden_size=H,
        memory_encoder_output_channels=64,  # hard requirement (see above)
        mask_downsampler_embed_dim=H,
        memory_fuser_num_layers=1,
        memory_fuser_embed_dim=H,
        memory_fuser_intermediate_dim=64,
        max_object_pointers_in_encoder=4,
    )
    torch.manual_seed(0)
    model = Sam2VideoModel(config).eval()
    processor = Sam2VideoProcessor(
        image_processor=Sam2ImageProcessor(size={"height": S, "width": S}, mask_size={"height": S // 4, "width": S // 4}),
        video_processor=Sam2VideoVideoProcessor(size={"height": S, "width": S}),
    )
    folder = Path(folder)
    model.save_pretrained(folder)
    processor.save_pretrained(folder)

    model = Sam2VideoModel.from_pretrained(folder).eval()
    processor = AutoProcessor.from_pretrained(folder)
    return model, processor


_IMAGE_TOKENS = ["<fake_token_around_image>", "<image>", "<global-img>"]


_ROW_COL_TOKENS = [f"<row_{i + 1}_col_{j + 1}>" for i in range(6) for j in range(6)]


def _tiny_byte_level_tokenizer():
    """Byte-level BPE with no merges: every string encodes (no <unk>) and decodes losslessly."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    alphabet = pre_tokenizers.ByteLevel.alphabet()  # 256 printable stand-ins for bytes
    base = ["<|endoftext|>", "<|im_start|>", "<end_of_utterance>", "<pad>"]
    vocab = {t: i for i, t in enumerate(base + sorted(alphabet))}
    tk = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tk.decoder = decoders.ByteLevel()
    tok = PreTrainedTokenizerFast(
        tokenizer_object=tk,
        bos_token="<|im_start|>",
        eos_token="<end_of_utterance>",
        pad_token="<pad>",
        unk_token="<|endoftext|>",
        extra_special_tokens=_IMAGE_TOKENS + _ROW_COL_TOKENS,
    )
    return tok


# SmolVLM-Instruct chat template (same as transformers.models.smolvlm.processing_smolvlm.DEFAULT_CHAT_TEMPLATE)


SMOLVLM_CHAT_TEMPLATE = (
    "<|im_start|>{% for message in messages %}{{message['role'] | capitalize}}{% if message['content'] is string %}"
    "{{': ' + message['content']}}{% else %}{% if message['content'][0]['type'] == 'image' %}{{':'}}{% else %}"
    "{{': '}}{% endif %}{% for line in message['content'] %}{% if line['type'] == 'text' %}{{line['text']}}"
    "{% elif line['type'] == 'image' %}{{ '<image>' }}{% elif line['type'] == 'video' %}{{ '<video>' }}{% endif %}"
    "{% endfor %}{% endif %}<end_of_utterance>\n{% endfor %}{% if add_generation_prompt %}{{ 'Assistant:' }}{% endif %}"
)


def tiny_captioner(folder):
    from transformers import (
        AutoModelForImageTextToText,
        AutoProcessor,
        Idefics3Config,
        Idefics3ForConditionalGeneration,
        Idefics3ImageProcessor,
        Idefics3Processor,
        Idefics3VisionConfig,
        LlamaConfig,
    )

    tok = _tiny_byte_level_tokenizer()
    vis_size, patch, scale = 32, 8, 2
    image_seq_len = (vis_size // patch) ** 2 // scale**2  # = 4 <image> tokens per image (tile)
    image_processor = Idefics3ImageProcessor(
        size={"longest_edge": vis_size},
        max_image_size={"longest_edge": vis_size},
        do_image_splitting=False,  # one global tile per image; True gives rows*cols+1 tiles (row/col tokens)
    )
    processor = Idefics3Processor(
        image_processor=image_processor, tokenizer=tok, image_seq_len=image_seq_len, chat_template=SMOLVLM_CHAT_TEMPLATE
    )
    tok = processor.tokenizer
    vision_config = Idefics3VisionConfig(
        hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2, image_size=vis_size, patch_size=patch
    )
    text_config = LlamaConfig(
        vocab_size=len(tok),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=1,
        max_position_embeddings=512,
        pad_token_id=tok.pad_token_id,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
    )
    config = Idefics3Config(
        vision_config=vision_config,
        text_config=text_config,
        scale_factor=scale,
        image_token_id=tok.convert_tokens_to_ids("<image>"),
        pad_token_id=tok.pad_token_id,
    )
    torch.manual_seed(0)
    model = Idefics3ForConditionalGeneration(config).eval()
    model.generation_config.pad_token_id = tok.pad_token_id
    model.generation_config.eos_token_id = tok.eos_token_id
    folder = Path(folder)
    model.save_pretrained(folder)
    processor.save_pretrained(folder)

    model = AutoModelForImageTextToText.from_pretrained(folder).eval()
    processor = AutoProcessor.from_pretrained(folder)
    return model, processor
