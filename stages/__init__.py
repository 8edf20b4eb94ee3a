"""Engine-free stage logic: pure functions over Arrow tables and plain Python data.

Nothing here imports an engine (Ray, Beam, Airflow); the pipelines package runs these
functions per partition on whichever engine the config names.
"""
