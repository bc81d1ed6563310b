"""What every local PostgreSQL instance is made from: the server's configuration, its access
rules, and Aurora PostgreSQL's metadata functions (``aurora_db_instance_identifier()``,
``aurora_replica_status()``) with the same columns as Aurora's, made in the cached template.

``aurora_replica_status()`` answers the writer's view of replication (its WAL senders, the
writer's row with its flushed position as ``durable_lsn``); a reader answers its own row from its
own replay position (``current_read_lsn``) and the others from the writer it streams from,
through a dblink link its session keeps, since a standby does not know its peers.
"""

from __future__ import annotations

import hashlib

SUPERUSER = "postgres"
ADMIN_DB = "postgres"

SERVER_CONF = """
# aurora-access local cluster (test data only: durability comes from synchronous replication)
fsync = off
full_page_writes = on
synchronous_commit = on
wal_level = replica
wal_log_hints = on
hot_standby = on
hot_standby_feedback = on
max_wal_senders = 20
max_replication_slots = 20
wal_keep_size = '512MB'
wal_retrieve_retry_interval = '50ms'
wal_receiver_status_interval = '1s'
max_connections = 300
shared_buffers = '32MB'
# segments in PGDATA, removed with it, instead of /dev/shm files a crash would leave behind
dynamic_shared_memory_type = mmap
password_encryption = 'scram-sha-256'
log_min_messages = warning
log_line_prefix = '%m [%p] '
include_if_exists = '../instance.conf'
"""

HBA_CONF = """
local all all trust
host all {superuser} 127.0.0.0/8 trust
host replication {superuser} 127.0.0.0/8 trust
host all all 127.0.0.0/8 scram-sha-256
host all all ::1/128 scram-sha-256
"""

_STATUS_COLUMNS = """
    server_id text, session_id text, durable_lsn bigint, highest_lsn_rcvd bigint,
    current_read_lsn bigint, cur_replay_latency_in_usec bigint, active_txns integer,
    is_current boolean, last_transport_error integer, last_error_timestamp timestamptz,
    last_update_timestamp timestamptz, feedback_xmin bigint, feedback_epoch integer,
    replica_lag_in_msec double precision, log_stream_speed_in_kib_per_second double precision,
    log_buffer_sequence_number bigint, oldest_read_view_trx_id bigint,
    oldest_read_view_lsn bigint, pending_read_ios integer, read_ios bigint, iops integer,
    cpu double precision"""

# Made in template1 and postgres of the template, so every database of every instance has them.
METADATA_SQL = f"""
CREATE SCHEMA aurora_local;
REVOKE ALL ON SCHEMA aurora_local FROM PUBLIC;
CREATE EXTENSION dblink SCHEMA aurora_local;

CREATE FUNCTION pg_catalog.aurora_db_instance_identifier() RETURNS text
LANGUAGE sql STABLE AS $$ SELECT current_setting('cluster_name') $$;

CREATE TYPE aurora_local.status_row AS ({_STATUS_COLUMNS});

-- The writer's view: itself, and every reader streaming from it (from the WAL senders and
-- their own activity rows: the pg_stat_replication view reads every backend's, 4x the cost).
CREATE FUNCTION aurora_local.writer_replica_status() RETURNS SETOF aurora_local.status_row
LANGUAGE sql SECURITY DEFINER SET search_path = pg_catalog AS $$
  SELECT current_setting('cluster_name'), 'MASTER_SESSION_ID',
         (pg_current_wal_flush_lsn() - '0/0')::bigint, NULL::bigint, NULL::bigint, 0::bigint,
         0, true, 0, NULL::timestamptz, now(), NULL::bigint, NULL::integer, 0::double precision,
         NULL::double precision, NULL::bigint, NULL::bigint, NULL::bigint, 0, 0::bigint, 0,
         0::double precision
  UNION ALL
  SELECT a.application_name, 'replica-' || a.application_name || '-' || r.pid,
         (r.replay_lsn - '0/0')::bigint, (r.flush_lsn - '0/0')::bigint,
         (r.replay_lsn - '0/0')::bigint,
         (extract(epoch FROM coalesce(r.replay_lag, interval '0')) * 1000000)::bigint,
         0, true, 0, NULL::timestamptz, coalesce(r.reply_time, now()),
         a.backend_xmin::text::bigint, 0,
         extract(epoch FROM coalesce(r.replay_lag, interval '0'))::double precision * 1000,
         NULL::double precision, NULL::bigint, NULL::bigint, NULL::bigint, 0, 0::bigint, 0,
         0::double precision
  FROM pg_stat_get_wal_senders() r, LATERAL pg_stat_get_activity(r.pid) a
  WHERE r.state = 'streaming' AND a.application_name <> ''
$$;

CREATE FUNCTION pg_catalog.aurora_replica_status() RETURNS TABLE ({_STATUS_COLUMNS})
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog AS $$
#variable_conflict use_column
DECLARE
  me text := current_setting('cluster_name');
  writer_conninfo text;
  link text;
  other text;
  fetched json;
BEGIN
  IF NOT pg_is_in_recovery() THEN
    RETURN QUERY SELECT * FROM aurora_local.writer_replica_status();
    RETURN;
  END IF;
  -- A reader's own row, from its own replay position (what a snapshot begun here sees).
  RETURN QUERY SELECT me, 'replica-' || me,
         (pg_last_wal_replay_lsn() - '0/0')::bigint, (pg_last_wal_receive_lsn() - '0/0')::bigint,
         (pg_last_wal_replay_lsn() - '0/0')::bigint, NULL::bigint, 0, true, 0,
         NULL::timestamptz, now(), NULL::bigint, 0,
         (extract(epoch FROM now() - coalesce(pg_last_xact_replay_timestamp(), now())) * 1000)
           ::double precision,
         NULL::double precision, NULL::bigint, NULL::bigint, NULL::bigint, 0, 0::bigint, 0,
         0::double precision;
  -- The other rows are the writer's view, through a link to the writer this reader streams
  -- from, kept open by this session (a new link per call would cost a login every time).
  SELECT format('host=%s port=%s dbname={ADMIN_DB} user={SUPERUSER} connect_timeout=2',
                w.sender_host, w.sender_port)
    INTO writer_conninfo FROM pg_stat_wal_receiver w WHERE w.status = 'streaming';
  IF writer_conninfo IS NULL THEN
    RETURN;  -- the writer is unreachable: this instance alone, as a reader
  END IF;
  link := 'writer_' || md5(writer_conninfo);
  FOR other IN SELECT unnest(aurora_local.dblink_get_connections()) LOOP
    IF other <> link THEN
      PERFORM aurora_local.dblink_disconnect(other);  -- a link to an earlier writer
    END IF;
  END LOOP;
  -- Aurora refreshes the other instances' rows now and then, not per call: kept 100 ms here
  IF current_setting('aurora_local.view_link', true) IS DISTINCT FROM link
      OR clock_timestamp() - coalesce(nullif(current_setting('aurora_local.view_at', true),
                                             ''), '-infinity')::timestamptz
         > interval '100 milliseconds' THEN
    BEGIN
      IF NOT link = ANY (coalesce(aurora_local.dblink_get_connections(), '{{}}')) THEN
        PERFORM aurora_local.dblink_connect(link, writer_conninfo);
      END IF;
      SELECT coalesce(json_agg(t), '[]') INTO fetched FROM aurora_local.dblink(link,
          'SELECT * FROM aurora_local.writer_replica_status()') AS t({_STATUS_COLUMNS})
        WHERE t.server_id <> me;
      PERFORM set_config('aurora_local.view', fetched::text, false),
              set_config('aurora_local.view_at', clock_timestamp()::text, false),
              set_config('aurora_local.view_link', link, false);
    EXCEPTION WHEN OTHERS THEN
      PERFORM set_config('aurora_local.view_link', '', false);
      BEGIN
        PERFORM aurora_local.dblink_disconnect(link);
      EXCEPTION WHEN OTHERS THEN
        NULL;
      END;
      RETURN;
    END;
  END IF;
  RETURN QUERY SELECT * FROM json_populate_recordset(NULL::aurora_local.status_row,
                                                     current_setting('aurora_local.view')::json);
END
$$;
"""

APP_SQL = """
CREATE ROLE {user} LOGIN;
CREATE DATABASE {database} OWNER {user};
"""

# The template's identity: a change here or in the server's version makes a new template.
TEMPLATE_KEY = hashlib.sha256(
    (SERVER_CONF + HBA_CONF + METADATA_SQL + APP_SQL).encode()
).hexdigest()[:12]
