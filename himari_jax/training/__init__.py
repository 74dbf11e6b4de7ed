"""Training on a device mesh: the jit step, initialisation, validation, logging (JSONL and
TensorBoard), pre-emption and step profiling."""
