"""The lab: does label smoothing help *this* model on *this* data, and how?

- :mod:`~labelsmooth.lab.data`: data sets in memory (Fashion-MNIST IDX files, digits, .npz);
- :mod:`~labelsmooth.lab.models`: ``seed-cnn``, ``mlp``, ``resnet`` by name;
- :mod:`~labelsmooth.lab.config`: a sweep's settings (``SweepConfig``) and its grid of cells;
- :mod:`~labelsmooth.lab.cells`: every cell of one model trained together, stacked;
- :mod:`~labelsmooth.lab.ranks`: data-parallel training over ``torch.distributed`` ranks;
- :mod:`~labelsmooth.lab.rundir`: the run directory (atomic writes, checkpoints, cell files);
- :mod:`~labelsmooth.lab.sweep`: ``labelsmooth sweep``, training every cell, resumably;
- :mod:`~labelsmooth.lab.stats`: means, Student-t intervals, paired differences;
- :mod:`~labelsmooth.lab.presets`, :mod:`~labelsmooth.lab.demo`: named experiments
  (``labelsmooth reproduce``) and ``labelsmooth demo``;
- :mod:`~labelsmooth.lab.shard`, :mod:`~labelsmooth.lab.merge`: sharded sweeps and their merge;
- :mod:`~labelsmooth.lab.distill`: the distillation experiment (``labelsmooth distill``);
- :mod:`~labelsmooth.lab.calibrate`: ``labelsmooth calibrate`` for a user's saved logits;
- :mod:`~labelsmooth.lab.provenance`: versions, git commit, machine and date of a run;
- :mod:`~labelsmooth.lab.report`: plots, verdicts and one self-contained report.html.

The lab uses the library (losses, ``calibration``, ``analysis``); the library never imports the
lab. Submodules load on import (``from labelsmooth.lab import sweep``); this package imports
nothing.
"""
