"""Fine-tuning and training: data, losses, the training loop, synthetic clips."""
