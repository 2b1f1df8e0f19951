"""Checks of written runs: ``hands validate`` (every label exact) and ``hands evaluate`` (is the dataset any
good; docs/evaluation.md). This package sits above ``sinks`` and ``renderers``: it reads runs through the
record format (``sinks.records``) and re-renders labels.

* ``evaluation.validate``: ``hands validate`` (schema, parameters, keys, projection, visibility, re-render,
  checksums, membership);
* ``evaluation.detector``: MediaPipe Hands as a 2D hand detector (pixel, joint-order and handedness
  conventions);
* ``evaluation.metrics``: the maths (PCK, normalised error, MSE-2D, keypoint matching, MPJPE, PA-MPJPE,
  alignment, camera viewpoint in the hand's frame), pure functions;
* ``evaluation.scorers``: the ``Scorer`` interface and registry (``make_scorer``), the MediaPipe scorer and
  the hook for 3D estimators;
* ``evaluation.run``: ``hands evaluate`` (scores.parquet, summary.json) and ``evaluation.report``
  (report.html);
* ``evaluation.fid``: FID/KID and FID-H/KID-H with the standard FID Inception network.

Importing the package loads nothing heavy; each module imports its dependencies (mediapipe, torch) when used.
"""
