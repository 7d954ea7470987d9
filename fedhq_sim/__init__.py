"""fedhq-sim: a discrete-event simulator for federated learning with hybrid PTQ/QAT quantization.

Real PyTorch work on simulated devices and links: accuracy is real, simulated time is
charged from the work's operations priced on device profiles.
"""

__version__ = "0.1.0"
