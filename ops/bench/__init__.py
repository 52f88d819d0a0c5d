"""wanq's benchmark: the whole system (Redis, simulator, Celery workers) measured in one run.

``python -m ops.bench [--quick|--tiny] [--only submission] [--json PATH] [--md PATH]``; see
``__main__``.
Modules: ``params`` (run sizes per mode), ``cluster`` (processes, via ops.localstack),
``procs`` (CPU and RSS from /proc), ``submission``, ``completion``, ``baseline`` (the naive
design, its Celery app in ``naive``), ``inflight``, ``report``.
"""
