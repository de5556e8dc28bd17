"""The store on PostgreSQL (psycopg 3): statement translation, migrations' DDL, the pool.

Only `triage.store` imports this package, and only when a store URL names PostgreSQL, so psycopg
stays an optional dependency (the `postgres` extra).
"""
