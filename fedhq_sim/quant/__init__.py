"""Quantization: strategy values, the eager torch.ao backend and the wire format of updates."""
