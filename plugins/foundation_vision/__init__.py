"""foundation's built-in network guidance plugins: clip, clip-image, clip-text (open_clip), vit (timm),
alexnet (torchvision) and minilm (all-MiniLM-L6-v2, optional extra ``foundation[text]``).

Registered through the ``foundation`` entry-point group (``vision = "foundation_vision.plugin"``),
exactly as a third-party package would.  See docs/GUIDANCE.md for the feature definitions and where
weights are looked for; nothing is ever downloaded at run time.
"""
