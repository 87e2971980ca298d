"""Calibration: from data to a float32 range per unit.

The methods (methods.py) and the backend-free order statistics and searches (order.py,
searches.py) sit below the backends; the range dispatch (dispatch.py), the one-shot and streamed
calibration (calibrate.py, histograms.py) and the collective reduce across ranks (collective.py)
sit above them. This file imports nothing, so config can import the methods.
"""
