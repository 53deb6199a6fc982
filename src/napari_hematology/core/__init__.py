"""Headless core of napari-hematology: never imports Qt or napari.

Sub-modules: ``io`` (reading and writing images and tables), ``registry`` (models by name, safetensors
weights), ``training`` (the one training loop), ``progress`` (callbacks and cancellation), ``errors``.
"""
