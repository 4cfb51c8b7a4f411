"""The offline teacher (RSD): label recorded drives with BEV risk grids.

``base`` (interface), ``factory`` (:func:`build_teacher`), backends ``oracle`` (scene-oracle),
``vlm``, ``detector`` (detector+vlm) and ``clipseg``; ``parse`` (answers -> objects),
``projection`` (objects/heatmaps -> the model's GridSpec), ``labelbag`` (label bags), ``job`` (the
labeling job, local pool or Ray), ``cli`` (``rsd-drive label``), ``tiny`` (tiny random models for
tests).
"""
