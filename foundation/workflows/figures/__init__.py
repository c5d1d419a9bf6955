"""``foundation plot RUN_DIR``: the figures of a finished run, as a paper would show them.

Figures (one file each, written atomically into ``RUN_DIR/plots/`` unless told otherwise):

* ``training_curves`` — validation mAP / AUC over steps (the run's ``trainer_state.json`` history,
  else its TensorBoard logs) with the selected step and chance mAP marked; the training loss and its
  terms (unweighted, from the TensorBoard logs when tensorboard's event reader is importable).
* ``attention_rois_<dataset>`` (ROI datasets; paper Fig. F8 / F9) — the last layer's attention from
  each readout token (low, high; MS-EMB: the one subject token) to each ROI token, averaged over
  heads and over the subject's samples of the split; one panel per subject, low and high side by side.
* ``attention_volume_<dataset>`` (volume datasets; paper Fig. 4) — the same attention painted back
  onto the brain: a patch token of the :class:`~foundation.model.adapters.VolumeAdapter` is one cell
  of its ``out_grid``, i.e. the block ``[f·i, f·(i+1))`` per axis of the (zero-padded) input grid,
  ``f = 2 ** len(channels)`` (:func:`token_map_to_grid`); every voxel gets the attention weight of
  its patch (not divided by the patch's voxel count), the map is cropped to the grid, masked with
  the subject's brain mask from the run's shards and drawn with nilearn on the MNI152 template.
  The grid's affine comes from :func:`grid_affine`.  (The CNN's receptive field of patch ``i`` is
  centred on voxel ``f·i`` rather than the block centre, and reaches into neighbouring blocks: the
  block map is the patch partition, not a receptive-field map.)
* ``token_rsm`` (paper Fig. F7) — cosine similarity between subjects' learned low-level tokens and
  between their high-level tokens (rows of the token table); not drawn for ``model.tokens=shared``,
  where every subject has the same tokens.
* ``compare_per_subject`` (paper Fig. C5 / C6; with ``compare=``) — paired per-subject mAP of this
  run and another one (or several with disjoint subjects, e.g. one SS-ViT run per subject), from the
  ``metrics.json`` ``per_subject`` entries: bars and a scatter against the diagonal.

The ``*_figure`` functions are pure: arrays and metrics in, a :class:`matplotlib.figure.Figure` out,
drawn with the Agg canvas whatever pyplot's backend is.  :func:`plot_run` computes what they need
from a run directory (attention: the ``best/`` weights applied to the run's shards, batched, under
``torch.no_grad()``) and saves them.

The package: :mod:`.draw` (the pure figure functions), :mod:`.brain` (grid → MNI affines, patch maps),
:mod:`.runlogs` (curves and metrics a run recorded), :mod:`.attention` (the attention inference pass)
and :mod:`.run` (:func:`plot_run`).
"""

from __future__ import annotations

from foundation.workflows.figures.attention import ReadoutAttention, readout_attention, run_attention
from foundation.workflows.figures.brain import MNI_AFFINES, grid_affine, mni_brain_bbox, token_map_to_grid
from foundation.workflows.figures.draw import (
    DEFAULT_DPI,
    FORMATS,
    compare_figure,
    readout_names,
    roi_attention_figure,
    save_figures,
    token_rsm_figure,
    training_curves_figure,
    volume_attention_figure,
)
from foundation.workflows.figures.run import plot_run, run_figures
from foundation.workflows.figures.runlogs import read_curves, read_tensorboard_scalars

__all__ = [
    "DEFAULT_DPI", "FORMATS", "MNI_AFFINES", "ReadoutAttention", "compare_figure", "grid_affine", "mni_brain_bbox",
    "plot_run", "read_curves", "read_tensorboard_scalars", "readout_attention", "readout_names",
    "roi_attention_figure", "run_attention", "run_figures", "save_figures", "token_map_to_grid", "token_rsm_figure",
    "training_curves_figure", "volume_attention_figure",
]
