"""Prometheus metrics, defined once here and served on the metrics listener."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

HTTP_REQUESTS = Counter(
    "heddle_http_requests_total",
    "HTTP requests served, by endpoint and response code",
    ["method", "endpoint", "code"],
)
HTTP_REQUEST_SECONDS = Histogram(
    "heddle_http_request_duration_seconds",
    "Time spent serving HTTP requests, by endpoint",
    ["method", "endpoint"],
)
HTTP_REQUESTS_IN_FLIGHT = Gauge(
    "heddle_http_requests_in_flight", "HTTP requests being served right now"
)
DB_CONNECTIONS_IN_USE = Gauge(
    "heddle_db_pool_connections_in_use", "Database transactions running or queued for the pool"
)
DB_POOL_SIZE = Gauge("heddle_db_pool_size", "Maximum number of database connections")
DB_TRANSACTION_SECONDS = Histogram(
    "heddle_db_transaction_duration_seconds",
    "Time from queuing a database transaction to its commit, by transaction name",
    ["desc"],
)
DB_STATEMENTS = Counter(
    "heddle_db_statements",
    "Statements sent to the database by committed transactions, by transaction name",
    ["desc"],
)
DB_TRANSACTION_RETRIES = Counter(
    "heddle_db_transaction_retries_total",
    "Transactions retried after a serialization failure, deadlock or lock timeout",
    ["desc"],
)
RATE_LIMITED = Counter(
    "heddle_rate_limited_total", "Requests refused by a rate limiter", ["limiter"]
)
