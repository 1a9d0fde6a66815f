"""Shared absl flag definitions of the cl_zoo trainers."""
