"""Random-weight Qwen3-TTS checkpoints in the exact folder layout ``Qwen3TTSModel.from_pretrained`` reads.

``build(model_dir, size, seed)`` writes the three default models of :mod:`voxflow.tasks.synthesize` into
``<model_dir>/qwen-tts/<repository name>/``, one folder per kind::

    Qwen3-TTS-12Hz-0.6B-Base/          tts_model_type "base" (speaker encoder: voice cloning)
    Qwen3-TTS-12Hz-1.7B-VoiceDesign/   tts_model_type "voice_design"
    Qwen3-TTS-12Hz-1.7B-CustomVoice/   tts_model_type "custom_voice" (built-in speakers)

each holding ``config.json``, ``model.safetensors``, ``generation_config.json``, the text tokenizer
(``vocab.json``, ``merges.txt``, ``tokenizer_config.json``) and a copy (not a link, so a folder can
be uploaded anywhere) of the shared 12 Hz speech tokenizer in ``speech_tokenizer/``.

``tiny`` keeps every id and shape the inference code relies on (the 3072-entry codec vocabulary with
the real special, language and speaker ids, 16 code groups of 2048 entries, the 1920-sample hop at
24 kHz, 128 mel bins for the speaker encoder) with 32-wide, 1-2 layer stacks: about 2.3 M parameters
and 13 MB per folder. ``full`` has the released models' sizes (0.6B: a 1024-wide, 28-layer talker;
1.7B: 2048-wide; a 5-layer code predictor, the Mimi encoder and 8-layer decoder of the speech
tokenizer, a 151936-entry text embedding), saved in bfloat16 as released. Both use the same small
byte-level BPE text tokenizer trained here (about 550 entries, Qwen2's pre-tokenizer and special
tokens), so ``full`` costs the real compute but tokenizes into more, shorter tokens than Qwen's.

What the random weights need to behave like a model (see the probe report on tiny Qwen3-TTS):

* the speech tokenizer's codebooks start at zero (every code would decode alike, every encode give
  code 0), so they are drawn at random, and its decoder convolutions are re-initialised so random
  codes decode to speech-level noise (RMS :data:`DECODED_RMS`) instead of digital silence;
* the talker and code predictor get ``N(0, 1/fan_in)`` linear weights and ``N(0, 1)`` embeddings so
  the text changes the output (with HF's default 0.02 the text path is drowned by the codec path);
* the codec head's EOS row is zeroed: generation always runs to ``max_new_tokens``, which makes run
  lengths deterministic (real checkpoints stop by themselves);
* ``config.json`` is rewritten after saving, because ``Qwen3TTSSpeakerEncoderConfig`` writes a
  ``model_type`` key its own ``__init__`` refuses on reload.

Deterministic: the same ``seed`` writes byte-identical files.
"""

from __future__ import annotations

import inspect
import json
import shutil
import tempfile
from pathlib import Path
from typing import Any

from voxflow.tasks.synthesize import DEFAULT_MODELS, LIBRARY, import_qwen_tts, local_folder_name

SAMPLE_RATE_HZ = 24_000
HOP_SAMPLES = 1920  # one 12.5 Hz codec frame at 24 kHz
CODEBOOK_SIZE = 2048
NUM_CODE_GROUPS = 16
CODEC_VOCAB_SIZE = CODEBOOK_SIZE + 1024  # generate() suppresses [vocab - 1024, vocab) except EOS
DECODED_RMS = 0.1  # level random codes decode to (the decoder's last convolution is scaled to it)
CALIBRATION_FRAMES = 32  # random codec frames decoded to measure the decoder's output level
DEFAULT_MAX_NEW_TOKENS = 48  # generation_config default; EOS never comes, so callers pass their own
BPE_VOCAB_SIZE = 600  # target size of the trained byte-level BPE (it stops near 550 on the corpus)
TEXT_VOCAB_MULTIPLE = 64  # the text embedding is padded to a multiple of this

# The codec's special ids, languages and speakers as the released 12 Hz configs number them (as public
# ports of those configs list them; the tiny and full builds use the same ids).
CODEC_IDS = {
    "codec_pad_id": 2148,
    "codec_bos_id": 2149,
    "codec_eos_token_id": 2150,
    "codec_think_id": 2154,
    "codec_nothink_id": 2155,
    "codec_think_bos_id": 2156,
    "codec_think_eos_id": 2157,
}
LANGUAGE_IDS = {
    "english": 2050,
    "german": 2053,
    "spanish": 2054,
    "chinese": 2055,
    "japanese": 2058,
    "french": 2061,
    "sichuan_dialect": 2062,
    "korean": 2064,
    "russian": 2069,
    "italian": 2070,
    "portuguese": 2071,
    "beijing_dialect": 2074,
}
SPEAKER_IDS = {
    "aiden": 2861,
    "sohee": 2864,
    "ono_anna": 2873,
    "eric": 2875,
    "dylan": 2878,
    "uncle_fu": 3010,
    "ryan": 3061,
    "vivian": 3065,
    "serena": 3066,
}
SPEAKER_DIALECTS = {"eric": "sichuan_dialect", "dylan": "beijing_dialect"}  # the others: False
SPECIAL_TOKENS = (
    "<|im_start|>",
    "<|im_end|>",
    "<tts_pad>",
    "<tts_text_bos>",
    "<tts_text_eod>",
    "<tts_text_bos_single>",
)
# The Qwen2 pre-tokenizer split (what transformers' Qwen2Converter writes into tokenizer.json).
QWEN2_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+"
    r"|\s+(?!\S)|\s+"
)
CHAT_ROLES = ("assistant", "user")  # must be single tokens: the model slices "<|im_start|>assistant\n" as 3 tokens
CHAT_ROLE_REPEATS = 64  # weight of the role words in the BPE corpus, so each merges into one token
BPE_CORPUS = """
The assistant reads each line aloud for the user. The user writes what the assistant should say.
A voice is cloned from a short reference recording and its transcript; another is designed from a
description such as a calm, low voice of an older man, or a bright and cheerful young woman.
Speech is generated as codec frames, twelve and a half per second, and decoded to a waveform.
Hello world. How are you today? I am fine, thank you, and you? Numbers: one, two, three, 2024.
Please speak slowly and clearly. This sentence is short! Is that a question? Yes; it is.
"""

# Sizes per model kind. tiny: the probe's fixture sizes; full: the released 0.6B / 1.7B models.
TINY = {
    "talker": dict(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
        head_dim=16,
        text_hidden_size=32,
        rope_theta=10_000,
        max_position_embeddings=32_768,
        rope_scaling={"rope_type": "default", "mrope_section": [2, 3, 3], "interleaved": True},
    ),
    "code_predictor": dict(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=1,
        head_dim=16,
        rope_theta=10_000,
        max_position_embeddings=65_536,
    ),
    "speaker_encoder": dict(
        enc_channels=[32, 32, 32, 32, 96], enc_attention_channels=16, enc_res2net_scale=4, enc_se_channels=16
    ),
    "encoder": dict(
        hidden_size=32,
        num_filters=4,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=2,
        head_dim=16,
        intermediate_size=64,
        codebook_dim=16,
        vector_quantization_hidden_dimension=16,
        num_quantizers=NUM_CODE_GROUPS,
        upsample_groups=32,
    ),
    "decoder": dict(
        codebook_dim=16,
        latent_dim=32,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=2,
        head_dim=16,
        decoder_dim=32,
    ),
}
FULL_TALKER = dict(
    num_hidden_layers=28,
    num_attention_heads=16,
    num_key_value_heads=8,
    head_dim=128,
    text_hidden_size=2048,
    rope_theta=1_000_000,
    max_position_embeddings=32_768,
    rope_scaling={"rope_type": "default", "mrope_section": [24, 20, 20], "interleaved": True},
)
FULL = {
    "talker_0.6b": {**FULL_TALKER, "hidden_size": 1024, "intermediate_size": 3072},
    "talker_1.7b": {**FULL_TALKER, "hidden_size": 2048, "intermediate_size": 6144},
    "code_predictor": dict(
        hidden_size=1024,
        intermediate_size=3072,
        num_hidden_layers=5,
        num_attention_heads=16,
        num_key_value_heads=8,
        head_dim=128,
        rope_theta=1_000_000,
        max_position_embeddings=65_536,
    ),
    "speaker_encoder": dict(
        enc_channels=[512, 512, 512, 512, 1536], enc_attention_channels=128, enc_res2net_scale=8, enc_se_channels=128
    ),
    "encoder": dict(
        hidden_size=512,
        num_filters=64,
        num_hidden_layers=8,
        num_attention_heads=8,
        num_key_value_heads=8,
        head_dim=64,
        intermediate_size=2048,
        codebook_dim=256,
        vector_quantization_hidden_dimension=256,
        num_quantizers=32,
        upsample_groups=512,
    ),
    "decoder": dict(
        codebook_dim=512,
        latent_dim=1024,
        hidden_size=512,
        intermediate_size=1024,
        num_hidden_layers=8,
        num_attention_heads=16,
        num_key_value_heads=16,
        head_dim=64,
        decoder_dim=1536,
    ),
}
FULL_TEXT_VOCAB_SIZE = 151_936
KINDS = {"clone": "base", "design": "voice_design", "custom": "custom_voice"}  # synthesize mode -> tts_model_type


def text_tokenizer():
    """A Qwen2-style fast tokenizer (byte-level BPE trained on :data:`BPE_CORPUS`, Qwen's special tokens).

    ``"<|im_start|>assistant\\n"`` becomes exactly 3 tokens and ``"<|im_end|>\\n<|im_start|>assistant\\n"``
    exactly 5, as the model's hard-coded slices require (checked here).
    """
    from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers
    from transformers import Qwen2TokenizerFast

    bpe = Tokenizer(models.BPE(unk_token=None))
    bpe.normalizer = normalizers.NFC()
    bpe.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(QWEN2_SPLIT), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=BPE_VOCAB_SIZE,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        special_tokens=["<|endoftext|>"],
        show_progress=False,
    )
    corpus = [line for line in BPE_CORPUS.splitlines() if line] + list(CHAT_ROLES) * CHAT_ROLE_REPEATS
    bpe.train_from_iterator(corpus, trainer)
    with tempfile.TemporaryDirectory() as folder:
        bpe.model.save(folder)
        tokenizer = Qwen2TokenizerFast(
            vocab_file=f"{folder}/vocab.json",
            merges_file=f"{folder}/merges.txt",
            unk_token=None,
            bos_token=None,
            eos_token="<|endoftext|>",
            pad_token="<|endoftext|>",
        )
    tokenizer.add_special_tokens({"additional_special_tokens": list(SPECIAL_TOKENS)})
    tokenizer.eos_token = "<|im_end|>"
    head = tokenizer("<|im_start|>assistant\n")["input_ids"]
    tail = tokenizer("<|im_end|>\n<|im_start|>assistant\n")["input_ids"]
    if len(head) != 3 or len(tail) != 5:
        raise RuntimeError(
            f"the tiny text tokenizer splits the chat markers wrongly: {len(head)} and {len(tail)} tokens"
        )
    return tokenizer


def _speech_tokenizer_config(size: str) -> dict[str, Any]:
    sizes = TINY if size == "tiny" else FULL
    encoder = dict(
        sampling_rate=SAMPLE_RATE_HZ,
        frame_rate=SAMPLE_RATE_HZ / HOP_SAMPLES,
        upsampling_ratios=[8, 6, 5, 4],
        codebook_size=CODEBOOK_SIZE,
        num_semantic_quantizers=1,
        use_causal_conv=True,
        **sizes["encoder"],
    )
    decoder = dict(
        codebook_size=CODEBOOK_SIZE,
        num_quantizers=NUM_CODE_GROUPS,
        upsample_rates=[8, 5, 4, 3],
        upsampling_ratios=[2, 2],
        **sizes["decoder"],
    )
    return dict(
        encoder_config=encoder,
        decoder_config=decoder,
        encoder_valid_num_quantizers=NUM_CODE_GROUPS,
        input_sample_rate=SAMPLE_RATE_HZ,
        output_sample_rate=SAMPLE_RATE_HZ,
        decode_upsample_rate=HOP_SAMPLES,
        encode_downsample_rate=HOP_SAMPLES,
        architectures=["Qwen3TTSTokenizerV2Model"],
    )


def build_speech_tokenizer(folder: Path, size: str, seed: int) -> None:
    """The 12 Hz speech tokenizer (Mimi encoder + codec decoder) with random codebooks, saved in ``folder``."""
    import torch
    from qwen_tts.core.tokenizer_12hz.configuration_qwen3_tts_tokenizer_v2 import Qwen3TTSTokenizerV2Config
    from qwen_tts.core.tokenizer_12hz.modeling_qwen3_tts_tokenizer_v2 import Qwen3TTSTokenizerV2Model
    from transformers import EncodecFeatureExtractor

    with torch.random.fork_rng(devices=[]), torch.no_grad():
        torch.manual_seed(seed)
        model = Qwen3TTSTokenizerV2Model(Qwen3TTSTokenizerV2Config(**_speech_tokenizer_config(size))).eval()
        for name, buffer in model.encoder.named_buffers():
            if name.endswith("embed_sum"):  # Mimi's quantizer codebooks
                buffer.normal_()
        for name, parameter in model.decoder.named_parameters():
            if name.endswith("embedding_sum"):  # the decoder's codebooks
                parameter.normal_()
        convolutions = [
            m for m in model.decoder.decoder.modules() if isinstance(m, (torch.nn.Conv1d, torch.nn.ConvTranspose1d))
        ]
        for conv in convolutions:
            torch.nn.init.kaiming_normal_(conv.weight)
            if conv.bias is not None:
                conv.bias.zero_()
        # the decoder clamps its output to [-1, 1]: measure the level before the clamp, at the last convolution
        levels: list[float] = []
        hook = convolutions[-1].register_forward_hook(
            lambda module, args, out: levels.append(out.pow(2).mean().sqrt().item())
        )
        model.decoder(torch.randint(0, CODEBOOK_SIZE, (2, NUM_CODE_GROUPS, CALIBRATION_FRAMES)))
        hook.remove()
        convolutions[-1].weight.mul_(DECODED_RMS / max(levels[0], 1e-12))
    if size == "full":
        model = model.to(torch.bfloat16)
    model.save_pretrained(folder)
    EncodecFeatureExtractor(feature_size=1, sampling_rate=SAMPLE_RATE_HZ, padding_side="right").save_pretrained(folder)


def model_config(kind: str, size: str, tokenizer) -> dict[str, Any]:
    """The ``Qwen3TTSConfig`` arguments of one kind (``base``, ``voice_design``, ``custom_voice``)."""
    big = kind != "base"  # the default design and custom models are the 1.7B ones, the clone model the 0.6B
    if size == "tiny":
        talker, predictor, speaker = TINY["talker"], TINY["code_predictor"], TINY["speaker_encoder"]
        text_vocab = -(-len(tokenizer) // TEXT_VOCAB_MULTIPLE) * TEXT_VOCAB_MULTIPLE
    else:
        talker, predictor, speaker = (
            FULL["talker_1.7b" if big else "talker_0.6b"],
            FULL["code_predictor"],
            FULL["speaker_encoder"],
        )
        text_vocab = FULL_TEXT_VOCAB_SIZE
    speakers = SPEAKER_IDS if kind == "custom_voice" else {}
    talker_config = dict(
        vocab_size=CODEC_VOCAB_SIZE,
        num_code_groups=NUM_CODE_GROUPS,
        text_vocab_size=text_vocab,
        codec_language_id=dict(LANGUAGE_IDS),
        spk_id=dict(speakers),
        spk_is_dialect={name: SPEAKER_DIALECTS.get(name, False) for name in speakers},
        code_predictor_config=dict(vocab_size=CODEBOOK_SIZE, num_code_groups=NUM_CODE_GROUPS, **predictor),
        **CODEC_IDS,
        **talker,
    )
    ids = {
        name: tokenizer.convert_tokens_to_ids(token)
        for name, token in (
            ("im_start_token_id", "<|im_start|>"),
            ("im_end_token_id", "<|im_end|>"),
            ("tts_pad_token_id", "<tts_pad>"),
            ("tts_bos_token_id", "<tts_text_bos>"),
            ("tts_eos_token_id", "<tts_text_eod>"),
        )
    }
    return dict(
        talker_config=talker_config,
        speaker_encoder_config=dict(
            mel_dim=128,
            enc_dim=talker["hidden_size"],
            sample_rate=SAMPLE_RATE_HZ,
            enc_kernel_sizes=[5, 3, 3, 3, 1],
            enc_dilations=[1, 2, 3, 4, 1],
            **speaker,
        ),
        tokenizer_type="qwen3_tts_tokenizer_12hz",
        tts_model_size="1b7" if big else "0b6",
        tts_model_type=kind,
        architectures=["Qwen3TTSForConditionalGeneration"],
        **ids,
    )


def random_model(kind: str, size: str, seed: int, tokenizer):
    """A ``Qwen3TTSForConditionalGeneration`` of ``kind`` with the rescaled random weights described above."""
    import torch
    from qwen_tts.core.models import Qwen3TTSConfig, Qwen3TTSForConditionalGeneration

    config = Qwen3TTSConfig(**model_config(kind, size, tokenizer))
    with torch.random.fork_rng(devices=[]), torch.no_grad():
        torch.manual_seed(seed)
        model = Qwen3TTSForConditionalGeneration(config).eval()
        for module in model.talker.modules():  # the code predictor is inside the talker
            if isinstance(module, torch.nn.Linear):
                torch.nn.init.normal_(module.weight, std=module.in_features**-0.5)
            elif isinstance(module, torch.nn.Embedding):
                torch.nn.init.normal_(module.weight)
        model.talker.codec_head.weight[config.talker_config.codec_eos_token_id] = 0.0
    return model.to(torch.bfloat16) if size == "full" else model


def _fix_config(path: Path) -> None:
    """Keep only the speaker-encoder keys its config class accepts (it writes a ``model_type`` it refuses)."""
    from qwen_tts.core.models.configuration_qwen3_tts import Qwen3TTSSpeakerEncoderConfig

    accepted = set(inspect.signature(Qwen3TTSSpeakerEncoderConfig.__init__).parameters) - {"self"}
    config = json.loads(path.read_text())
    config["speaker_encoder_config"] = {k: v for k, v in config["speaker_encoder_config"].items() if k in accepted}
    path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")


def _generation_config() -> dict[str, Any]:
    """The sampling defaults of the released checkpoints, with a short ``max_new_tokens`` (no EOS here)."""
    return dict(
        do_sample=True,
        top_k=50,
        top_p=1.0,
        temperature=0.9,
        repetition_penalty=1.05,
        subtalker_dosample=True,
        subtalker_top_k=50,
        subtalker_top_p=1.0,
        subtalker_temperature=0.9,
        max_new_tokens=DEFAULT_MAX_NEW_TOKENS,
    )


def build_model_folder(folder: Path, kind: str, size: str, seed: int, tokenizer, speech_tokenizer: Path) -> None:
    """One complete model folder of ``kind`` (written to a temporary sibling, then moved into place)."""
    from qwen_tts.core.models import Qwen3TTSProcessor

    partial = folder.with_name(folder.name + ".part")
    shutil.rmtree(partial, ignore_errors=True)
    random_model(kind, size, seed, tokenizer).save_pretrained(partial)
    _fix_config(partial / "config.json")
    Qwen3TTSProcessor(tokenizer=tokenizer).save_pretrained(partial)
    for extra in ("tokenizer.json", "special_tokens_map.json", "added_tokens.json", "chat_template.jinja"):
        (partial / extra).unlink(missing_ok=True)  # the released folders carry only vocab, merges and tokenizer_config
    (partial / "generation_config.json").write_text(json.dumps(_generation_config(), indent=2) + "\n")
    shutil.copytree(speech_tokenizer, partial / "speech_tokenizer")
    shutil.rmtree(folder, ignore_errors=True)
    partial.replace(folder)


def build(model_dir: Path, size: str, seed: int) -> list[Path]:
    """Write the default clone, design and custom models into ``<model_dir>/qwen-tts/``; returns their files."""
    if size not in ("tiny", "full"):
        raise ValueError(f"size must be 'tiny' or 'full', got {size!r}")
    import_qwen_tts()  # its import prints banners: logged instead
    root = Path(model_dir) / LIBRARY
    root.mkdir(parents=True, exist_ok=True)
    tokenizer = text_tokenizer()
    folders = []
    with tempfile.TemporaryDirectory(dir=root) as scratch:
        speech_tokenizer = Path(scratch) / "speech_tokenizer"
        build_speech_tokenizer(speech_tokenizer, size, seed)
        for offset, (mode, kind) in enumerate(KINDS.items(), start=1):
            folder = root / local_folder_name(DEFAULT_MODELS[mode])
            build_model_folder(folder, kind, size, seed + offset, tokenizer, speech_tokenizer)
            folders.append(folder)
    return sorted(path for folder in folders for path in folder.rglob("*") if path.is_file())
