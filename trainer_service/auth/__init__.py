"""API keys of the trainer's client API: the key file and its reload (keys.py), the per-key rate limit
(rate_limit.py), the audit log (audit.py) and the `python -m trainer_service keys ...` command (keys_cli.py).
The gRPC interceptor that applies them lives in grpc_api/auth_interceptor.py; domain code sees only a Caller."""
