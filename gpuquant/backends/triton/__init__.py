"""The Triton backend: primitives (backend.py), cached launch plans (runners.py), calibration and
export launchers, the one launch point (launch.py) and the tuning table."""
