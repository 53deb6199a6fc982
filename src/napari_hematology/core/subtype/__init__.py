"""Genetic subtype prediction from a bag of a slide's cells.

Cell features, bags, and the attention multiple-instance model that makes the call and shows which cells
drove it.
"""
