"""CLIP tokenizer on the ``tokenizers`` library (no transformers at run time).

Reads a folder written by ``CLIPTokenizer.save_pretrained``:

- ``tokenizer.json`` when present (the full pipeline as transformers saved it);
- otherwise ``vocab.json`` + ``merges.txt``, from which the CLIP pipeline is rebuilt exactly as
  transformers' ``CLIPTokenizer`` builds it: NFC -> collapse whitespace -> lowercase; split on
  CLIP's regex; byte-level; BPE with ``</w>`` end-of-word suffix; ``<|startoftext|> ... <|endoftext|>``.

``tokenizer_config.json`` (optional) gives the pad token (SD 1.x pads with ``<|endoftext|>``,
SD 2.x with ``!``), the bos/eos/unk tokens and ``model_max_length``.

Output: ``encode(texts)`` -> int64 (B, 77) ids, truncated (the eos token is kept) and padded,
exactly as ``tokenizer(texts, padding="max_length", max_length=77, truncation=True)``.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from tokenizers import (
    AddedToken,
    Regex,
    Tokenizer,
    decoders,
    normalizers,
    pre_tokenizers,
    processors,
)
from tokenizers.models import BPE

#: CLIP's pre-tokenization regex (the one transformers' CLIPTokenizer uses).
CLIP_SPLIT_PATTERN = r"""<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+"""


def _token_str(value, default: str) -> str:
    """A token in tokenizer_config.json is either a str or {"content": str, ...}."""
    if value is None:
        return default
    if isinstance(value, dict):
        return str(value.get("content", default))
    return str(value)


def _read_merges(path: Path) -> list[tuple[str, str]]:
    merges = []
    for line in path.read_text(encoding="utf-8").split("\n"):
        if not line or line.startswith("#version"):
            continue
        parts = line.split(" ")
        if len(parts) != 2:
            continue
        merges.append((parts[0], parts[1]))
    return merges


class CLIPTokenizer:
    """CLIP BPE tokenizer. ``encode`` -> int64 (B, max_length); ``count`` -> int."""

    def __init__(self, folder: Path, max_length: int | None = None):
        folder = Path(folder)
        config: dict = {}
        if (folder / "tokenizer_config.json").exists():
            config = json.loads((folder / "tokenizer_config.json").read_text(encoding="utf-8"))
        special_map: dict = {}
        if (folder / "special_tokens_map.json").exists():
            special_map = json.loads((folder / "special_tokens_map.json").read_text("utf-8"))

        def tok(key: str, default: str) -> str:
            return _token_str(config.get(key, special_map.get(key)), default)

        self.bos_token = tok("bos_token", "<|startoftext|>")
        self.eos_token = tok("eos_token", "<|endoftext|>")
        self.unk_token = tok("unk_token", "<|endoftext|>")
        self.pad_token = tok("pad_token", "<|endoftext|>")
        cfg_max = config.get("model_max_length")
        if max_length is None:
            # transformers writes a huge sentinel when the length is unknown
            max_length = int(cfg_max) if cfg_max and int(cfg_max) < 100_000 else 77
        self.max_length = int(max_length)

        if (folder / "tokenizer.json").exists():
            self._tok = Tokenizer.from_file(str(folder / "tokenizer.json"))
        elif (folder / "vocab.json").exists() and (folder / "merges.txt").exists():
            self._tok = self._build(folder)
        else:
            raise FileNotFoundError(
                f"{folder}: no tokenizer.json and no vocab.json + merges.txt; re-export the model"
            )

        # Special tokens are matched as whole tokens in the input text (transformers does too).
        specials = [self.bos_token, self.eos_token, self.unk_token, self.pad_token]
        for entry in (config.get("added_tokens_decoder") or {}).values():
            if isinstance(entry, dict) and entry.get("content"):
                specials.append(entry["content"])
        self._tok.add_special_tokens(
            [AddedToken(s, special=True, normalized=False) for s in dict.fromkeys(specials)]
        )
        vocab = self._tok.get_vocab()
        for name in ("bos_token", "eos_token", "pad_token"):
            if getattr(self, name) not in vocab:
                raise ValueError(
                    f"{folder}: {name} {getattr(self, name)!r} is not in the vocabulary"
                )
        self.bos_id = vocab[self.bos_token]
        self.eos_id = vocab[self.eos_token]
        self.pad_id = vocab[self.pad_token]
        # Always set the post-processor, truncation and padding ourselves: a tokenizer.json may
        # carry other defaults.
        self._tok.post_processor = processors.RobertaProcessing(
            (self.eos_token, self.eos_id), (self.bos_token, self.bos_id), False, False
        )
        self._tok.no_padding()
        self._tok.no_truncation()
        self._plain = Tokenizer.from_str(self._tok.to_str())  # untruncated, for count()
        self._tok.enable_truncation(max_length=self.max_length)
        self._tok.enable_padding(
            length=self.max_length, pad_id=self.pad_id, pad_token=self.pad_token
        )

    def _build(self, folder: Path) -> Tokenizer:
        vocab = json.loads((folder / "vocab.json").read_text(encoding="utf-8"))
        merges = _read_merges(folder / "merges.txt")
        tok = Tokenizer(
            BPE(
                vocab=vocab,
                merges=merges,
                dropout=None,
                continuing_subword_prefix="",
                end_of_word_suffix="</w>",
                fuse_unk=False,
                unk_token=self.unk_token,
            )
        )
        tok.normalizer = normalizers.Sequence(
            [normalizers.NFC(), normalizers.Replace(Regex(r"\s+"), " "), normalizers.Lowercase()]
        )
        tok.pre_tokenizer = pre_tokenizers.Sequence(
            [
                pre_tokenizers.Split(Regex(CLIP_SPLIT_PATTERN), behavior="removed", invert=True),
                pre_tokenizers.ByteLevel(add_prefix_space=False),
            ]
        )
        tok.decoder = decoders.ByteLevel()
        return tok

    def encode(self, texts: list[str] | str) -> np.ndarray:
        """int64 (B, max_length): bos + tokens (truncated so that eos fits) + eos + pad."""
        if isinstance(texts, str):
            texts = [texts]
        encs = self._tok.encode_batch([t if t is not None else "" for t in texts])
        return np.asarray([e.ids for e in encs], dtype=np.int64).reshape(
            len(texts), self.max_length
        )

    def count(self, text: str) -> int:
        """Tokens in ``text`` without bos/eos and without truncation (what the client sent)."""
        return len(self._plain.encode(text or "", add_special_tokens=False).ids)

    def truncated(self, text: str) -> bool:
        """True when ``text`` does not fit in ``max_length`` with bos/eos (the tail is dropped)."""
        return self.count(text) > self.max_length - 2
