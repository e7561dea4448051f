"""BIDS-App mode (``srrecnn bids``): a raw BIDS dataset in, a BIDS-Derivatives dataset out.

``layout`` indexes the input with pybids and turns its anatomical scans into batch jobs
(pairing a T1w with its T2w for a two-channel model); ``naming`` names each output with
the source's entities plus ``res-`` and ``desc-`` in the schema's order; ``sidecars``
writes each output's JSON from its manifest row; ``dataset`` writes the dataset's own
files; ``validator`` runs the official validator; ``figures`` and ``report`` make the
QC pages. The command line (``cli/bids.py``) runs them around ``batch.run``.
"""
