"""CLIP-style BPE tokenizer on the ``tokenizers`` library (no transformers at run time).

Reads a folder written by ``CLIPTokenizer.save_pretrained``:

- ``tokenizer.json`` when present (the full pipeline as transformers saved it);
- otherwise ``vocab.json`` + ``merges.txt``, from which the CLIP pipeline is rebuilt exactly as
  transformers' ``CLIPTokenizer`` builds it: NFC -> collapse whitespace -> lowercase; split on
  CLIP's regex; byte-level; BPE with ``</w>`` end-of-word suffix; ``bos ... eos``.

Special tokens and the length come from the folder's files, CLIP's values only where the files
are silent (see ``CLIPTokenizer``): SD 1.x pads with ``<|endoftext|>``, SD 2.x with ``!``, and
other text encoders use other tokens and ids (e.g. ``<s>`` = 1, ``</s>`` = 2, ``<pad>`` = 0).

Output: ``encode(texts)`` -> int64 (B, max_length) ids, truncated (the eos token is kept) and
padded, exactly as ``tokenizer(texts, padding="max_length", max_length=max_length,
truncation=True)``.
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
#: transformers' CLIPTokenizer defaults, used only when no file names a bos / eos token.
CLIP_BOS, CLIP_EOS = "<|startoftext|>", "<|endoftext|>"
#: CLIP's context length, used only when neither the caller nor any file gives a length.
CLIP_MAX_LENGTH = 77
#: transformers writes model_max_length = int(1e30) when the length is unknown.
UNSET_LENGTH = 100_000
SPECIAL_KEYS = ("bos_token", "eos_token", "pad_token", "unk_token")


def _token_str(value) -> str | None:
    """A token in tokenizer_config.json is either a str or {"content": str, ...}."""
    if isinstance(value, dict):
        value = value.get("content")
    return None if value is None else str(value)


def _read_json(path: Path) -> dict:
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}


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


def _post_processor_specials(post: dict | None) -> tuple[str | None, str | None]:
    """(bos, eos) that a tokenizer.json post-processor wraps a single sequence in.

    Roberta/Bert processing: (cls, sep); TemplateProcessing: the special token right before and
    right after ``$A``; Sequence: the first member that adds any. (None, None) when it adds none.
    """
    if not post:
        return None, None
    kind = post.get("type")
    if kind == "Sequence":
        for member in post.get("processors") or []:
            found = _post_processor_specials(member)
            if found != (None, None):
                return found
        return None, None
    if kind in ("RobertaProcessing", "BertProcessing"):
        return post["cls"][0], post["sep"][0]
    if kind == "TemplateProcessing":
        names = post.get("special_tokens") or {}

        def token(piece: dict) -> str | None:
            if "SpecialToken" not in piece:
                return None
            key = piece["SpecialToken"]["id"]
            return ((names.get(key) or {}).get("tokens") or [key])[0]

        single = post.get("single") or []
        seq = next((i for i, p in enumerate(single) if "Sequence" in p), len(single))
        before = [t for t in map(token, single[:seq]) if t]
        after = [t for t in map(token, single[seq + 1 :]) if t]
        return (before[-1] if before else None), (after[0] if after else None)
    return None, None


def _special_tokens(config: dict, special_map: dict, tok_json: dict) -> dict[str, str]:
    """bos/eos/pad/unk token strings, each from the first source that names it:
    tokenizer_config.json, special_tokens_map.json, then tokenizer.json (bos/eos: the
    post-processor; pad: the padding settings; unk: the BPE model). Where none does:
    bos/eos -> CLIP's ``<|startoftext|>`` / ``<|endoftext|>`` (transformers' CLIPTokenizer
    defaults), pad and unk -> the eos token (what CLIP uses for both)."""
    post_bos, post_eos = _post_processor_specials(tok_json.get("post_processor"))
    from_tok_json = {
        "bos_token": post_bos,
        "eos_token": post_eos,
        "pad_token": (tok_json.get("padding") or {}).get("pad_token"),
        "unk_token": (tok_json.get("model") or {}).get("unk_token"),
    }
    out: dict[str, str] = {}
    for key in SPECIAL_KEYS:
        named = _token_str(config.get(key)) or _token_str(special_map.get(key))
        out[key] = named or from_tok_json[key]
    out["bos_token"] = out["bos_token"] or CLIP_BOS
    out["eos_token"] = out["eos_token"] or CLIP_EOS
    out["pad_token"] = out["pad_token"] or out["eos_token"]
    out["unk_token"] = out["unk_token"] or out["eos_token"]
    return out


def _max_length(explicit: int | None, config: dict, tok_json: dict) -> int:
    """Prompt length: ``explicit`` (the text encoder graph's length, from the manifest), else
    tokenizer_config.json's model_max_length, else tokenizer.json's truncation length, else
    CLIP's 77."""
    if explicit is not None:
        return int(explicit)
    cfg = config.get("model_max_length")
    if cfg and int(cfg) < UNSET_LENGTH:
        return int(cfg)
    trunc = (tok_json.get("truncation") or {}).get("max_length")
    return int(trunc) if trunc else CLIP_MAX_LENGTH


class CLIPTokenizer:
    """CLIP-style BPE tokenizer. ``encode`` -> int64 (B, max_length); ``count`` -> int.

    ``max_length``: the prompt length in tokens; pass the text encoder's (the manifest's
    ``text_max_length``), else it comes from the files (``_max_length``). Special tokens:
    ``_special_tokens``; bos, eos and pad must be in the vocabulary (ValueError otherwise).
    """

    def __init__(self, folder: Path, max_length: int | None = None):
        folder = Path(folder)
        config = _read_json(folder / "tokenizer_config.json")
        special_map = _read_json(folder / "special_tokens_map.json")
        tok_json = _read_json(folder / "tokenizer.json")
        specials = _special_tokens(config, special_map, tok_json)
        self.bos_token = specials["bos_token"]
        self.eos_token = specials["eos_token"]
        self.pad_token = specials["pad_token"]
        self.unk_token = specials["unk_token"]
        self.max_length = _max_length(max_length, config, tok_json)

        if tok_json:
            self._tok = Tokenizer.from_str(json.dumps(tok_json))
        elif (folder / "vocab.json").exists() and (folder / "merges.txt").exists():
            self._tok = self._build(folder)
        else:
            raise FileNotFoundError(
                f"{folder}: no tokenizer.json and no vocab.json + merges.txt; re-export the model"
            )

        # Checked before add_special_tokens, which would append a missing token with a new id
        # beyond the text encoder's vocabulary.
        vocab = self._tok.get_vocab()
        for name in ("bos_token", "eos_token", "pad_token"):
            if getattr(self, name) not in vocab:
                raise ValueError(
                    f"{folder}: {name} {getattr(self, name)!r} is not in the vocabulary; name "
                    f"the right one as {name!r} in tokenizer_config.json"
                )
        self.bos_id = vocab[self.bos_token]
        self.eos_id = vocab[self.eos_token]
        self.pad_id = vocab[self.pad_token]
        # Special tokens are matched as whole tokens in the input text (transformers does too).
        # An unk the vocabulary lacks (a fallback) is left out rather than given a new id.
        names = [self.bos_token, self.eos_token, self.pad_token]  # all in vocab (checked)
        names += [self.unk_token] if self.unk_token in vocab else []
        for entry in (config.get("added_tokens_decoder") or {}).values():
            if isinstance(entry, dict) and entry.get("content"):
                names.append(entry["content"])
        self._tok.add_special_tokens(
            [AddedToken(s, special=True, normalized=False) for s in dict.fromkeys(names)]
        )
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
