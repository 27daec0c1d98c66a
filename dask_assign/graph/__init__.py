"""The distributed run: the tasks, the run plan (calibration, RT blocks, context model) made once,
the dask graph that annotates and writes a result, the cluster it runs on and job specs.
"""
