"""In-process benchmarks: drive ASGI apps directly (no sockets) and print µs/request."""
