"""Local random-weight Stable Diffusion inpainting pipelines (no model hub needed).

- ``build_tiny_pipeline``: a few-hundred-KB pipeline with the real SD-inpainting *shape*
  (9-channel UNet, 4-level VAE so ``vae_scale_factor == 8``, CLIP text encoder with the real
  49408-token vocabulary and 77 positions, SD 1.5 PNDM scheduler). For tests and CI. Its
  parameters give other shapes: any tokenizer (the text encoder follows its vocabulary, length
  and special ids, e.g. ``build_small_vocab_tokenizer``), text hidden size, VAE depth.
- ``build_sd15_random_pipeline``: the full SD 1.5-inpainting architecture (~1.07 B parameters)
  with random weights, to measure export time / disk / RAM without downloading weights.

Both are deterministic from ``seed`` and are written with ``save_pretrained`` so that the exporter
loads them through the real path, ``StableDiffusionInpaintPipeline.from_pretrained(folder)``.

The CLIP tokenizer is built from the real CLIP BPE vocabulary shipped in the open-clip-torch
wheel (``bpe_simple_vocab_16e6.txt.gz``), converted exactly like CLIP's ``SimpleTokenizer`` does.
``open_clip`` is installed with ``--no-deps`` and must never be imported: we only locate the file.

The CLIP and SD 1.5 numbers here (49408, 77, 49406/49407, 768...) describe the models these
builders make; the exporter never uses them: it reads every fact from the pipeline it loads.
"""

from __future__ import annotations

import gzip
import importlib.util
import json
import tempfile
from pathlib import Path

from .tokenizer_files import write_vocab_merges

#: "a photo of a cat" in the real CLIP vocabulary (checked after building the tokenizer).
KNOWN_IDS = {"a photo of a cat": [49406, 320, 1125, 539, 320, 2368, 49407]}

#: SD 1.5 (runwayml / stable-diffusion-inpainting) scheduler/scheduler_config.json.
SD15_SCHEDULER = dict(
    beta_start=0.00085,
    beta_end=0.012,
    beta_schedule="scaled_linear",
    num_train_timesteps=1000,
    skip_prk_steps=True,
    steps_offset=1,
    set_alpha_to_one=False,
    trained_betas=None,
    prediction_type="epsilon",
)


def bytes_to_unicode() -> dict[int, str]:
    """CLIP/GPT-2 byte -> printable unicode char table (256 entries, order matters for ids)."""
    bs = (
        list(range(ord("!"), ord("~") + 1))
        + list(range(ord("¡"), ord("¬") + 1))
        + list(range(ord("®"), ord("ÿ") + 1))
    )
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, map(chr, cs), strict=True))


def clip_bpe_file() -> Path:
    """Path of ``bpe_simple_vocab_16e6.txt.gz`` inside the installed open-clip-torch package."""
    spec = importlib.util.find_spec("open_clip")  # locates the package; does not import it
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            "open-clip-torch is not installed; run `make install-dev` "
            "(pip install --no-deps open-clip-torch) to get the CLIP BPE vocabulary"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / "bpe_simple_vocab_16e6.txt.gz"
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing from the open-clip-torch install")
    return path


def write_clip_vocab(folder: Path) -> tuple[Path, Path]:
    """Write CLIP's ``vocab.json`` (49408 tokens) and ``merges.txt`` into ``folder``.

    Same order as CLIP's SimpleTokenizer: 256 byte chars, the same + ``</w>``, one token per
    merge, then ``<|startoftext|>`` (49406) and ``<|endoftext|>`` (49407).
    """
    lines = gzip.open(clip_bpe_file()).read().decode("utf-8").split("\n")
    merges = lines[1 : 49152 - 256 - 2 + 1]  # line 0 is a header; CLIP keeps 48894 merges
    chars = list(bytes_to_unicode().values())
    tokens = chars + [c + "</w>" for c in chars] + ["".join(m.split()) for m in merges]
    tokens += ["<|startoftext|>", "<|endoftext|>"]
    assert len(tokens) == len(set(tokens)) == 49408, len(tokens)
    folder.mkdir(parents=True, exist_ok=True)
    vocab, merges_txt = folder / "vocab.json", folder / "merges.txt"
    vocab.write_text(json.dumps({t: i for i, t in enumerate(tokens)}, ensure_ascii=False))
    merges_txt.write_text("#version: 0.2\n" + "\n".join(merges) + "\n")
    return vocab, merges_txt


def build_clip_tokenizer():
    """A ``CLIPTokenizer`` (max length 77) over the real CLIP vocabulary; checked on known ids."""
    from transformers import CLIPTokenizer

    with tempfile.TemporaryDirectory() as tmp:
        vocab, merges = write_clip_vocab(Path(tmp))
        # transformers 5 takes vocab=/merges= (it silently ignores v4's vocab_file=/merges_file=)
        tok = CLIPTokenizer(vocab=str(vocab), merges=str(merges), model_max_length=77)
    for text, ids in KNOWN_IDS.items():
        got = tok(text).input_ids
        if got != ids:
            raise RuntimeError(f"CLIP tokenizer mismatch for {text!r}: {got} != {ids}")
    return tok


#: Special tokens of the small-vocabulary tokenizer, in id order 0..3 (the sentencepiece/BPE
#: convention of many non-CLIP text encoders), so that nothing can pass by assuming CLIP's ids.
SMALL_SPECIALS = {
    "pad_token": "<pad>",
    "bos_token": "<s>",
    "eos_token": "</s>",
    "unk_token": "<unk>",
}
#: Words the small vocabulary spells as single tokens (the rest falls back to single characters).
SMALL_WORDS = (
    "a", "an", "the", "of", "on", "in", "and", "with", "photo", "cat", "dog", "red", "blue",
    "green", "bench", "park", "sitting", "wooden", "blurry", "sky", "high", "quality",
)  # fmt: skip


def write_small_vocab(folder: Path, words: tuple[str, ...] = SMALL_WORDS) -> tuple[Path, Path]:
    """Write a small CLIP-style BPE ``vocab.json`` + ``merges.txt`` into ``folder``.

    Tokens: ``SMALL_SPECIALS`` (ids 0..3), the 94 printable ASCII characters alone and with
    ``</w>`` (bytes outside them become ``<unk>``), and one left-to-right merge chain per word
    (c a -> ca, ca t</w> -> cat</w>): 252 tokens for the default words.
    """
    chars = [chr(c) for c in range(ord("!"), ord("~") + 1)]  # bytes_to_unicode maps them to self
    merges: list[str] = []
    for word in words:
        prefix = word[0]
        for i, ch in enumerate(word[1:], start=2):
            piece = ch + ("</w>" if i == len(word) else "")
            merges.append(f"{prefix} {piece}")
            prefix += piece
    merges = list(dict.fromkeys(merges))
    tokens = list(SMALL_SPECIALS.values()) + chars + [c + "</w>" for c in chars]
    tokens = list(dict.fromkeys(tokens + [m.replace(" ", "") for m in merges]))
    folder.mkdir(parents=True, exist_ok=True)
    vocab, merges_txt = folder / "vocab.json", folder / "merges.txt"
    vocab.write_text(json.dumps({t: i for i, t in enumerate(tokens)}, ensure_ascii=False))
    merges_txt.write_text("#version: 0.2\n" + "\n".join(merges) + "\n")
    return vocab, merges_txt


def build_small_vocab_tokenizer(max_length: int = 32):
    """A ``CLIPTokenizer`` over ``write_small_vocab``: pad 0, bos 1, eos 2, unk 3, ``max_length``
    positions (32 by default, not CLIP's 77)."""
    from transformers import CLIPTokenizer

    with tempfile.TemporaryDirectory() as tmp:
        vocab, merges = write_small_vocab(Path(tmp))
        return CLIPTokenizer(
            vocab=str(vocab), merges=str(merges), model_max_length=max_length, **SMALL_SPECIALS
        )


def sd15_scheduler():
    from diffusers import PNDMScheduler

    return PNDMScheduler(**SD15_SCHEDULER)


def _save_pipeline(folder: Path, unet, vae, text_encoder, tokenizer) -> Path:
    from diffusers import StableDiffusionInpaintPipeline

    pipe = StableDiffusionInpaintPipeline(
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        unet=unet,
        scheduler=sd15_scheduler(),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipe.save_pretrained(folder, safe_serialization=True)
    # Also keep the classic vocab.json/merges.txt beside tokenizer.json (transformers 5 writes
    # only tokenizer.json), so transformers 4 and plain BPE readers can load the folder too.
    write_vocab_merges(Path(folder) / "tokenizer")
    return Path(folder)


#: SD 1.x / 2.x VAE (AutoencoderKL), as in runwayml/stable-diffusion-inpainting's
#: vae/config.json (~84 M parameters, decoder ~50 M)
SD15_VAE = dict(
    in_channels=3,
    out_channels=3,
    down_block_types=("DownEncoderBlock2D",) * 4,
    up_block_types=("UpDecoderBlock2D",) * 4,
    block_out_channels=(128, 256, 512, 512),
    layers_per_block=2,
    latent_channels=4,
    norm_num_groups=32,
    sample_size=512,
    scaling_factor=0.18215,
)


def tiny_vae_config(levels: int = 4) -> dict:
    """The tiny test pipeline's VAE: SD's layout at widths (8, 16, 16, ...), ``levels`` deep
    (vae_scale_factor 2**(levels - 1))."""
    return dict(
        SD15_VAE,
        down_block_types=("DownEncoderBlock2D",) * levels,
        up_block_types=("UpDecoderBlock2D",) * levels,
        block_out_channels=(8, 16, 16, 16, 16)[:levels],
        layers_per_block=1,
        norm_num_groups=4,
        sample_size=64,
    )


def build_tiny_pipeline(
    folder: Path,
    seed: int = 0,
    *,
    tokenizer=None,
    hidden: int = 32,
    vae_levels: int = 4,
) -> Path:
    """Save a tiny random SD-inpainting pipeline to ``folder``; returns ``folder``.

    Defaults (the ``tiny`` preset):
    UNet: in 9 / out 4 channels, blocks (32, 64), sample_size 8 -> native 64 px.
    VAE: 4 levels (8, 16, 16, 16) -> vae_scale_factor 8, latent_channels 4, scaling 0.18215.
    Text: CLIP tokenizer; text encoder hidden 32, 2 layers, vocab 49408, 77 positions.

    ``tokenizer``: any transformers tokenizer; the text encoder takes its vocabulary size,
    ``model_max_length`` (positions) and bos/eos/pad ids. ``hidden``: text hidden size (= UNet
    cross-attention dim, a multiple of 4). ``vae_levels``: VAE depth, vae_scale_factor
    2**(levels - 1); the UNet's sample_size follows so that the native size stays 64 px.
    """
    import torch
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    folder = Path(folder)
    tokenizer = tokenizer if tokenizer is not None else build_clip_tokenizer()
    scale = 2 ** (vae_levels - 1)
    torch.manual_seed(seed)
    unet = UNet2DConditionModel(
        sample_size=64 // scale,
        in_channels=9,
        out_channels=4,
        block_out_channels=(32, 64),
        layers_per_block=1,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=hidden,
        attention_head_dim=8,
        norm_num_groups=8,
    )
    vae = AutoencoderKL(**tiny_vae_config(vae_levels))
    text_encoder = CLIPTextModel(
        CLIPTextConfig(
            vocab_size=len(tokenizer),
            hidden_size=hidden,
            intermediate_size=2 * hidden,
            num_hidden_layers=2,
            num_attention_heads=4,
            max_position_embeddings=tokenizer.model_max_length,
            hidden_act="quick_gelu",
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
        )
    )
    _save_pipeline(folder, unet, vae, text_encoder, tokenizer)
    return folder


def build_sd15_random_pipeline(folder: Path, seed: int = 0) -> Path:
    """Save the full SD 1.5-inpainting architecture with random weights (~4.3 GB fp32 on disk)."""
    import torch
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    folder = Path(folder)
    tokenizer = build_clip_tokenizer()
    torch.manual_seed(seed)
    unet = UNet2DConditionModel(
        sample_size=64,
        in_channels=9,
        out_channels=4,
        block_out_channels=(320, 640, 1280, 1280),
        layers_per_block=2,
        down_block_types=(
            "CrossAttnDownBlock2D",
            "CrossAttnDownBlock2D",
            "CrossAttnDownBlock2D",
            "DownBlock2D",
        ),
        up_block_types=(
            "UpBlock2D",
            "CrossAttnUpBlock2D",
            "CrossAttnUpBlock2D",
            "CrossAttnUpBlock2D",
        ),
        cross_attention_dim=768,
        attention_head_dim=8,
        norm_num_groups=32,
    )
    vae = AutoencoderKL(**SD15_VAE)
    text_encoder = CLIPTextModel(
        CLIPTextConfig(
            vocab_size=49408,
            hidden_size=768,
            intermediate_size=3072,
            num_hidden_layers=12,
            num_attention_heads=12,
            max_position_embeddings=77,
            hidden_act="quick_gelu",
            projection_dim=768,
            bos_token_id=0,  # as in openai/clip-vit-large-patch14's config (legacy ids)
            eos_token_id=2,
            pad_token_id=1,
        )
    )
    _save_pipeline(folder, unet, vae, text_encoder, tokenizer)
    return folder


PRESETS = {"tiny": build_tiny_pipeline, "sd15-random": build_sd15_random_pipeline}
