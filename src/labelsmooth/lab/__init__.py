"""The lab: does label smoothing help *this* model on *this* data, and how?

- :mod:`labelsmooth.lab.data`: data sets in memory (Fashion-MNIST IDX files, digits, .npz);
- :mod:`labelsmooth.lab.models`: ``seed-cnn``, ``mlp``, ``resnet`` by name;
- :mod:`labelsmooth.lab.sweep`: trains every (model, distribution, eps, seed) cell at once;
- :mod:`labelsmooth.lab.report`: plots, verdicts and one self-contained report.html.

Submodules load on import (``from labelsmooth.lab import sweep``); this package imports nothing.
"""
