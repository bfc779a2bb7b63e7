"""Labeling tools around a collection: Label Studio (both ways), CVAT, FiftyOne.

Each module talks to its tool through the tool's documented interface; none is imported by
the rest of lookalike, so the tools' packages stay optional.
"""
