"""A random-weight pyannote.audio 4 speaker-diarization pipeline in the community-1 folder layout.

Writes ``<model_dir>/pyannote/speaker-diarization-community-1/``, the files of the published
``pyannote/speaker-diarization-community-1`` repository, read by ``Pipeline.from_pretrained(folder)``::

    config.yaml                      the published pipeline config (VBx clustering, batch sizes 32)
    segmentation/pytorch_model.bin   PyanNet (SincNet > LSTM > linear > powerset classifier)
    embedding/pytorch_model.bin      WeSpeakerResNet34 (256-dimensional embeddings)
    plda/xvec_transform.npz          mean1 (256,), mean2 (d,), lda (256, d)
    plda/plda.npz                    mu (d,), tr (d, d), psi (d,)

Checkpoints are what ``Model.from_pretrained`` loads: ``state_dict``, the ``pyannote.audio`` block
(versions, architecture, specifications), ``pytorch-lightning_version`` and ``hyper_parameters``
(so non-default sizes are rebuilt). ``full`` has the real sizes (segmentation-3.0 PyanNet, 80 mel
bins, 128-dimensional PLDA); ``tiny`` shrinks the LSTM and linear layers, uses 8 mel bins and stores
the ResNet's weights as fp16 views of one shared random pool (1.3 MB instead of 22 MB).

Purely random weights make the segmentation argmax one powerset class everywhere, so nothing is
ever diarized. The classifier is therefore calibrated: its input is standardised with statistics
measured on a synthetic two-talker signal and offsets favour single-speaker classes, so the active
speakers change over time. It stays a random layer of the real architecture; the output is noise.
"""

from __future__ import annotations

import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from voxflow.tasks.diarize import DEFAULT_MODEL, LIBRARY, SAMPLE_RATE_HZ, import_pyannote, local_folder_name

SEGMENTATION_DURATION_S = 10.0  # chunk the segmentation model sees (community-1)
EMBEDDING_DURATION_S = 5.0  # nominal chunk of the embedding model (as pyannote's wespeaker convert.py)
EMBEDDING_DIM = 256  # fixed by WeSpeakerResNet34
SPEAKERS_PER_CHUNK = 3  # local speakers of the powerset segmentation
MAX_OVERLAP = 2  # speakers at once in the powerset
# Calibrated classifier: logits = GAIN * W0 (x - mu) / sigma + OFFSETS, per powerset class
# (silence, three single speakers, three pairs): single speakers are favoured, overlap is rare.
CLASSIFIER_GAIN = 3.0
CLASSIFIER_OFFSETS = (0.5, 1.0, 1.0, 1.0, -1.0, -1.0, -1.0)
CALIBRATION_S = 30.0  # length of the synthetic calibration signal
POOL_STD = 0.03  # standard deviation of the shared fp16 weight pool (tiny embedding)
ZIP_DATE_TIME = (1980, 1, 1, 0, 0, 0)  # timestamp of every member of the .npz files

CONFIG_YAML = """\
dependencies:
  pyannote.audio: {version}
pipeline:
  name: pyannote.audio.pipelines.SpeakerDiarization
  params:
    clustering: VBxClustering
    segmentation: $model/segmentation
    segmentation_batch_size: 32
    embedding: $model/embedding
    embedding_batch_size: 32
    embedding_exclude_overlap: true
    plda: $model/plda
params:
  clustering:
    threshold: 0.6
    Fa: 0.07
    Fb: 0.8
  segmentation:
    min_duration_off: 0.0
"""


@dataclass(frozen=True)
class Sizes:
    """The dimensions of one random pipeline."""

    lstm_hidden: int  # units per direction of the bidirectional LSTM
    lstm_layers: int
    lstm_dropout: float
    linear_hidden: int  # units of each of the two linear layers
    mel_bins: int  # fbank bins of the ResNet (>= 8)
    plda_dim: int  # LDA/PLDA dimension (pyannote uses at most 128)
    shared_pool: int | None  # ResNet weights as fp16 views of one pool of this many values; None: own fp32 storage


SIZES = {
    "tiny": Sizes(
        lstm_hidden=16, lstm_layers=1, lstm_dropout=0.0, linear_hidden=16, mel_bins=8, plda_dim=16, shared_pool=600_000
    ),
    "full": Sizes(
        lstm_hidden=128, lstm_layers=4, lstm_dropout=0.5, linear_hidden=128, mel_bins=80, plda_dim=128, shared_pool=None
    ),
}


def build(model_dir: Path, size: str, seed: int) -> list[Path]:
    """Write the random ``size`` pipeline of the default model into ``model_dir``; returns its files."""
    import torch

    version = import_pyannote().__version__
    sizes = SIZES[size]
    folder = Path(model_dir) / LIBRARY / local_folder_name(DEFAULT_MODEL)
    torch.manual_seed(seed)
    segmentation = segmentation_model(sizes)
    calibrate_classifier(segmentation, calibration_waveform(seed))
    embedding = embedding_model(sizes)
    transform, plda = plda_arrays(sizes.plda_dim, seed)

    files = [
        _save_checkpoint(segmentation, folder / "segmentation" / "pytorch_model.bin"),
        _save_checkpoint(
            embedding, folder / "embedding" / "pytorch_model.bin", shared_pool=sizes.shared_pool, seed=seed
        ),
        _save_npz(folder / "plda" / "xvec_transform.npz", transform),
        _save_npz(folder / "plda" / "plda.npz", plda),
    ]
    config = folder / "config.yaml"
    config.write_text(CONFIG_YAML.format(version=version))
    return [config, *files]


def segmentation_model(sizes: Sizes):
    """A random PyanNet with the community-1 powerset specifications (classifier built)."""
    from pyannote.audio.core.task import Problem, Resolution, Specifications
    from pyannote.audio.models.segmentation import PyanNet

    model = PyanNet(
        sincnet={"stride": 10},
        lstm={
            "hidden_size": sizes.lstm_hidden,
            "num_layers": sizes.lstm_layers,
            "bidirectional": True,
            "monolithic": True,
            "dropout": sizes.lstm_dropout,
        },
        linear={"hidden_size": sizes.linear_hidden, "num_layers": 2},
    )
    model.specifications = Specifications(
        problem=Problem.MONO_LABEL_CLASSIFICATION,
        resolution=Resolution.FRAME,
        duration=SEGMENTATION_DURATION_S,
        warm_up=(0.0, 0.0),
        classes=[f"speaker#{k}" for k in range(1, SPEAKERS_PER_CHUNK + 1)],
        powerset_max_classes=MAX_OVERLAP,
        permutation_invariant=True,
    )
    model.build()
    return model.eval()


def calibration_waveform(seed: int) -> np.ndarray:
    """``(1, samples)`` float32: two synthetic harmonic talkers turn-taking and overlapping, plus noise."""
    rng = np.random.default_rng(seed)
    n = int(CALIBRATION_S * SAMPLE_RATE_HZ)
    t = np.arange(n) / SAMPLE_RATE_HZ
    mix = 0.003 * rng.standard_normal(n)
    for f0 in (115.0, 205.0):
        on = np.zeros(n)
        start = rng.uniform(0, 2)
        while start < CALIBRATION_S:
            length = rng.uniform(0.4, 3.0)
            on[int(start * SAMPLE_RATE_HZ) : int((start + length) * SAMPLE_RATE_HZ)] = 1.0
            start += length + rng.uniform(0.2, 2.5)
        syllables = 0.5 + 0.5 * np.sin(2 * np.pi * rng.uniform(3, 5) * t + rng.uniform(0, 2 * np.pi)) ** 2
        phase = (
            2 * np.pi * np.cumsum(f0 * (1 + 0.08 * np.sin(2 * np.pi * 0.7 * t + rng.uniform(0, 6)))) / SAMPLE_RATE_HZ
        )
        voice = sum(np.sin(k * phase) / k for k in range(1, int(4000 // f0)))
        mix += 0.1 * on * syllables * voice
    return mix[None].astype(np.float32)


def calibrate_classifier(model, waveform: np.ndarray) -> None:
    """Rewrite ``model.classifier`` as ``gain * W0 (x - mu) / sigma + offsets`` (see module docstring).

    ``mu`` and ``sigma`` are the mean and standard deviation of the classifier's input features on
    the segmentation chunks of ``waveform``; ``W0`` is the classifier's random weight.
    """
    import torch

    window = int(SEGMENTATION_DURATION_S * SAMPLE_RATE_HZ)
    chunks = torch.from_numpy(waveform).unfold(1, window, SAMPLE_RATE_HZ).permute(1, 0, 2)  # (chunk, 1, samples)
    features: list[torch.Tensor] = []
    handle = model.classifier.register_forward_hook(lambda module, args, output: features.append(args[0]))
    with torch.inference_mode():
        model(chunks)
    handle.remove()
    x = features[0].reshape(-1, features[0].shape[-1])
    mu, sigma = x.mean(0), x.std(0).clamp_min(1e-6)
    with torch.no_grad():
        w0 = model.classifier.weight.clone()
        model.classifier.weight.copy_(CLASSIFIER_GAIN * w0 / sigma)
        model.classifier.bias.copy_(-CLASSIFIER_GAIN * (w0 / sigma) @ mu + torch.tensor(CLASSIFIER_OFFSETS))


def embedding_model(sizes: Sizes):
    """A random WeSpeakerResNet34 (default initialisation) with pyannote's representation specifications."""
    from pyannote.audio.core.task import Problem, Resolution, Specifications
    from pyannote.audio.models.embedding import WeSpeakerResNet34

    model = WeSpeakerResNet34(num_mel_bins=sizes.mel_bins)
    model.specifications = Specifications(
        problem=Problem.REPRESENTATION, resolution=Resolution.CHUNK, duration=EMBEDDING_DURATION_S
    )
    return model.eval()


def _pooled_state_dict(model, pool_size: int, seed: int) -> dict:
    """The model's state_dict with every conv/linear weight and bias an fp16 view of one random pool.

    Batch-norm layers become identities (weight 1, bias 0, running mean 0, running variance 1), so
    activations keep their scale through the 34 layers.
    """
    import torch

    generator = torch.Generator().manual_seed(seed)
    pool = (torch.randn(pool_size, generator=generator) * POOL_STD).half()
    batch_norms = {name for name, module in model.named_modules() if isinstance(module, torch.nn.BatchNorm2d)}
    state = {}
    for key, value in model.state_dict().items():
        owner, _, leaf = key.rpartition(".")
        if owner in batch_norms:
            fill = {"weight": 1.0, "running_var": 1.0}.get(leaf, 0.0)
            state[key] = torch.full_like(
                value, fill, dtype=value.dtype if leaf == "num_batches_tracked" else torch.half
            )
            continue
        if value.numel() > pool_size:
            raise ValueError(f"{key} has {value.numel()} values, more than the shared pool of {pool_size}")
        offset = int(torch.randint(0, pool_size - value.numel() + 1, (1,), generator=generator))
        state[key] = pool[offset : offset + value.numel()].view(value.shape)
    return state


def _save_checkpoint(model, path: Path, *, shared_pool: int | None = None, seed: int = 0) -> Path:
    """Save ``model`` as the Lightning-style checkpoint ``Model.from_pretrained`` reads."""
    import lightning
    import torch

    state = model.state_dict() if shared_pool is None else _pooled_state_dict(model, shared_pool, seed)
    checkpoint = {
        "state_dict": state,
        "pytorch-lightning_version": lightning.__version__,
        "hyper_parameters": dict(model.hparams),
    }
    model.on_save_checkpoint(checkpoint)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(checkpoint, path)
    return path


def plda_arrays(dim: int, seed: int) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """Random x-vector transform and PLDA of dimension ``dim``: an orthonormal LDA, decreasing ``psi``."""
    rng = np.random.default_rng(seed)
    lda, _ = np.linalg.qr(rng.standard_normal((EMBEDDING_DIM, dim)))
    transform = {"mean1": np.zeros(EMBEDDING_DIM), "mean2": np.zeros(dim), "lda": lda}
    plda = {"mu": np.zeros(dim), "tr": np.eye(dim), "psi": np.linspace(2.0, 0.5, dim)}
    return transform, plda


def _save_npz(path: Path, arrays: dict[str, np.ndarray]) -> Path:
    """An ``np.load``-able .npz (a zip of .npy files) with fixed zip timestamps, so rebuilds are byte-identical."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as archive:
        for key, array in arrays.items():
            with archive.open(zipfile.ZipInfo(f"{key}.npy", date_time=ZIP_DATE_TIME), "w") as member:
                np.lib.format.write_array(member, np.asarray(array))
    return path
