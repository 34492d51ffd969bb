"""The tokenizer folder of an export (and of the random-weight source pipelines).

``save_pretrained`` in transformers 5 writes ``tokenizer.json`` + ``tokenizer_config.json`` only.
Beside them we add the classic ``vocab.json`` / ``merges.txt`` extracted from tokenizer.json's BPE
model, so transformers 4 and plain BPE readers (the server's fallback route) can load the folder.
"""

from __future__ import annotations

import json
from pathlib import Path

#: manifest ``tokenizer`` key -> file name inside the tokenizer folder.
MANIFEST_KEYS = {
    "tokenizer_json": "tokenizer.json",
    "vocab": "vocab.json",
    "merges": "merges.txt",
    "config": "tokenizer_config.json",
}


def write_vocab_merges(tok_dir: Path) -> None:
    """Add vocab.json + merges.txt beside tokenizer.json when its model is BPE (files that
    already exist are kept: they may be the originals the tokenizer was built from)."""
    tok_json = tok_dir / "tokenizer.json"
    if not tok_json.is_file():
        return
    model = json.loads(tok_json.read_text(encoding="utf-8"))["model"]
    if model.get("type", "BPE") != "BPE" or "merges" not in model:
        return
    vocab, merges_txt = tok_dir / "vocab.json", tok_dir / "merges.txt"
    if not vocab.exists():
        vocab.write_text(json.dumps(model["vocab"], ensure_ascii=False), encoding="utf-8")
    if not merges_txt.exists():
        merges = [m if isinstance(m, str) else " ".join(m) for m in model["merges"]]
        merges_txt.write_text("#version: 0.2\n" + "\n".join(merges) + "\n", encoding="utf-8")


def save_tokenizer(tokenizer, folder: Path, subdir: str = "tokenizer") -> dict[str, str]:
    """``tokenizer.save_pretrained(folder / subdir)`` + vocab/merges; returns the manifest's
    ``tokenizer`` entry: the files written, as paths relative to ``folder``."""
    tok_dir = folder / subdir
    tokenizer.save_pretrained(tok_dir)
    write_vocab_merges(tok_dir)
    return {
        key: f"{subdir}/{name}" for key, name in MANIFEST_KEYS.items() if (tok_dir / name).is_file()
    }
