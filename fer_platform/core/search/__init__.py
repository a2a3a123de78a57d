"""Similarity search over the silver vectors, one idea per module:

    index     an index's three files in the lake, reading them back, answering queries with FAISS
    build     building an index from silver, tuning HNSW to the recall target, measuring recall
    pgvector  the same queries answered by PostgreSQL (pgvector's HNSW index)
    query     one search end to end: the query image or id, its vector, a backend, the answer
    sheet     the answer as a contact sheet (PNG)
    live      an index kept in memory by a long-running reader, swapped for a new build by its digest
    hits      one answer row, as both backends return it

The maths they share with gold and training (unit vectors, exact search, recall) is ``core.vecmath``.
FAISS is imported only inside the functions that need it.
"""
