-- The consumer reads a handful of calls' events at a time, by index. With statistics that lag
-- a fast-growing table, the planner chose parallel scans for those reads, forking worker
-- processes for every batch (measured: most of the call log's CPU, benches/README.md). These
-- tables are read a few rows at a time; parallel workers never pay for themselves here.
ALTER TABLE call_events SET (parallel_workers = 0);
ALTER TABLE call_sessions SET (parallel_workers = 0);
