"""The fit check: does a config fit the hardware it names? Every program of a run compiled ahead
of time from shapes for a TPU slice, a GPU node or this CPU (`python -m jaxvrl.fit`, check.py),
with the programs built from the trainer's own functions (programs.py), the buffers at each
compile's peak read from XLA's dump (peak.py), matmul FLOPs of a traced program (flops.py) and
the chips' memory and peak FLOP/s (hardware.py, gpu_targets/)."""
