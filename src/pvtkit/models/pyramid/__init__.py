"""The pyramid encoder PVTv2, SegFormer and GLPN share: `configuration` (its fields, checks and config inference,
no PyTorch) and `modeling` (the encoder, the all-MLP decode head, the forward every pyramid model shares)."""
