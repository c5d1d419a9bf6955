"""Built-in dataset plugin ``nsd``: the Natural Scenes Dataset (Allen et al. 2022), read from its download layout.

Modules: :mod:`~foundation_nsd.layout` (paths, betas readers), :mod:`~foundation_nsd.design` (trial →
image, splits), :mod:`~foundation_nsd.rois` (ctab, ROI groups), :mod:`~foundation_nsd.coco` (labels,
captions), :mod:`~foundation_nsd.pca` (streaming PCA, saved bases, ``project``) and
:mod:`~foundation_nsd.plugin` (the plugin class and its hook).
"""
