"""Flower's configuration file: ``celery -A workers.app flower`` reads it from the directory it
is started in (Flower's ``--conf`` default), so the documented command is safe by default.

Flower's own default is every interface with no login, and its UI can revoke tasks and stop
workers. Here it listens on loopback only; to reach it from elsewhere, use an SSH tunnel
(``ssh -L 5555:127.0.0.1:5555 host``), or give it credentials *and* an address on purpose:

    FLOWER_BASIC_AUTH=ops:LONG-PASSWORD celery -A workers.app flower --address=0.0.0.0

(plain HTTP: behind a TLS proxy outside a trusted network). Command-line options win over
this file. ops/README.md, "What is exposed where", lists every listening port of wanq.
"""

address = "127.0.0.1"
