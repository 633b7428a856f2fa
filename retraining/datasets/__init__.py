"""Captured production images as datasets: the model's answers as pre-labels, Label Studio to correct them,
the corrected labels back in, and subsets for training and gate sets. One module per format: ``layout`` (the
files every dataset shares, its error and summaries), ``yolo``, ``labelstudio`` (with ``labelstudio_tasks``, what
differs per task there), ``imports`` and ``subsets``.

A capture is a manifest row (the gateway's capture store, issue 27) plus the original image bytes, which
``read_blob(row)`` returns. The layouts written here:

YOLO dataset (detect, segment, pose, obb), what ``YOLO(...).train(data=out/data.yaml)`` reads unchanged::

    out/data.yaml          path (absolute), train: images, val: images, names; pose also kpt_shape, kpt_names
                           (and flip_idx when given)
    out/images/<id>.<ext>  the original bytes of each capture (<ext> from its media type)
    out/labels/<id>.txt    YOLO labels: the model's answer (a pre-label) until a person's label is imported
    out/captures.jsonl     the exported manifest rows, one a line, to trace an image back to its request
    out/labelled.json      {id: {"when", "who", "source"}}: the images a person labelled (import_labels)

YOLO classify dataset, what ``YOLO(...).train(data=out)`` reads unchanged::

    out/train/<class>/<id>.<ext>, out/val/<class>/<id>.<ext>   every class has a folder, empty or not
    out/captures.jsonl, out/labelled.json

Label Studio project files::

    out/images/<id>.<ext>, out/tasks.json (tasks with predictions), out/labeling_config.xml

Pre-label rules: a pose keypoint is labelled visible (v=2) when the model's confidence in it is at least
``PoseTask.visible`` (0.5, ``quality.tasks``) and it lies in the image; otherwise it is written as not
labelled (0 0 0), so training neither learns a guess nor a wrong position. A segment detection's label is its
largest polygon, or its box as a 4-point polygon when it has none.
"""
