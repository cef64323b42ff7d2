"""Scoring predictions: AVSBench J / F, Ref-AVS S, and the demo protocols."""
