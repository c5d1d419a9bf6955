"""Layer 3, the engine: checkpoints, the Accelerate trainer and the fine-tuning surgery on a trained
model.  Imports core, data, model and objectives."""
