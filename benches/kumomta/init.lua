-- KumoMTA's policy for benches/e2e.sh: the same job as sidestep's bench config, set up
-- the way KumoMTA's user guide describes (configuration chapter: spool, sending IPs,
-- queue management, SMTP listeners; kumo.dns.configure_resolver). e2e.sh passes the
-- per-run values in the environment:
--   BENCH_KUMO_DIR     spool and logs live under it
--   BENCH_KUMO_LISTEN  SMTP listener (127.0.0.1:port)
--   BENCH_KUMO_HTTP    HTTP listener, for /metrics (127.0.0.1:port)
--   BENCH_DNS          the bench's dnsmasq (127.0.0.1:port): MX and A records
--   BENCH_SINK_PORT    the port every MX host's sink listens on
--   BENCH_KUMO_SYNC    "1": the spool is made durable before the 250 (kumo-dur);
--                      otherwise KumoMTA as shipped (RocksDB, no sync before the 250)
local kumo = require 'kumo'

local function env(name)
  local value = os.getenv(name)
  if value == nil or value == '' then
    error(name .. ' is not set (benches/e2e.sh sets it)')
  end
  return value
end

local DIR = env 'BENCH_KUMO_DIR'
local SINK_PORT = tonumber(env 'BENCH_SINK_PORT')
local FORCE_SYNC = os.getenv 'BENCH_KUMO_SYNC' == '1'

kumo.on('init', function()
  -- The user guide recommends RocksDB for both spools.
  kumo.define_spool { name = 'data', path = DIR .. '/data', kind = 'RocksDB' }
  kumo.define_spool { name = 'meta', path = DIR .. '/meta', kind = 'RocksDB' }

  -- Delivery and bounce records, like sidestep's delivery log.
  kumo.configure_local_logs { log_dir = DIR .. '/logs' }
  -- The volume accounting database (default /var/spool/kumomta/accounting.db).
  kumo.configure_accounting_db_path(DIR .. '/accounting.db')

  -- MX and address lookups through the bench's DNS, as sidestep's [dns] nameservers.
  kumo.dns.configure_resolver { name_servers = { env 'BENCH_DNS' } }

  kumo.start_http_listener {
    listen = env 'BENCH_KUMO_HTTP',
    trusted_hosts = { '127.0.0.1' },
  }

  -- Relays for loopback clients only, as sidestep's relay_networks.
  kumo.start_esmtp_listener {
    listen = env 'BENCH_KUMO_LISTEN',
    hostname = 'kumo.bench.test',
    relay_hosts = { '127.0.0.0/8' },
  }
end)

-- The egress pool: the same two IPs as sidestep's [[pools.egress]].
local SOURCES = {
  ['ip-2'] = { address = '127.0.0.2', ehlo = 'out2.bench.test' },
  ['ip-3'] = { address = '127.0.0.3', ehlo = 'out3.bench.test' },
}

kumo.on('get_egress_source', function(source_name)
  local source = SOURCES[source_name]
  if source == nil then
    error('no egress source ' .. source_name)
  end
  return kumo.make_egress_source {
    name = source_name,
    source_address = source.address,
    ehlo_domain = source.ehlo,
  }
end)

kumo.on('get_egress_pool', function(pool_name)
  return kumo.make_egress_pool {
    name = pool_name,
    entries = { { name = 'ip-2' }, { name = 'ip-3' } },
  }
end)

-- Every queue uses the pool; retries as sidestep's bench config (1 s, at most 5 s).
kumo.on('get_queue_config', function(domain, tenant, campaign, routing_domain)
  return kumo.make_queue_config {
    egress_pool = 'bench',
    retry_interval = '1s',
    max_retry_interval = '5s',
  }
end)

-- The MX hosts are loopback addresses, which KumoMTA prohibits by default (a mail
-- loop guard), and the sinks listen on the bench's port instead of 25.
kumo.on('get_egress_path_config', function(routing_domain, egress_source, site_name)
  return kumo.make_egress_path {
    smtp_port = SINK_PORT,
    prohibited_hosts = {},
  }
end)

kumo.on('smtp_server_message_received', function(msg)
  if FORCE_SYNC then
    -- kumo-dur: each save of this message's data and metadata is synced (RocksDB
    -- write with sync) before the 250, as sidestep's spool always is.
    msg:set_force_sync(true)
  end
end)
