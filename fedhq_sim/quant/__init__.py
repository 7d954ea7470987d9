"""Quantization: strategy values, the backend that quantizes any module, and the wire format of updates."""
