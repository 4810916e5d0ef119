-- wrk script of the benchmark (bench/__main__.py sets the environment):
--   BENCH_BODY    file with the request body; every "@@V@@" in it becomes a new number on every request
--                 (BENCH_FIRST, BENCH_FIRST+1, ...), so a cold scenario never sends the same content twice
--   BENCH_TOKENS  optional file of JWTs, one a line: each request carries the next one (production mode)
--   BENCH_PATH    the endpoint
-- On exit it prints one line: BENCH {json summary}.

local body, tokens, static = "", {}, nil
local counter, token_index = 0, 0
local path = os.getenv("BENCH_PATH")

function init(args)
  local file = assert(io.open(os.getenv("BENCH_BODY"), "rb"))
  body = file:read("*a")
  file:close()
  counter = tonumber(os.getenv("BENCH_FIRST") or "0")
  local token_file = os.getenv("BENCH_TOKENS")
  if token_file and token_file ~= "" then
    for line in io.lines(token_file) do
      tokens[#tokens + 1] = line
    end
  end
  if #tokens == 0 and not string.find(body, "@@V@@", 1, true) then
    static = wrk.format("POST", path, {["Content-Type"] = "application/json"}, body)
  end
end

function request()
  if static then
    return static
  end
  local headers = {["Content-Type"] = "application/json"}
  if #tokens > 0 then
    token_index = token_index + 1
    headers["Authorization"] = "Bearer " .. (tokens[token_index] or "exhausted")
  end
  counter = counter + 1
  return wrk.format("POST", path, headers, (string.gsub(body, "@@V@@", tostring(counter))))
end

function done(summary, latency, requests)
  local errors = summary.errors
  io.write(string.format(
    'BENCH {"requests": %d, "duration_us": %d, "p50_us": %d, "p99_us": %d, "non_2xx": %d, "socket_errors": %d}\n',
    summary.requests, summary.duration, latency:percentile(50), latency:percentile(99), errors.status,
    errors.connect + errors.read + errors.write + errors.timeout))
end
