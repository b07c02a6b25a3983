"""CLIP's BPE tokenizer files (vocab.json, merges.txt), made offline from the repo.

`data/bpe_simple_vocab_16e6.txt.gz` is the merge list OpenAI's CLIP and OpenCLIP ship
(MIT licensed; byte-identical in the `clip` and `open_clip` packages, SHA-256 924691ac...).
CLIP's 49408-token vocabulary is derived from it exactly as their SimpleTokenizer does:
the 256 byte-level characters, the same with `</w>`, one token per merge, then the two
special tokens. That is the vocabulary of the tokenizers of SDXL (both text encoders use
it; they differ only in their padding token). No torch import here.
"""

from __future__ import annotations

import gzip
import json
from functools import lru_cache
from pathlib import Path

BPE_FILE = Path(__file__).with_name("data") / "bpe_simple_vocab_16e6.txt.gz"
VOCAB_SIZE = 49408
BOS = "<|startoftext|>"
EOS = "<|endoftext|>"
# SDXL base's tokenizer pads with EOS, tokenizer_2 (OpenCLIP bigG's) with "!" (id 0).
PAD_TOKENS = {"tokenizer": EOS, "tokenizer_2": "!"}


def bytes_to_unicode() -> dict[int, str]:
    """CLIP's reversible map of the 256 byte values to printable characters."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1)]
    printable += range(ord("®"), ord("ÿ") + 1)
    codes = list(printable)
    extra = 0
    for byte in range(256):
        if byte not in printable:
            printable.append(byte)
            codes.append(256 + extra)
            extra += 1
    return dict(zip(printable, (chr(code) for code in codes), strict=True))


@lru_cache(maxsize=1)
def clip_vocab() -> tuple[dict[str, int], tuple[tuple[str, str], ...]]:
    """CLIP's vocabulary (token -> id) and its merges, in rank order."""
    lines = gzip.decompress(BPE_FILE.read_bytes()).decode("utf-8").split("\n")
    # Line 0 is a version header; CLIP uses the first 49152 - 256 - 2 merges.
    merges = tuple(tuple(line.split()) for line in lines[1 : VOCAB_SIZE - 512 - 2 + 1])
    alphabet = list(bytes_to_unicode().values())
    tokens = [*alphabet, *(f"{char}</w>" for char in alphabet)]
    tokens += ["".join(merge) for merge in merges]
    tokens += [BOS, EOS]
    if len(tokens) != VOCAB_SIZE:
        raise RuntimeError(f"{BPE_FILE.name} gave {len(tokens)} tokens, not {VOCAB_SIZE}")
    return {token: index for index, token in enumerate(tokens)}, merges  # type: ignore[return-value]


def write_clip_tokenizer(folder: Path, pad_token: str = EOS, max_length: int = 77) -> Path:
    """A CLIPTokenizer folder (vocab.json, merges.txt, tokenizer_config.json,
    special_tokens_map.json) as the hub's SDXL repo has it; `pad_token` as the tokenizer's."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    vocab, merges = clip_vocab()
    (folder / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
    merge_lines = "".join(f"{left} {right}\n" for left, right in merges)
    (folder / "merges.txt").write_text("#version: 0.2\n" + merge_lines, encoding="utf-8")
    special = {"bos_token": BOS, "eos_token": EOS, "pad_token": pad_token, "unk_token": EOS}
    config = {
        **special,
        "add_prefix_space": False,
        "clean_up_tokenization_spaces": True,
        "do_lower_case": True,
        "errors": "replace",
        "model_max_length": max_length,
        "tokenizer_class": "CLIPTokenizer",
    }
    (folder / "tokenizer_config.json").write_text(json.dumps(config, indent=2), encoding="utf-8")
    (folder / "special_tokens_map.json").write_text(json.dumps(special, indent=2), encoding="utf-8")
    return folder
