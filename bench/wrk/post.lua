-- wrk script: POST bodies read from a file (one body per line), cycled per connection thread.
-- Environment: BENCH_BODIES (file), BENCH_PATH, BENCH_CONTENT_TYPE, BENCH_AUTH (optional
-- Authorization header), BENCH_ORIGIN (optional Origin header, as a browser sends), BENCH_RESULT (JSON summary written by done()), BENCH_STATUSES=1
-- (also count every reply by HTTP status: a response() hook, which costs wrk some CPU).

local bodies = {}
local index = 0
local path = os.getenv("BENCH_PATH") or "/"
local headers = { ["Content-Type"] = os.getenv("BENCH_CONTENT_TYPE") or "application/x-www-form-urlencoded" }
local auth = os.getenv("BENCH_AUTH")
if auth and auth ~= "" then
  headers["Authorization"] = auth
end
local origin = os.getenv("BENCH_ORIGIN")
if origin and origin ~= "" then
  headers["Origin"] = origin
end
headers["X-Forwarded-For"] = "203.0.113.7"

local counter = 0
local threads = {}
function setup(thread)
  counter = counter + 1
  thread:set("offset", counter * 7919)
  threads[#threads + 1] = thread
end

-- Per thread (a global, so done() can read it with thread:get); wrk only calls response() if it exists.
statuses = {}
if os.getenv("BENCH_STATUSES") == "1" then
  function response(status, headers, body)
    statuses[status] = (statuses[status] or 0) + 1
  end
end

function init(args)
  local file = assert(io.open(os.getenv("BENCH_BODIES"), "rb"))
  for line in file:lines() do
    if #line > 0 then
      bodies[#bodies + 1] = line
    end
  end
  file:close()
  index = (offset or 0) % #bodies
end

function request()
  index = index % #bodies + 1
  return wrk.format("POST", path, headers, bodies[index])
end

function done(summary, latency, requests)
  local e = summary.errors
  local out = string.format(
    '{"requests":%d,"duration_us":%d,"bytes":%d,"connect_errors":%d,"read_errors":%d,'
      .. '"write_errors":%d,"status_errors":%d,"timeouts":%d,"p50_us":%d,"p90_us":%d,'
      .. '"p99_us":%d,"p999_us":%d,"max_us":%d,"mean_us":%.1f}\n',
    summary.requests, summary.duration, summary.bytes, e.connect, e.read, e.write, e.status,
    e.timeout, latency:percentile(50), latency:percentile(90), latency:percentile(99),
    latency:percentile(99.9), latency.max, latency.mean
  )
  if os.getenv("BENCH_STATUSES") == "1" then
    local total = {}
    for _, thread in ipairs(threads) do
      for status, n in pairs(thread:get("statuses") or {}) do
        total[status] = (total[status] or 0) + n
      end
    end
    local parts = {}
    for status, n in pairs(total) do
      parts[#parts + 1] = string.format('"%d":%d', status, n)
    end
    table.sort(parts)
    out = out:sub(1, -3) .. ',"statuses":{' .. table.concat(parts, ",") .. "}}\n"
  end
  local target = os.getenv("BENCH_RESULT")
  if target and target ~= "" then
    local f = assert(io.open(target, "w"))
    f:write(out)
    f:close()
  else
    io.write(out)
  end
end
