"""Typed recipe schema.

A recipe YAML maps one-to-one onto :class:`Recipe`; :mod:`foundation.core.recipe` loads, validates and
overrides it.  Defaults here are the embedded synthetic default; paper settings live in
``recipes/nsd.yaml`` and ``recipes/hcp.yaml``.

Ranges are declared on the fields as :class:`typing.Annotated` metadata with :mod:`annotated_types`
constraints (``Gt``, ``Ge``, ``Lt``, ``Le``, and :data:`Finite`), the vocabulary pydantic reads:
:func:`foundation.core.convert.from_dict` validates a recipe with pydantic (strict types, unknown keys
refused, these ranges checked) when it is read, so a value out of range is a
:class:`~foundation.core.errors.RecipeError` naming the key before anything runs.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Annotated, Any, Literal, Optional

from annotated_types import Ge, Gt, Le, Lt, Predicate

field = dataclasses.field

#: a float that is neither NaN nor ±inf
Finite = Predicate(math.isfinite)

PositiveInt = Annotated[int, Gt(0)]
NonNegativeInt = Annotated[int, Ge(0)]
PositiveFloat = Annotated[float, Gt(0), Finite]
NonNegativeFloat = Annotated[float, Ge(0), Finite]
#: a probability of dropping: in [0, 1)
DropRate = Annotated[float, Ge(0), Lt(1)]


@dataclasses.dataclass
class DatasetConfig:
    """One dataset of the recipe.

    ``plugin`` names a registered dataset plugin; ``name`` is the dataset id used in shard keys,
    subject ids (``name/subject``) and metrics (defaults to the plugin name). ``options`` are
    validated against the plugin's own ``Options`` dataclass.
    """

    plugin: str = "synthetic"
    name: Optional[str] = None
    root: Optional[str] = None
    weight: PositiveFloat = 1.0
    subjects: Optional[list[str]] = None
    train_fraction: Annotated[float, Gt(0), Le(1)] = 1.0
    options: dict[str, Any] = field(default_factory=dict)

    @property
    def id(self) -> str:
        return self.name or self.plugin


@dataclasses.dataclass
class GuidanceConfig:
    """Which guidance plugin provides the low- and the high-level feature.

    ``options`` maps a plugin name to that plugin's options (each plugin's ``batch_size`` option
    sets how many stimuli it encodes at once). ``allow_random_weights`` lets a plugin run a randomly
    initialised network when its weights are absent; such runs are flagged in index.json and
    metrics.json.
    """

    low: str = "planted"
    high: str = "planted"
    options: dict[str, dict[str, Any]] = field(default_factory=dict)
    allow_random_weights: bool = False


@dataclasses.dataclass
class ShardConfig:
    """Where shards live.

    ``url`` reads the tars from elsewhere (an object store, a web server) through any URL webdataset
    opens: a template in which ``{dir}`` is the dataset's shard directory name and ``{path}`` the tar's
    path inside it, e.g. ``pipe:aws s3 cp s3://bucket/shards/{dir}/{path} -`` or
    ``https://host/shards/{dir}/{path}``.  The directory under ``root`` then only needs ``index.json``
    (and ``masks/`` for volume datasets), copied from where the shards were built.

    ``on_bad_sample``: what a sample that fails the checks (NaN/Inf, wrong shape or dtype, wrong label
    width, bad or duplicate index) does to the build: ``error`` (default) stops it with an error naming
    the sample; ``skip`` leaves the sample out, logs it and counts and names it in ``index.json``
    (``skipped``).  Errors of whole files or of the plugin itself always stop the build.
    """

    root: str = "shards"
    samples_per_shard: PositiveInt = 2000
    url: Optional[str] = None
    on_bad_sample: Literal["error", "skip"] = "error"


@dataclasses.dataclass
class ModelConfig:
    """CLIP-MUSED network.

    ``tokens`` selects the baseline switch: ``subject`` (CLIP-MUSED: a low and a high token per
    subject), ``shared`` (MS-SMODEL: the same two tokens for every subject), ``identity``
    (MS-EMB: one identity token per subject whose output feeds the head).  ``backbone: mlp``
    replaces readout tokens and Transformer by one hidden layer over the adapter's flattened tokens
    (with ``tokens: shared``: SS-MLP / MS-SMODEL-MLP on ROI datasets, SS-CNN / MS-SMODEL-CNN on
    volume datasets, whose adapter is the 3-D CNN and whose tokens are average-pooled first).
    """

    #: at most 8192: wider models do not fit any accelerator's memory with this architecture
    dim: Annotated[int, Gt(0), Le(8192)] = 128
    depth: PositiveInt = 4
    heads: PositiveInt = 4
    mlp_ratio: PositiveFloat = 4.0
    dropout: DropRate = 0.1
    attn_dropout: DropRate = 0.0
    tokens: Literal["subject", "shared", "identity"] = "subject"
    backbone: Literal["transformer", "mlp"] = "transformer"
    #: ``[D_low, D_high]``: linear maps from the tokens to the guidance features (set by the trainer
    #: from the shards when ``loss.guidance_loss: mapping``; leave unset in recipes)
    mapping_dims: Optional[list[int]] = None
    #: the label read-out over the readout tokens: ``mlp`` (the paper, Eq. 12-13: one hidden layer of
    #: ``head_hidden`` units) or ``linear`` (one linear map to the logits: cannot model label
    #: co-occurrences, so it cannot memorise the label sets of a few training scenes; RESULTS.md §4d)
    head: Literal["mlp", "linear"] = "mlp"
    head_hidden: PositiveInt = 256
    #: ``dataset``: one label head per dataset (the paper; datasets share nothing after the Transformer);
    #: ``shared``: one head over the union of the datasets' label names, each dataset scored on its own
    #: labels, so datasets whose label sets overlap (the same name = the same category) train one read-out
    label_head: Literal["dataset", "shared"] = "dataset"
    #: per-subject input alignment fitted in closed form (``foundation.model.alignment``): ``none`` (the
    #: paper: one shared linear embedding of every subject's ROI tokens), ``guidance-ridge`` (each
    #: subject's flattened inputs mapped by ridge onto the guidance space, two tokens of
    #: ``alignment_dim`` components; ROI datasets) or ``guidance-encoding`` (the same space, reached by
    #: inverting a per-subject encoding model: more sample-efficient for new subjects), ``guidance-pca-ridge``
    #: (the ridge map fitted through the subject's own leading principal components, the rank chosen by
    #: leave-one-out: a reduced-rank map that drops noise-only directions; RESULTS.md §4n: better on the volume
    #: world, worse on planted HCP-layout data), or
    #: ``guidance-ridge-joint`` (volume datasets: every subject's ridge map fitted together, a map shared in the
    #: voxel grid plus each subject's own; subjects added by ``foundation finetune`` are fitted against the
    #: kept shared map; ``foundation.model.alignment_joint``)
    alignment: Literal["none", "guidance-ridge", "guidance-encoding", "guidance-pca-ridge", "guidance-ridge-joint"] = \
        "none"
    alignment_dim: PositiveInt = 32
    #: ``guidance-ridge-joint``: prior weight of the shared map against each subject's own (0: per subject)
    alignment_share: NonNegativeFloat = 1.0
    #: ``guidance-ridge-joint``: the memory (GiB) the joint fit may take.  It holds every pooled subject's training
    #: inputs (float32) and an (N, N) float64 kernel of all their N samples (N² memory, N³ time), so it takes the
    #: leading subjects that fit (``foundation.model.alignment_joint.joint_fit_bytes``: 4 bytes per sample and
    #: voxel + 24 N²; an HCP subject at 1.6 mm, 2 000 samples × ~0.4 M voxels: ~3.3 GB) and fits each later subject
    #: against the pool's shared map, as a subject added by fine-tuning is, one subject in memory at a time.
    #: ``null``: every subject, whatever it costs
    alignment_pool_gib: Optional[PositiveFloat] = 16.0
    #: ``guidance-ridge-joint``: the most training samples (all pooled subjects together) the joint fit takes, its
    #: time bound: six eigendecompositions of (N, N) matrices, N³ — 7 minutes on two cores at 10 000 (measured)
    #: (``alignment_pool_gib`` alone would let many small subjects into a kernel that takes hours). ``null``: no bound
    alignment_pool_samples: Optional[PositiveInt] = 10_000
    #: the most memory one dataset's alignment buffers may take (subjects × their most in-mask voxels × 2·k float32,
    #: plus the joint alignment's grid-sized shared map): a guard against allocating what the device cannot hold;
    #: raise it on a large accelerator (one HCP subject at 1.6 mm with alignment_dim 32: ~0.1 GB)
    alignment_memory_gib: PositiveFloat = 4.0
    #: the guidance basis the aligned tokens are expressed in: ``dataset`` (each dataset's own, fitted on its
    #: training stimuli) or ``shared`` (one basis fitted on every dataset's training stimuli, so datasets whose
    #: guidance lives in one space — the same vision model, one visual world — get tokens in one coordinate system)
    alignment_basis: Literal["dataset", "shared"] = "dataset"
    #: ``[D_low, D_high]`` of the guidance features (set by the trainer from the shards when
    #: ``alignment`` is not ``none``; leave unset in recipes)
    guidance_dims: Optional[list[int]] = None
    volume_channels: list[PositiveInt] = field(default_factory=lambda: [16, 32, 64, 128])
    #: volume datasets: ``resnet`` (the paper's ResNet stages with the Transformer layers interleaved,
    #: ``foundation.model.volume_resnet``) or ``cnn`` (a plain CNN run before the Transformer)
    patchifier: Literal["resnet", "cnn"] = "resnet"
    #: residual blocks per stage of the ``resnet`` patchifier (ResNet-18: 2)
    volume_blocks: PositiveInt = 2
    #: volume datasets, what the patchifier is fed: ``raw`` (the shard's voxel values as they are, as the public
    #: code feeds its min-max [0, 1] volumes) or ``standardize`` (each sample's in-mask voxels shifted and scaled to
    #: mean 0, sd 1 first, for plugins whose values carry an offset or scale: with a read-out that weighs each
    #: patch, a min-max volume's constant in-brain offset hides a planted response from the 3-D CNN; the paper's
    #: model learned it no better either way in 600 or 2000 steps, docs/RESULTS.md §4i: the default stays the paper's)
    volume_input: Literal["raw", "standardize"] = "raw"
    #: volume datasets, how the readout tokens read the patches: ``attention`` (the paper: only through the
    #: Transformer's attention) or ``spatial`` (plus a linear map with a weight per patch position, added to the
    #: normalised readout tokens and starting at zero: ``foundation.model.readout``, docs/RESULTS.md §4j)
    volume_readout: Literal["attention", "spatial"] = "attention"
    #: the ``resnet`` patchifier: run the public code's position mixer (``ShallowAttention``: an MLP over channels,
    #: then one over the cell positions) before its last stride-2 stage (``foundation.model.volume_resnet``)
    volume_mixer: bool = False
    #: volume datasets: a linear read-out of the input volume itself beside the network, with this many components
    #: (0: off, the paper's model): the voxels as the patchifier is fed them, average-pooled 2× per axis, mapped to
    #: ``volume_linear_rank`` numbers and from them to the readout tokens, added like ``spatial`` (after the norm,
    #: starting at zero; one per dataset, shared by its subjects: ``foundation.model.readout.VoxelReadout``)
    volume_linear_rank: NonNegativeInt = 0


@dataclasses.dataclass
class LossConfig:
    """Weights of Eq. 16: L = BCE + λ⊥·L⊥ + λ_low·L_low + λ_high·L_high."""

    lambda_orth: NonNegativeFloat = 0.001
    lambda_low: NonNegativeFloat = 0.1
    lambda_high: NonNegativeFloat = 0.1
    #: ``rsa`` (CLIP-MUSED) or ``mapping``: regress the guidance features from the tokens (MSE through
    #: a linear map per level) instead of matching similarity matrices (the paper's Table B4 baseline)
    guidance_loss: Literal["rsa", "mapping"] = "rsa"


@dataclasses.dataclass
class TrainConfig:
    lr: PositiveFloat = 1e-3
    weight_decay: NonNegativeFloat = 0.0
    batch_size: PositiveInt = 64
    steps: PositiveInt = 1500
    grad_accum: PositiveInt = 1
    #: ``null``: no clipping
    max_grad_norm: Optional[PositiveFloat] = 1.0
    #: a step whose gradient is not finite (NaN or inf, with a finite loss) is skipped — parameters and Adam's state
    #: left as they were, counted in ``metrics.json`` ``skipped_steps`` — and the run stops once more than this many
    #: were skipped (0: at the first).  float16 runs leave it to the gradient scaler, which skips them alone
    max_skipped_steps: NonNegativeInt = 10
    warmup_steps: NonNegativeInt = 50
    eval_every: PositiveInt = 250
    checkpoint_every: PositiveInt = 250
    keep_checkpoints: PositiveInt = 2
    log_every: PositiveInt = 25
    #: DataLoader worker processes; part of the run's identity (every worker draws and shuffles its own
    #: stream, so another value gives other batches and other results: a resume must keep it)
    num_workers: NonNegativeInt = 0
    #: with ``num_workers: 0``: prepare the training batches (read, decode, collate) in one background
    #: process (forked; Linux only), overlapped with the training step (the same batches, so the same
    #: results; not part of the run's identity); ``false`` keeps everything in the main process (e.g. to
    #: debug a plugin's data)
    background_loader: bool = True
    shuffle_buffer: PositiveInt = 2000
    #: MiB of training shards each loading process keeps in memory once read (0: re-read every tar at
    #: every draw); a dataset that fits is parsed from disk once instead of at every pass, with the same
    #: batches (not part of the run's identity).  Counted by the tars' size on disk, per process; lowered,
    #: with a warning, so that this machine's loading processes keep at most half of its available memory
    shard_cache_mib: NonNegativeInt = 256
    #: autocast precision; ``auto``: bf16 on a GPU that has it, float32 on CPUs (bf16 is opt-in there: faster on CPUs
    #: with AMX, docs/PERFORMANCE.md round 8); the label head and the losses compute in float32 either way
    mixed_precision: Literal["auto", "no", "bf16", "fp16"] = "auto"
    eval_batch_size: PositiveInt = 256


@dataclasses.dataclass
class RunConfig:
    """Where the run lives. ``dir`` defaults to ``runs/<name>-seed<seed>``."""

    dir: Optional[str] = None


@dataclasses.dataclass
class Recipe:
    name: str = "synthetic"
    seed: NonNegativeInt = 0
    datasets: list[DatasetConfig] = field(default_factory=lambda: [DatasetConfig()])
    guidance: GuidanceConfig = field(default_factory=GuidanceConfig)
    shards: ShardConfig = field(default_factory=ShardConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    run: RunConfig = field(default_factory=RunConfig)
