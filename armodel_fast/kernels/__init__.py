"""Kernel implementations (Triton); launchers are called by :mod:`armodel_fast.ops`."""
