"""The increment ΔW_k = C_k·β·S_k: its file format, the canonical composition, the UNet hooks.

Everything downstream of training (compose, export, inspect, generate) reads increments through
this package; the erasure methods in `sepme_engine.erase` write them. Nothing here imports
`sepme_engine.erase`.
"""
