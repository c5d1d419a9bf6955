"""Layer 4, the workflows the CLI runs: train, finetune, evaluate, predict, compare (``foundation
bench``), the SRM baseline and figures.  Imports every layer below; nothing below imports it."""
