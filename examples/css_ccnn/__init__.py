"""CSS-CCNN, the reference example of sinkmatch: completely self-supervised crowd counting.

Babu Sam et al., "Completely Self-Supervised Crowd Counting via Distribution Matching" (CSS-CCNN).
``examples.css_ccnn.data`` reads the public crowd datasets and generates synthetic crowds; the
model, training and evaluation live beside it, and ``python -m examples.css_ccnn`` is the command
line.
"""
