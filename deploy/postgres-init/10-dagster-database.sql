-- Run once by the pgvector/pgvector image when its volume is empty: the database of Dagster's
-- instance storage beside the `fer` database of the vectors, and pgvector in `fer`.
CREATE DATABASE dagster;
\connect fer
CREATE EXTENSION IF NOT EXISTS vector;
