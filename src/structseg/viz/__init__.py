"""Figures and reports (matplotlib on the Agg canvas, no pyplot state).

- :mod:`.masks`: label maps to colors, overlays.
- :mod:`.curves`: loss and validation-mIoU curves from a run's ``log.csv``.
- the confusion-matrix heatmap lives in :mod:`structseg.metrics.plots`.
- :mod:`.grid`: the image | ground truth | model 1 | model 2 ... comparison figure.
- :mod:`.report`: one self-contained HTML page (images embedded as base64).
- :mod:`.data`: data-set previews (see :mod:`structseg.data`).
"""
