-- wrk script: posts the pre-signed webhooks of WEBHOOKS_FILE (from
-- make-webhooks.py): thread k of WRK_THREADS takes every WRK_THREADS-th line,
-- so no MessageSid is posted twice while the file lasts (then it wraps).
local requests = {}
local next_id = 0

function setup(thread)
  thread:set("id", next_id)
  next_id = next_id + 1
end

function init(args)
  local path = os.getenv("WEBHOOKS_FILE")
  local n, id = 0, tonumber(wrk.thread:get("id"))
  local threads = tonumber(os.getenv("WRK_THREADS") or "1")
  for line in io.lines(path) do
    n = n + 1
    -- Each thread takes every threads-th line, so no MessageSid is sent twice.
    if (n % threads) == id then
      local sig, body = line:match("^([^\t]+)\t(.*)$")
      requests[#requests + 1] = wrk.format("POST", nil, {
        ["Content-Type"] = "application/x-www-form-urlencoded",
        ["X-Twilio-Signature"] = sig,
      }, body)
    end
  end
end

local i = 0
function request()
  i = i + 1
  if i > #requests then i = 1 end
  return requests[i]
end

-- No response() callback: it makes wrk hand every response to Lua, which
-- costs more CPU than the request itself. wrk reports non-2xx answers anyway.
