"""Random-weight Whisper checkpoints in openai-whisper's own format (and its faster-whisper conversion).

``<model_dir>/whisper/turbo.pt`` is what ``whisper.load_model(path)`` reads: a ``torch.save`` of
``{"dims": asdict(ModelDimensions), "model_state_dict": ...}`` with float16 weights, as the official
checkpoints are. ``full`` has turbo's real dimensions (809 M parameters, 1.6 GB); ``tiny`` keeps
what whisper's tokenizer and timing code rely on (128 mel bins, a 1500-frame encoder for 30 s, the
100-language vocabulary of 51866 tokens, a 448-token text context) with 64-wide, 2-layer stacks.

:func:`build_faster_whisper` converts that checkpoint into the CTranslate2 folder faster-whisper
loads, ``<model_dir>/faster-whisper/turbo/`` (``model.bin``, ``config.json``, ``vocabulary.json``,
``tokenizer.json``, ``preprocessor_config.json``), offline: the weights renamed into transformers'
``WhisperForConditionalGeneration`` (transformers 4.57 ships no openai converter), the tokenizer
made from the tiktoken file whisper bundles (transformers' ``TikTokenConverter``), then
CTranslate2's ``TransformersConverter``. It needs transformers (not a voxflow dependency).
"""

from __future__ import annotations

import tempfile
from dataclasses import asdict
from pathlib import Path

LIBRARY = "whisper"
MODEL_NAME = "turbo"
FASTER_WHISPER_LIBRARY = "faster-whisper"
# openai-whisper's large-v3-turbo: 32 encoder layers, 4 decoder layers, width 1280, 20 heads
FULL_DIMS = dict(
    n_mels=128,
    n_audio_ctx=1500,
    n_audio_state=1280,
    n_audio_head=20,
    n_audio_layer=32,
    n_vocab=51866,
    n_text_ctx=448,
    n_text_state=1280,
    n_text_head=20,
    n_text_layer=4,
)
TINY_DIMS = {
    **FULL_DIMS,
    "n_audio_state": 64,
    "n_audio_head": 2,
    "n_audio_layer": 2,
    "n_text_state": 64,
    "n_text_head": 2,
    "n_text_layer": 2,
}
# Plain random init gives a decoder that repeats one token whatever the audio. These scales make the
# output depend on the audio and mix text with timestamp tokens, so a decode has segments and words:
TOKEN_LOGIT_STD = 2.0  # std of the output logits: token embedding std = this / sqrt(width)
TEXT_POSITION_STD = 1.0  # learned text positions (whisper leaves them uninitialised: torch.empty)
MEL_INPUT_GAIN = 8.0  # first convolution: the mel outweighs the encoder's sinusoidal positions
CROSS_QUERY_GAIN = 16.0  # cross-attention queries: peaked attention over the audio frames
CROSS_OUTPUT_GAIN = 4.0  # cross-attention output: the audio outweighs the previous token


def random_whisper(size: str, seed: int):
    """A ``whisper.model.Whisper`` of ``size`` with seeded random weights (float32, on the CPU)."""
    import torch
    from whisper.model import ModelDimensions, Whisper

    dims = ModelDimensions(**(FULL_DIMS if size == "full" else TINY_DIMS))
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = Whisper(dims)
        torch.nn.init.normal_(model.decoder.token_embedding.weight, std=TOKEN_LOGIT_STD / dims.n_text_state**0.5)
        torch.nn.init.normal_(model.decoder.positional_embedding, std=TEXT_POSITION_STD)
    with torch.no_grad():
        model.encoder.conv1.weight.mul_(MEL_INPUT_GAIN)
        for block in model.decoder.blocks:
            block.cross_attn.query.weight.mul_(CROSS_QUERY_GAIN)
            block.cross_attn.out.weight.mul_(CROSS_OUTPUT_GAIN)
    return model.eval()


def build(model_dir: Path, size: str, seed: int) -> list[Path]:
    """Write ``<model_dir>/whisper/turbo.pt``; returns ``[path]``."""
    import torch

    model = random_whisper(size, seed)
    path = Path(model_dir) / LIBRARY / f"{MODEL_NAME}.pt"
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {name: tensor.half() for name, tensor in model.state_dict().items()}
    checkpoint = {"dims": asdict(model.dims), "model_state_dict": state}
    with tempfile.NamedTemporaryFile(dir=path.parent, suffix=".part", delete=False) as part:
        torch.save(checkpoint, part)
    Path(part.name).replace(path)
    return [path]


# openai-whisper parameter names -> transformers' WhisperForConditionalGeneration names (regex, replacement)
_HF_NAMES = (
    (r"^encoder\.positional_embedding$", "model.encoder.embed_positions.weight"),
    (r"^decoder\.positional_embedding$", "model.decoder.embed_positions.weight"),
    (r"^decoder\.token_embedding\.", "model.decoder.embed_tokens."),
    (r"^encoder\.ln_post\.", "model.encoder.layer_norm."),
    (r"^decoder\.ln\.", "model.decoder.layer_norm."),
    (r"^(encoder|decoder)\.blocks\.", r"model.\1.layers."),
    (r"^encoder\.conv", "model.encoder.conv"),
    (r"\.attn\.", ".self_attn."),
    (r"\.attn_ln\.", ".self_attn_layer_norm."),
    (r"\.cross_attn\.", ".encoder_attn."),
    (r"\.cross_attn_ln\.", ".encoder_attn_layer_norm."),
    (r"_attn\.query\.", "_attn.q_proj."),
    (r"_attn\.key\.", "_attn.k_proj."),
    (r"_attn\.value\.", "_attn.v_proj."),
    (r"_attn\.out\.", "_attn.out_proj."),
    (r"\.mlp\.0\.", ".fc1."),
    (r"\.mlp\.2\.", ".fc2."),
    (r"\.mlp_ln\.", ".final_layer_norm."),
)


def _transformers_whisper(model):
    """The same weights as transformers' ``WhisperForConditionalGeneration`` (what CTranslate2 converts)."""
    import re

    from transformers import WhisperConfig, WhisperForConditionalGeneration

    dims = model.dims
    eot = 50257  # <|endoftext|> of whisper's multilingual vocabulary
    config = WhisperConfig(
        vocab_size=dims.n_vocab,
        num_mel_bins=dims.n_mels,
        d_model=dims.n_audio_state,
        encoder_layers=dims.n_audio_layer,
        encoder_attention_heads=dims.n_audio_head,
        encoder_ffn_dim=4 * dims.n_audio_state,
        decoder_layers=dims.n_text_layer,
        decoder_attention_heads=dims.n_text_head,
        decoder_ffn_dim=4 * dims.n_text_state,
        max_source_positions=dims.n_audio_ctx,
        max_target_positions=dims.n_text_ctx,
        decoder_start_token_id=eot + 1,
        pad_token_id=eot,
        bos_token_id=eot,
        eos_token_id=eot,
    )
    state = {}
    for name, tensor in model.state_dict().items():
        for pattern, replacement in _HF_NAMES:
            name = re.sub(pattern, replacement, name)
        state[name] = tensor.float()
    state["proj_out.weight"] = state["model.decoder.embed_tokens.weight"]
    converted = WhisperForConditionalGeneration(config)
    converted.generation_config.suppress_tokens = []  # faster-whisper passes its own list
    converted.generation_config.begin_suppress_tokens = [220, eot]  # " " and <|endoftext|>, whisper's suppress_blank
    missing, unexpected = converted.load_state_dict(state)
    if unexpected or set(missing) - {"model.encoder.embed_positions.weight"}:
        raise RuntimeError(f"whisper -> transformers names: missing {missing}, unexpected {unexpected}")
    return converted.eval()


def _tokenizer(model):
    """whisper's multilingual tiktoken vocabulary as a transformers fast tokenizer (``tokenizer.json``)."""
    from transformers import WhisperTokenizerFast
    from transformers.convert_slow_tokenizer import TikTokenConverter
    from whisper.tokenizer import get_encoding

    encoding = get_encoding("multilingual", num_languages=model.num_languages)
    specials = list(encoding._special_tokens)  # in id order, after the 50257 byte-pair tokens
    vocab = Path(__import__("whisper").__file__).parent / "assets" / "multilingual.tiktoken"
    converted = TikTokenConverter(str(vocab), pattern=encoding._pat_str, additional_special_tokens=specials).converted()
    return WhisperTokenizerFast(tokenizer_object=converted, additional_special_tokens=specials[1:])


def build_faster_whisper(model_dir: Path, size: str, seed: int) -> list[Path]:
    """Convert ``<model_dir>/whisper/turbo.pt`` (built first if missing) into faster-whisper's folder
    ``<model_dir>/faster-whisper/turbo/``; returns its files. Offline: the tokenizer comes from the
    tiktoken file whisper ships."""
    import ctranslate2
    import whisper
    from transformers import WhisperFeatureExtractor

    checkpoint = Path(model_dir) / LIBRARY / f"{MODEL_NAME}.pt"
    if not checkpoint.exists():
        build(model_dir, size, seed)
    model = whisper.load_model(
        str(checkpoint), device="cpu"
    )  # the float16-rounded weights, as the checkpoint holds them
    out = Path(model_dir) / FASTER_WHISPER_LIBRARY / MODEL_NAME
    with tempfile.TemporaryDirectory() as folder:
        converted = _transformers_whisper(model)
        layers_heads = model.alignment_heads.indices().T.tolist()  # whisper's default for a random model
        converted.generation_config.alignment_heads = layers_heads
        tokenizer = _tokenizer(model)
        converted.generation_config.lang_to_id = {
            t: tokenizer.convert_tokens_to_ids(t)
            for t in tokenizer.additional_special_tokens
            if t.strip("<|>") in whisper.tokenizer.LANGUAGES
        }
        converted.save_pretrained(folder)
        tokenizer.save_pretrained(folder)
        WhisperFeatureExtractor(feature_size=model.dims.n_mels).save_pretrained(folder)
        converter = ctranslate2.converters.TransformersConverter(
            folder, copy_files=["tokenizer.json", "preprocessor_config.json"]
        )
        converter.convert(str(out), force=True)
    return sorted(out.iterdir())
