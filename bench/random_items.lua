-- wrk script for the HTTP benchmark (bench/bench_http.py): every request asks for a
-- random /items/{n} with n in a large range, so the server resolves the route template
-- for a path it has (almost certainly) not seen before. done() prints one JSON line,
-- prefixed with BENCH, that the benchmark parses.
math.randomseed(os.time())
local random = math.random

request = function()
  return wrk.format("GET", "/items/" .. random(1, 100000000))
end

done = function(summary, latency, requests)
  local errors = summary.errors
  io.write(string.format(
    'BENCH {"requests": %d, "duration_us": %d, "connect": %d, "read": %d, "write": %d, ' ..
    '"status": %d, "timeout": %d, "p50_us": %d, "p99_us": %d}\n',
    summary.requests, summary.duration, errors.connect, errors.read, errors.write,
    errors.status, errors.timeout, latency:percentile(50), latency:percentile(99)))
end
