"""CLIP-MUSED: one Transformer shared across datasets and subjects (Sec. 2.3-2.5, Fig. 3).

Shared by everything: the encoder, the final LayerNorm and the subject token table.
Per dataset (``nn.ModuleDict`` / ``nn.ParameterDict`` keyed by dataset id): the input adapter
(ROI or volume), the positional embedding and the classification head (``model.label_head: shared``:
one head over the union of the datasets' label names, each dataset reading its own columns).

Sequence layout for a batch of one dataset (``R`` readout tokens, ``M`` patches)::

    z_0 = [readout_1 .. readout_R ; E x^1 .. E x^M] + E_pos          (B, R + M, D)   Eq. 5
    h   = Encoder(z_0)                                                (B, R + M, D)   Eq. 6-7
    z_low, z_high = LN(h[:, 0]), LN(h[:, 1])                          (B, D) each     Eq. 8-9
    logits = MLP(concat(z_low, z_high))                               (B, C)          Eq. 12-13

(``model.volume_readout: spatial``, volume datasets: ``z += SpatialReadout(h[:, R:])``, a read-out with a weight per
patch position; ``model.volume_linear_rank: r``: ``z += VoxelReadout(volume)``, a rank-r linear read-out of the voxels
themselves; both in ``readout.py``, not in the paper.)

Readout tokens by ``ModelConfig.tokens``:

* ``"subject"`` (CLIP-MUSED) — a low- and a high-level token per subject (``R = 2``).
* ``"shared"`` (MS-SMODEL) — the same two tokens for every subject (``R = 2``).
* ``"identity"`` (MS-EMB) — one token per subject (``R = 1``); ``z = LN(h[:, 0])`` is reported as
  both ``z_low`` and ``z_high`` and the head sees ``z`` alone.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from foundation.core.api import DatasetInfo
from foundation.core.config import ModelConfig
from foundation.core.errors import CheckpointError

from .adapters import ROIAdapter, VolumeAdapter, VolumeGrid
from .alignment import ALIGNMENTS, JOINT_FITTERS, SubjectAlignment
from .encoder import Encoder
from .readout import SpatialReadout, VoxelReadout
from .tokens import TOKEN_INIT_STD, SubjectTokens, SubjectVocab
from .volume_resnet import ResNetVolumeAdapter

__all__ = ["ModelOutput", "CLIPMUSED", "TOKEN_MODES"]

TOKEN_MODES = ("subject", "shared", "identity")
_INFO_TUPLE_FIELDS = ("label_names", "subjects", "token_shape", "token_names", "grid")


def _aligned_dim(cfg: ModelConfig) -> int:
    """Components per aligned token: ``alignment_dim``, at most the guidance features' width."""
    return min(cfg.alignment_dim, *cfg.guidance_dims)  # type: ignore[misc]


def _alignment_features(info: DatasetInfo, rows: int | None = None) -> int:
    """Input values per sample an alignment maps: ROI ``tokens × dim``; volume, ``rows`` (the most in-mask voxels
    of the model's subjects) or, unknown, the grid's size (an upper bound on them)."""
    if info.kind == "volume" and rows is not None:
        return rows
    return math.prod(info.token_shape if info.kind == "roi" else info.grid)  # type: ignore[arg-type]


@dataclasses.dataclass
class ModelOutput:
    """What :meth:`CLIPMUSED.forward` returns.

    Attributes:
        z_low: ``(B, D)`` low-level representation ``z_llv`` (Eq. 8).
        z_high: ``(B, D)`` high-level representation ``z_hlv`` (Eq. 9); the same tensor as
            ``z_low`` in ``"identity"`` mode.
        logits: ``(B, C)`` classification logits (pre-sigmoid).
        attention: ``(B, heads, T, T)`` last-layer attention weights, or ``None`` unless requested.
        mapped_low, mapped_high: ``(B, D_low)`` / ``(B, D_high)`` the tokens mapped into the guidance
            feature spaces (only with ``model.mapping_dims``: the mapping-based loss of Table B4).
    """

    z_low: Tensor
    z_high: Tensor
    logits: Tensor
    attention: Tensor | None = None
    mapped_low: Tensor | None = None
    mapped_high: Tensor | None = None


def _trunc_normal_(t: Tensor) -> Tensor:
    return nn.init.trunc_normal_(t, std=TOKEN_INIT_STD, a=-2 * TOKEN_INIT_STD, b=2 * TOKEN_INIT_STD)


def _init_transformer_weights(m: nn.Module) -> None:
    """timm ViT init: Linear ~ trunc_normal(0.02), zero bias; LayerNorm = identity. Convs keep PyTorch's."""
    if isinstance(m, nn.Linear):
        _trunc_normal_(m.weight)
        if m.bias is not None:
            nn.init.zeros_(m.bias)
    elif isinstance(m, nn.LayerNorm):
        nn.init.ones_(m.weight)
        nn.init.zeros_(m.bias)


def _info_to_dict(info: DatasetInfo) -> dict[str, Any]:
    d = dataclasses.asdict(info)
    for k in _INFO_TUPLE_FIELDS:
        if d[k] is not None:
            d[k] = list(d[k])
    return d


def _info_from_dict(d: Mapping[str, Any]) -> DatasetInfo:
    d = dict(d)
    for k in _INFO_TUPLE_FIELDS:
        if d.get(k) is not None:
            d[k] = tuple(d[k])
    return DatasetInfo(**d)


class CLIPMUSED(nn.Module):
    """The CLIP-MUSED network over several datasets.

    Args:
        cfg: network hyper-parameters (``tokens`` selects CLIP-MUSED or a baseline).
        datasets: dataset id -> :class:`DatasetInfo` (input kind and shape, labels).
        subjects: global subject ids ``"dataset/subject"``, the initial token vocabulary (row
            order).  Every id must start with one of the ``datasets`` ids and a ``/``.
        alignment_rows: volume dataset id -> the most in-mask voxels of its subjects: the rows of its
            per-subject alignment maps (``model.alignment``; default the grid's size, as models saved before
            it existed were built; the trainer passes it, a quarter of the grid or less for brains).
    """

    def __init__(
        self, cfg: ModelConfig, datasets: Mapping[str, DatasetInfo], subjects: Sequence[str], *,
        alignment_rows: Mapping[str, int] | None = None,
    ) -> None:
        super().__init__()
        if cfg.tokens not in TOKEN_MODES:
            raise ValueError(f"model.tokens must be one of {TOKEN_MODES}, got {cfg.tokens!r}")
        if cfg.dim % cfg.heads:
            raise ValueError(f"model.dim={cfg.dim} must be divisible by model.heads={cfg.heads}")
        if cfg.backbone not in ("transformer", "mlp"):
            raise ValueError(f"model.backbone must be 'transformer' or 'mlp', got {cfg.backbone!r}")
        if cfg.head not in ("mlp", "linear"):
            raise ValueError(f"model.head must be 'mlp' or 'linear', got {cfg.head!r}")
        if cfg.patchifier not in ("resnet", "cnn"):
            raise ValueError(f"model.patchifier must be 'resnet' or 'cnn', got {cfg.patchifier!r}")
        if cfg.backbone == "mlp" and cfg.tokens != "shared":
            raise ValueError("model.backbone=mlp has no tokens to read out: it needs model.tokens=shared "
                             "(the SS-MLP / MS-SMODEL-MLP baselines)")
        if not datasets:
            raise ValueError("CLIPMUSED needs at least one dataset")
        for ds in datasets:
            if not ds or "." in ds or "/" in ds:
                raise ValueError(f"dataset id {ds!r} must be non-empty and contain neither '.' nor '/'")
        if cfg.alignment not in ALIGNMENTS:
            raise ValueError(f"model.alignment must be one of {ALIGNMENTS}, got {cfg.alignment!r}")
        if cfg.alignment != "none":
            if cfg.guidance_dims is None or len(cfg.guidance_dims) != 2 or min(cfg.guidance_dims) <= 0:
                raise ValueError(f"model.alignment={cfg.alignment!r} needs model.guidance_dims=[D_low, D_high] "
                                 f"(the trainer sets it from the shards), got {cfg.guidance_dims}")
            if cfg.alignment_dim <= 0:
                raise ValueError(f"model.alignment_dim must be positive, got {cfg.alignment_dim}")
            k = _aligned_dim(cfg)
            for ds, info in datasets.items():
                shared = info.kind == "volume" and cfg.alignment in JOINT_FITTERS  # + the pool's shared map
                rows = _alignment_features(info, (alignment_rows or {}).get(ds))
                grid = _alignment_features(info)
                size = (len(subjects) * rows + shared * grid) * 2 * k * 4
                if size > cfg.alignment_memory_gib * 2**30:
                    what = "in-mask voxels" if rows != grid else "inputs"
                    raise ValueError(f"model.alignment={cfg.alignment!r}: dataset {ds!r}'s per-subject maps would take "
                                     f"{size / 2**30:.1f} GiB (({len(subjects)} subjects × {rows} {what}"
                                     f"{f' + the shared map × {grid} grid voxels' if shared else ''}) × {2 * k}); "
                                     f"more than model.alignment_memory_gib={cfg.alignment_memory_gib:g}. Raise it if "
                                     f"the device holds them, or use a smaller alignment_dim, or model.alignment=none")
        self.cfg = dataclasses.replace(cfg, volume_channels=list(cfg.volume_channels),
                                       mapping_dims=None if cfg.mapping_dims is None else list(cfg.mapping_dims),
                                       guidance_dims=None if cfg.guidance_dims is None else list(cfg.guidance_dims))
        self.infos: dict[str, DatasetInfo] = dict(datasets)
        self.n_readout = 1 if cfg.tokens == "identity" else 2
        d = cfg.dim

        subjects = list(subjects)
        self._check_subject_datasets(subjects)
        self.mlp = cfg.backbone == "mlp"
        if cfg.tokens == "shared":
            self._vocab = SubjectVocab(subjects)
            if not self.mlp:
                self.shared_tokens = nn.Parameter(_trunc_normal_(torch.empty(1, 2, d)))
        else:
            self.subject_tokens = SubjectTokens(subjects, dim=d, tokens_per_subject=self.n_readout)

        # per-subject closed-form input alignments (buffers, never trained): model/alignment.py
        self.alignments = nn.ModuleDict()
        if cfg.alignment != "none":
            k = _aligned_dim(cfg)
            for ds, info in self.infos.items():
                self.alignments[ds] = SubjectAlignment(len(subjects),
                                                       _alignment_features(info, (alignment_rows or {}).get(ds)),
                                                       guidance_dims=cfg.guidance_dims, dim=k,
                                                       ragged=info.kind == "volume",
                                                       shared=info.kind == "volume" and cfg.alignment in JOINT_FITTERS,
                                                       grid_features=_alignment_features(info))
        self.adapters = nn.ModuleDict()
        self.pos_embed = nn.ParameterDict()
        self.heads = nn.ModuleDict()
        # backbone=mlp (SS-MLP / SS-CNN / MS-SMODEL-MLP baselines): the adapter's tokens through one hidden
        # layer per dataset, instead of readout tokens and the Transformer; ROI tokens are flattened, volume
        # tokens average-pooled (the public code's CNN head; a flatten of 392 × 512 would be a 200 k-input layer)
        self.mlps = nn.ModuleDict()
        # model.volume_readout=spatial: a read-out with a weight per patch position beside the attention (readout.py)
        self.spatial_readouts = nn.ModuleDict()
        # model.volume_linear_rank > 0: a low-rank linear read-out of the input volume itself (readout.py)
        self.voxel_readouts = nn.ModuleDict()
        for ds, info in self.infos.items():
            adapter = self._make_adapter(info)
            self.adapters[ds] = adapter
            if self.mlp:
                n_in = d if isinstance(adapter, VolumeGrid) else adapter.num_tokens * d
                self.mlps[ds] = nn.Sequential(
                    nn.Linear(n_in, self.n_readout * d), nn.GELU(), nn.Dropout(cfg.dropout))
            else:
                self.pos_embed[ds] = nn.Parameter(torch.empty(1, self.n_readout + adapter.num_tokens, d))
                if cfg.volume_readout == "spatial" and isinstance(adapter, VolumeGrid):
                    self.spatial_readouts[ds] = SpatialReadout(adapter.num_tokens, d, self.n_readout)
                if cfg.volume_linear_rank and isinstance(adapter, VolumeGrid):
                    self.voxel_readouts[ds] = VoxelReadout(adapter.grid, d, self.n_readout,
                                                           rank=cfg.volume_linear_rank)
            if cfg.label_head == "dataset":
                self.heads[ds] = self._make_head(info.num_labels)
        # label_head=shared: one head over the union of label names (first-seen order over the datasets)
        # (each dataset's columns: a non-persistent buffer, built once and moved with the model)
        self.label_names: list[str] = []
        for info in self.infos.values():
            self.label_names += [n for n in info.label_names if n not in self.label_names]
        if cfg.label_head == "shared":
            for ds, info in self.infos.items():
                columns = torch.tensor([self.label_names.index(n) for n in info.label_names], dtype=torch.long)
                self.register_buffer(f"label_columns_{ds}", columns, persistent=False)
        self.label_head = self._make_head(len(self.label_names)) if cfg.label_head == "shared" else None
        self.pos_drop = nn.Dropout(cfg.dropout)
        self.encoder = None if self.mlp else Encoder(
            cfg.depth, dim=d, heads=cfg.heads, mlp_ratio=cfg.mlp_ratio,
            dropout=cfg.dropout, attn_dropout=cfg.attn_dropout,
        )
        self.norm = nn.LayerNorm(d)
        # Table B4's mapping-based alternative to RSA: linear maps from the tokens to the guidance features
        self.mappers = nn.ModuleDict()
        if cfg.mapping_dims is not None:
            if len(cfg.mapping_dims) != 2 or min(cfg.mapping_dims) <= 0:
                raise ValueError(f"model.mapping_dims must be [D_low, D_high] > 0, got {cfg.mapping_dims}")
            self.mappers["low"] = nn.Linear(d, cfg.mapping_dims[0])
            self.mappers["high"] = nn.Linear(d, cfg.mapping_dims[1])

        self.apply(_init_transformer_weights)
        for p in self.pos_embed.values():
            _trunc_normal_(p.data)
        for readout in [*self.spatial_readouts.values(), *self.voxel_readouts.values()]:
            readout.reset_parameters()  # starts at zero: the paper's model until it learns

    # ------------------------------------------------------------------ construction helpers
    def _make_head(self, num_labels: int) -> nn.Sequential:
        """The label read-out ``(B, n_readout · D)`` -> ``(B, num_labels)``: the paper's MLP (Eq. 12-13) or,
        with ``model.head: linear``, one linear map."""
        if self.cfg.head == "linear":
            return nn.Sequential(nn.Dropout(self.cfg.dropout), nn.Linear(self.n_readout * self.cfg.dim, num_labels))
        return nn.Sequential(
            nn.Linear(self.n_readout * self.cfg.dim, self.cfg.head_hidden),
            nn.GELU(),
            nn.Dropout(self.cfg.dropout),
            nn.Linear(self.cfg.head_hidden, num_labels),
        )

    def head_for(self, dataset: str) -> tuple[str, nn.Module]:
        """The label head that scores ``dataset`` and its parameter-name prefix (``heads.<id>`` or ``label_head``)."""
        if self.label_head is not None:
            return "label_head", self.label_head
        return f"heads.{dataset}", self.heads[dataset]

    def _make_adapter(self, info: DatasetInfo) -> ROIAdapter | VolumeGrid:
        if self.cfg.alignment != "none":  # the aligned tokens (ROI or volume inputs): one per guidance level
            return ROIAdapter(SubjectAlignment.levels, _aligned_dim(self.cfg), self.cfg.dim)
        if info.kind == "roi":
            n_tokens, token_dim = info.token_shape  # type: ignore[misc]
            return ROIAdapter(n_tokens, token_dim, self.cfg.dim)
        if info.kind == "volume":
            standardize = self.cfg.volume_input == "standardize"
            if self.cfg.patchifier == "cnn":
                return VolumeAdapter(info.grid, self.cfg.dim, self.cfg.volume_channels,  # type: ignore[arg-type]
                                     standardize=standardize)
            return ResNetVolumeAdapter(info.grid, self.cfg.dim, self.cfg.volume_channels,  # type: ignore[arg-type]
                                       blocks=self.cfg.volume_blocks, standardize=standardize,
                                       mixer=self.cfg.volume_mixer)
        raise ValueError(f"unknown DatasetInfo.kind {info.kind!r} (expected 'roi' or 'volume')")

    def _check_subject_datasets(self, keys: Sequence[str]) -> None:
        bad = [k for k in keys if not any(k.startswith(ds + "/") and k != ds + "/" for ds in self.infos)]
        if bad:
            raise ValueError(
                f"subject ids {bad[:5]} are not 'dataset/subject' with a dataset among {sorted(self.infos)}"
            )

    # ------------------------------------------------------------------ vocabulary
    @property
    def vocab(self) -> list[str]:
        """Global subject ids ``"dataset/subject"`` in token-table row order."""
        return self._vocab.keys if self.cfg.tokens == "shared" else self.subject_tokens.vocab

    def optional_state_keys(self) -> set[str]:
        """State-dict keys a checkpoint of an older foundation may lack (they load as "not fitted")."""
        return {f"alignments.{ds}.{name}" for ds, al in self.alignments.items() if al.has_shared
                for name in al.OPTIONAL_BUFFERS}

    def subject_index(self, keys: Sequence[str]) -> Tensor:
        """``B`` global subject ids -> ``(B,)`` int64 CPU indices; raises :class:`UnknownSubjectError`."""
        if self.cfg.tokens == "shared":
            return self._vocab.index(keys)
        return self.subject_tokens.index(keys)

    def add_subjects(self, keys: Sequence[str]) -> None:
        """Extend the vocabulary; grows only the token table (``"shared"`` mode: the id list only).

        The token Parameter is replaced, so rebuild the optimizer afterwards.
        """
        keys = list(keys)
        self._check_subject_datasets(keys)
        if self.cfg.tokens == "shared":
            self._vocab.extend(keys)
        else:
            self.subject_tokens.add_subjects(keys)
        for alignment in self.alignments.values():
            alignment.grow(len(keys))

    # ------------------------------------------------------------------ (de)serialisation
    def config_dict(self) -> dict[str, Any]:
        """Everything :meth:`from_config_dict` needs to rebuild this model (JSON-serialisable)."""
        out = {
            "model": dataclasses.asdict(self.cfg),
            "datasets": {ds: _info_to_dict(info) for ds, info in self.infos.items()},
            "vocab": self.vocab,
        }
        rows = {ds: a.in_features for ds, a in self.alignments.items() if a.ragged}
        if rows:  # the volume maps' width (their subjects' most in-mask voxels)
            out["alignment_rows"] = rows
        return out

    @classmethod
    def from_config_dict(cls, d: Mapping[str, Any]) -> CLIPMUSED:
        """Rebuild an (untrained) model from :meth:`config_dict`; load the state dict afterwards."""
        try:
            # checkpoints written before model.patchifier existed used the plain CNN
            cfg = ModelConfig(**{"patchifier": "cnn", **d["model"]})
            datasets = {ds: _info_from_dict(info) for ds, info in d["datasets"].items()}
            vocab = list(d["vocab"])
            # saved before the maps' width was recorded: the grid's size, as they were built then
            rows = {str(ds): int(n) for ds, n in d.get("alignment_rows", {}).items()}
        except (KeyError, TypeError, ValueError, AttributeError) as e:
            raise CheckpointError(
                f"model config in checkpoint is malformed or from another version: {e!r}"
            ) from e
        return cls(cfg, datasets, vocab, alignment_rows=rows)

    # ------------------------------------------------------------------ forward
    def readout_tokens(self, subject_idx: Tensor) -> Tensor:
        """``subject_idx`` ``(B,)`` -> readout tokens ``(B, n_readout, D)``."""
        if self.cfg.tokens == "shared":
            return self.shared_tokens.expand(subject_idx.shape[0], -1, -1)
        return self.subject_tokens(subject_idx)

    def _read(self, dataset: str, h: Tensor) -> Tensor:
        """The encoder's output ``(B, R + M, D)`` -> the normalised readout tokens ``(B, R, D)``, plus the spatial
        read-out of the patches with ``model.volume_readout: spatial`` (after the norm: added before it, the readout
        tokens' own scale hid it and it learned more slowly, docs/RESULTS.md §4j)."""
        z = self.norm(h[:, : self.n_readout])
        if dataset in self.spatial_readouts:
            z = z + self.spatial_readouts[dataset](h[:, self.n_readout:])
        return z

    def forward(
        self,
        dataset: str,
        fmri: Tensor,
        subject_idx: Tensor,
        *,
        voxel_index: Tensor | None = None,
        return_attention: bool = False,
    ) -> ModelOutput:
        """Decode one batch of one dataset.

        Args:
            dataset: dataset id.
            fmri: ROI datasets ``(B, n_tokens, token_dim)``; volume datasets ``(B, Vmax)`` padded
                in-mask voxels.
            subject_idx: ``(B,)`` int64 rows from :meth:`subject_index`.
            voxel_index: volume datasets only, ``(B, Vmax)`` int64 flat C-order grid positions,
                padding = ``X*Y*Z``.
            return_attention: also return the last layer's attention ``(B, heads, T, T)``,
                ``T = n_readout + M``.
        """
        if dataset not in self.adapters:
            raise ValueError(f"unknown dataset {dataset!r}; this model has {sorted(self.adapters)}")
        adapter = self.adapters[dataset]
        if isinstance(adapter, VolumeGrid) and voxel_index is None:
            raise ValueError(f"dataset {dataset!r} is a volume dataset: forward() needs voxel_index")
        if subject_idx.dim() != 1 or subject_idx.shape[0] != fmri.shape[0]:
            raise ValueError(f"subject_idx must have shape ({fmri.shape[0]},), got {tuple(subject_idx.shape)}")
        if dataset in self.alignments:
            alignment = self.alignments[dataset]
            missing = alignment.unfitted(subject_idx)
            if missing:
                vocab = self.vocab
                raise ValueError(f"subjects {[vocab[i] for i in missing][:5]} have no fitted input alignment "
                                 f"(model.alignment={self.cfg.alignment!r}); fit it from their training data "
                                 f"first (foundation.engine.align.fit_alignments)")
            fmri = alignment(fmri, subject_idx)  # (B, 2, k)

        if self.mlp:
            patches = adapter(fmri, voxel_index) if isinstance(adapter, VolumeGrid) else adapter(fmri)  # (B, M, D)
            # volume tokens are average-pooled, ROI tokens flattened
            h = self.mlps[dataset](patches.mean(1) if isinstance(adapter, VolumeGrid) else patches.flatten(1))
            z, attention = self.norm(h.view(h.shape[0], self.n_readout, -1)), None  # (B, R, D)
        elif adapter.interleaved:
            readout = self.readout_tokens(subject_idx)  # (B, R, D)
            h, attention = adapter.forward_with_encoder(
                fmri, voxel_index, readout, pos=self.pos_embed[dataset], blocks=self.encoder.blocks,
                pos_drop=self.pos_drop, return_attention=return_attention)  # (B, R + M, D)
            z = self._read(dataset, h)  # (B, R, D)
        else:
            patches = adapter(fmri, voxel_index) if isinstance(adapter, VolumeGrid) else adapter(fmri)  # (B, M, D)
            readout = self.readout_tokens(subject_idx)  # (B, R, D)
            x = torch.cat([readout, patches], dim=1) + self.pos_embed[dataset]  # (B, R + M, D)
            h, attention = self.encoder(self.pos_drop(x), return_attention=return_attention)
            z = self._read(dataset, h)  # (B, R, D)
        if dataset in self.voxel_readouts:  # model.volume_linear_rank: the voxels' own linear read-out, added
            z = z + self.voxel_readouts[dataset](adapter.densify(fmri, voxel_index, padded=False))  # (B, R, D)
        z_low, z_high = z[:, 0], z[:, -1]
        # The label head and the mappers run in float32 even under bf16 autocast (as the losses do): with a bf16
        # head the default world's test mAP fell by 0.034 over 3 seeds, with a float32 one it matched float32
        # training (docs/PERFORMANCE.md, round 8); they are a sliver of the step's FLOPs.
        with torch.autocast(device_type=z.device.type, enabled=False):
            zf = z.float() if z.dtype in (torch.bfloat16, torch.float16) else z  # (B, R, D)
            if self.label_head is None:
                logits = self.heads[dataset](zf.flatten(1))  # (B, C)
            else:  # the dataset's own columns of the shared head, in its label order
                logits = self.label_head(zf.flatten(1)).index_select(
                    1, getattr(self, f"label_columns_{dataset}"))  # (B, C)
            mapped = {}
            if self.mappers:
                mapped = {"mapped_low": self.mappers["low"](zf[:, 0]), "mapped_high": self.mappers["high"](zf[:, -1])}
        return ModelOutput(z_low=z_low, z_high=z_high, logits=logits, attention=attention, **mapped)

    def extra_repr(self) -> str:
        return f"tokens={self.cfg.tokens!r}, datasets={list(self.infos)}, subjects={len(self.vocab)}"
