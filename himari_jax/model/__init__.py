"""FLAG-TRADER and what it is made of: the Flax transformer with frozen base and LoRA, its
training objectives, Orbax checkpoints, adapters and PyTorch conversion (SPEC 1)."""
