"""Shared test fixtures: a real S3 server (moto), a local HTTP file server, Debian Prometheus.

Use them from a conftest.py:

    from tests.support.s3 import s3_server, s3  # noqa: F401  (pytest fixtures)
    from tests.support.http import http_files  # noqa: F401
    from tests.support.prometheus import prometheus_binary, Prometheus  # noqa: F401
"""
