"""The embedded default data of the demo: a synthetic InstVL generated on first use, and a tokenizer for it.

The synthetic captions use a closed vocabulary (colours, shapes, sizes, motions, positions), so instead of a
30K-word BERT vocabulary the demo builds a WordPiece vocabulary of exactly the words in the training captions.
Real runs pass `--tokenizer_name_or_path bert-base-uncased` (or a local folder) instead.
"""

import json
import os
import re
from collections import Counter

from transformers import BertTokenizerFast
from transformers.utils import logging

logger = logging.get_logger(__name__)

DEFAULT_CACHE = os.path.join(os.path.expanduser("~"), ".cache", "instap")
# The tiny preset's special ids: [PAD]=0, [CLS]=1, [SEP]=2, [MASK]=3 (then [UNK]).
SPECIAL_TOKENS = ["[PAD]", "[CLS]", "[SEP]", "[MASK]", "[UNK]"]
_WORD = re.compile(r"[a-z]+|[0-9]+|[^\sa-z0-9]")


def ensure_synthetic_instvl(root: str, num_train: int = 512, num_test: int = 128, seed: int = 0) -> str:
    """Write the synthetic InstVL to `root` unless a complete copy with the same settings is already there."""
    from instap_processing.synthetic import SPLIT_MEDIA, SyntheticConfig, write_dataset

    settings = {"num_train": num_train, "num_test": num_test, "seed": seed, "version": 3}
    marker = os.path.join(root, "instap_synthetic.json")
    if os.path.exists(marker):
        with open(marker, encoding="utf-8") as handle:
            if json.load(handle) == settings:
                return root
    logger.warning(f"Generating the synthetic InstVL into {root} (first use) ...")
    os.makedirs(root, exist_ok=True)
    config = SyntheticConfig(
        seed=seed,
        num_samples={split: num_train if split == "train" else num_test for split in SPLIT_MEDIA},
    )
    write_dataset(root, config)
    with open(marker, "w", encoding="utf-8") as handle:
        json.dump(settings, handle)
    return root


def caption_vocabulary(captions) -> list[str]:
    """Every lower-cased word and punctuation mark of the captions, most frequent first (ties by spelling)."""
    counts = Counter()
    for caption in captions:
        counts.update(_WORD.findall(caption.lower()))
    return [word for word, _ in sorted(counts.items(), key=lambda item: (-item[1], item[0]))]


# Single characters and their continuation pieces, so that a word outside the captions (a digit, a name in an
# evaluation file) becomes word pieces instead of [UNK]: two different texts never tokenize alike.
ALPHABET = [chr(c) for c in range(ord("a"), ord("z") + 1)] + [str(d) for d in range(10)]


def build_caption_tokenizer(records, out_dir: str) -> BertTokenizerFast:
    """A BERT WordPiece tokenizer: the special tokens, every word of the captions, then single letters and digits
    with their `##` continuation pieces."""
    captions = []
    for record in records:
        captions.append(record["caption"])
        captions.extend(instance["caption"] for instance in record.get("instances") or [])
    words = caption_vocabulary(captions)
    pieces = [char for char in ALPHABET if char not in words] + [f"##{char}" for char in ALPHABET]
    vocab = SPECIAL_TOKENS + words + pieces
    os.makedirs(out_dir, exist_ok=True)
    vocab_file = os.path.join(out_dir, "vocab.txt")
    with open(vocab_file, "w", encoding="utf-8") as handle:
        handle.write("\n".join(vocab) + "\n")
    # transformers 5 builds the WordPiece model from a token -> id mapping.
    tokenizer = BertTokenizerFast(vocab={token: index for index, token in enumerate(vocab)}, do_lower_case=True)
    tokenizer.save_pretrained(out_dir)
    return tokenizer


__all__ = ["ALPHABET", "DEFAULT_CACHE", "SPECIAL_TOKENS", "build_caption_tokenizer", "caption_vocabulary", "ensure_synthetic_instvl"]
