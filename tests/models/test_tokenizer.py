"""server.models.tokenizer.CLIPTokenizer vs transformers' CLIPTokenizer.

The real CLIP BPE vocabulary is rebuilt from the ``bpe_simple_vocab_16e6.txt.gz`` that the
``open_clip_torch`` package ships (exactly as OpenAI's CLIP builds it), so the parity covers the
full 49408-token vocabulary, not a toy one. A small non-CLIP vocabulary (``export.tiny``: pad 0,
bos 1, eos 2, 32 positions) checks that special ids and the length come from the files.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from export import tiny as export_tiny
from server.models.tokenizer import CLIPTokenizer

transformers = pytest.importorskip("transformers")

STRINGS = [
    "",
    " ",
    "a photo of a cat",
    "A Photo Of A CAT, sitting on a park bench!!!",
    "Face of a yellow cat, high resolution, sitting on a park bench",
    "numbers 1234567 and 3.14159, 1e-5 and 42nd",
    "punctuation: ;;; ... ?! -- ((brackets)) [x] {y} <z> @#$%^&*_+=~`|\\/",
    "don't we'll they're it's I'm you've he'd",
    "unicode: café naïve résumé Ærøskøbing straße",
    "emoji 🐱🚀 and kanji 猫 東京 and кириллица and العربية",
    "tabs\tand\nnewlines\r\n  multiple   spaces",
    "<|startoftext|> special <|endoftext|> tokens inside",
    "ＦＵＬＬＷＩＤＴＨ letters and ﬁ ligature",
    "e\u0301 combining accent (NFC)",
    "masterpiece, best quality, (ultra-detailed:1.2), 8k uhd, dslr",
    " ".join(["word"] * 100),  # truncated
    "long " + ", ".join(f"token{i}" for i in range(80)),  # truncated in the middle of words
    "x" * 500,
]


def write_clip_vocab(folder: Path, pad_token: str = "<|endoftext|>") -> Path:
    """vocab.json + merges.txt (the exporter's builder) + tokenizer_config.json of OpenAI's CLIP."""
    try:
        export_tiny.write_clip_vocab(folder)
    except FileNotFoundError as err:
        pytest.skip(str(err))
    config = {
        "bos_token": "<|startoftext|>",
        "eos_token": "<|endoftext|>",
        "unk_token": "<|endoftext|>",
        "pad_token": pad_token,
        "model_max_length": 77,
    }
    (folder / "tokenizer_config.json").write_text(json.dumps(config))
    return folder


@pytest.fixture(scope="module", params=["<|endoftext|>", "!"], ids=["sd15-pad", "sd2-pad"])
def vocab_dir(request, tmp_path_factory):
    name = "eot" if request.param.startswith("<") else "bang"
    return write_clip_vocab(tmp_path_factory.mktemp(f"clip_{name}"), pad_token=request.param)


def _reference(folder: Path):
    return transformers.CLIPTokenizer.from_pretrained(str(folder))


def _ref_ids(ref, texts, max_length: int = 77):
    out = ref(
        texts, padding="max_length", max_length=max_length, truncation=True, return_tensors="np"
    )
    return out["input_ids"].astype(np.int64)


def test_vocab_merges_parity(vocab_dir):
    ref = _reference(vocab_dir)
    ours = CLIPTokenizer(vocab_dir)
    got = ours.encode(STRINGS)
    assert got.dtype == np.int64 and got.shape == (len(STRINGS), 77)
    want = _ref_ids(ref, STRINGS)
    for s, g, w in zip(STRINGS, got, want, strict=True):
        assert g.tolist() == w.tolist(), s
    # truncation keeps eos as the last token; padding uses the configured pad token
    assert got[-1, -1] == ours.eos_id
    assert got[0, 2] == ours.pad_id
    assert ours.pad_id == ref.pad_token_id


def test_tokenizer_json_parity(vocab_dir, tmp_path):
    """A folder saved by transformers (tokenizer.json path) gives the same ids."""
    ref = _reference(vocab_dir)
    ref.save_pretrained(tmp_path)
    if not (tmp_path / "tokenizer.json").exists():
        pytest.skip("this transformers version writes no tokenizer.json")
    (tmp_path / "vocab.json").unlink(missing_ok=True)  # force the tokenizer.json route
    ours = CLIPTokenizer(tmp_path)
    assert ours.pad_token == ref.pad_token
    assert ours.encode(STRINGS).tolist() == _ref_ids(ref, STRINGS).tolist()


def test_count_and_single_string(vocab_dir):
    ref = _reference(vocab_dir)
    ours = CLIPTokenizer(vocab_dir)
    for s in STRINGS:
        assert ours.count(s) == len(ref(s, add_special_tokens=False)["input_ids"]), s
    assert ours.count("") == 0
    assert ours.count(" ".join(["word"] * 100)) == 100  # not truncated
    assert ours.encode("a cat").shape == (1, 77)


def test_missing_files(tmp_path):
    with pytest.raises(FileNotFoundError):
        CLIPTokenizer(tmp_path)


@pytest.mark.parametrize("route", ["tokenizer.json", "vocab+merges"])
def test_pipeline_tokenizer_folder(tiny_pipeline_dir, tmp_path, route):
    """The folder the exporter copies (CLIPTokenizer.save_pretrained + vocab/merges)."""
    src = tiny_pipeline_dir / "tokenizer"
    ref = transformers.CLIPTokenizer.from_pretrained(str(src))
    folder = shutil.copytree(src, tmp_path / "tok")
    if route == "vocab+merges":
        (folder / "tokenizer.json").unlink(missing_ok=True)
    ours = CLIPTokenizer(folder)
    assert ours.encode(STRINGS).tolist() == _ref_ids(ref, STRINGS).tolist()
    assert ours.encode("a photo of a cat")[0, :7].tolist() == [
        49406, 320, 1125, 539, 320, 2368, 49407,
    ]  # fmt: skip


def test_explicit_max_length_wins(vocab_dir):
    """The SD model passes the text encoder graph's length (manifest text_max_length)."""
    ours = CLIPTokenizer(vocab_dir, max_length=32)
    assert ours.max_length == 32
    assert ours.encode(STRINGS).tolist() == _ref_ids(_reference(vocab_dir), STRINGS, 32).tolist()


# ---------------------------------------------------------------- a small, non-CLIP vocabulary
SMALL_LEN = 32


@pytest.fixture(scope="module")
def small_dir(tmp_path_factory) -> Path:
    """tokenizer/ of a small-vocabulary CLIPTokenizer, written as the exporter writes it."""
    from export.tiny import build_small_vocab_tokenizer
    from export.tokenizer_files import save_tokenizer

    folder = tmp_path_factory.mktemp("small")
    save_tokenizer(build_small_vocab_tokenizer(max_length=SMALL_LEN), folder)
    return folder / "tokenizer"


def _small_ids(small_dir, texts=STRINGS):
    return _ref_ids(_reference(small_dir), texts, SMALL_LEN).tolist()


@pytest.mark.parametrize("route", ["tokenizer.json", "vocab+merges"])
def test_small_vocab_parity(small_dir, tmp_path, route):
    folder = shutil.copytree(small_dir, tmp_path / "tok")
    if route == "vocab+merges":
        (folder / "tokenizer.json").unlink()
    ours = CLIPTokenizer(folder)
    assert (ours.pad_id, ours.bos_id, ours.eos_id, ours.max_length) == (0, 1, 2, SMALL_LEN)
    got = ours.encode(STRINGS)
    assert got.tolist() == _small_ids(small_dir)
    assert got[-1, -1] == 2 and got[0, 2] == 0  # truncated row ends with eos; padding with <pad>
    assert got.max() < len(json.loads((small_dir / "vocab.json").read_text()))


def _tokenizer_json_only(small_dir, folder: Path, post_processor, padding: bool, truncation: bool):
    """Copy of ``small_dir`` with no tokenizer_config.json: tokenizer.json alone names the
    special tokens (its post-processor), the pad token and the length, or leaves them out."""
    from tokenizers import Tokenizer

    folder = shutil.copytree(small_dir, folder)
    (folder / "tokenizer_config.json").unlink()
    tok = Tokenizer.from_file(str(folder / "tokenizer.json"))
    tok.post_processor = post_processor
    tok.no_padding()
    tok.no_truncation()
    if padding:
        tok.enable_padding(pad_id=0, pad_token="<pad>", length=SMALL_LEN)
    if truncation:
        tok.enable_truncation(max_length=SMALL_LEN)
    tok.save(str(folder / "tokenizer.json"))
    return folder


def _post_processors():
    from tokenizers import processors as pp

    return {
        "roberta": pp.RobertaProcessing(("</s>", 2), ("<s>", 1), False, False),
        "template": pp.TemplateProcessing(
            single="<s> $A </s>",
            pair="<s> $A </s> $B </s>",
            special_tokens=[("<s>", 1), ("</s>", 2)],
        ),
        "sequence": pp.Sequence([pp.ByteLevel(), pp.BertProcessing(("</s>", 2), ("<s>", 1))]),
    }


@pytest.mark.parametrize("kind", ["roberta", "template", "sequence"])
def test_specials_and_length_from_tokenizer_json(small_dir, tmp_path, kind):
    post = _post_processors()[kind]
    folder = _tokenizer_json_only(small_dir, tmp_path / "tok", post, padding=True, truncation=True)
    ours = CLIPTokenizer(folder)
    assert (ours.bos_token, ours.eos_token, ours.pad_token) == ("<s>", "</s>", "<pad>")
    assert ours.max_length == SMALL_LEN
    assert ours.encode(STRINGS).tolist() == _small_ids(small_dir)


def test_fallbacks_when_the_files_are_silent(small_dir, tmp_path):
    """No pad anywhere -> eos (CLIP's convention); no length anywhere -> the caller's, else 77."""
    post = _post_processors()["roberta"]
    folder = _tokenizer_json_only(
        small_dir, tmp_path / "tok", post, padding=False, truncation=False
    )
    ours = CLIPTokenizer(folder, max_length=SMALL_LEN)
    assert (ours.bos_id, ours.eos_id, ours.pad_id, ours.max_length) == (1, 2, 2, SMALL_LEN)
    want = np.asarray(_small_ids(small_dir))
    want[want == 0] = 2  # <pad> -> </s>
    assert ours.encode(STRINGS).tolist() == want.tolist()
    assert CLIPTokenizer(folder).max_length == 77


def test_unknown_special_token_is_an_error(small_dir, tmp_path):
    """Nothing names a bos and the vocabulary has no CLIP <|startoftext|>: refuse, instead of
    appending a new id the text encoder does not have."""
    folder = _tokenizer_json_only(
        small_dir, tmp_path / "tok", None, padding=False, truncation=False
    )
    with pytest.raises(ValueError, match="bos_token"):
        CLIPTokenizer(folder, max_length=SMALL_LEN)
