// The bentocache mode of the compare benchmark (benches/README.md): replays the operations
// in --replay through bentocache as a Node.js team sets it up for several instances (its
// memory L1 in front of Redis, and its Redis bus), with the statements the Rust modes send,
// and prints one result line as the Rust modes' children do. The parent process reads the
// CPU and Redis counters itself between the `measuring` and `measured` lines.
import { readFileSync } from 'node:fs'
import { parseArgs } from 'node:util'
import { setTimeout as sleep } from 'node:timers/promises'
import pg from 'pg'
import { BentoCache, bentostore } from 'bentocache'
import { memoryDriver } from 'bentocache/drivers/memory'
import { redisDriver, redisBusDriver } from 'bentocache/drivers/redis'

// Writes to one lead take turns (a lead's turn is `id % WRITE_STRIPES`), as in the Rust child.
const WRITE_STRIPES = 1024
// The stampede probe: concurrent reads of one cold key whose loader takes PROBE_DELAY_MS.
const PROBE_CALLERS = 500
const PROBE_DELAY_MS = 50
const PROBE_TIMEOUT_MS = 15_000

const { values: flags } = parseArgs({
  options: {
    replay: { type: 'string' },
    prefix: { type: 'string' },
    round: { type: 'string', default: '1' },
  },
})
if (!flags.replay || !flags.prefix) {
  console.error('usage: node run.mjs --replay FILE --prefix P [--round N]')
  process.exit(2)
}

const lines = readFileSync(flags.replay, 'utf8').split('\n')
const config = JSON.parse(lines[0])
const ops = []
let maxId = 0
for (let i = 1; i < lines.length; i++) {
  if (!lines[i]) continue
  const [kind, id, org, phone] = lines[i].split(' ')
  ops.push({ write: kind === 'w', id: Number(id), org: Number(org), phone })
  maxId = Math.max(maxId, Number(id))
}

const redisUrl = new URL(process.env.REDIS_URL ?? 'redis://127.0.0.1:6379/')
const connection = { host: redisUrl.hostname, port: Number(redisUrl.port || 6379) }
// The hand-written modes' pool: the service's size and statement timeout, and the setting
// that keeps Tiercache's change triggers silent (a team without Tiercache has none).
const pool = new pg.Pool({
  connectionString: process.env.DATABASE_URL,
  max: config.pool_size,
  options: `-c tiercache.origin=service -c statement_timeout=${config.statement_timeout_ms}`,
})
const ttl = config.l2_ttl_secs * 1000
const bento = new BentoCache({
  default: 'leads',
  prefix: flags.prefix,
  stores: {
    leads: bentostore()
      .useL1Layer(memoryDriver({ maxItems: config.l1_max_entries }))
      .useL2Layer(redisDriver({ connection }))
      .useBus(redisBusDriver({ connection })),
  },
})

let readQueries = 0
let writeQueries = 0

/** A lead by (phone, org): bentocache's L1, else Redis, else the SELECT. */
function read(op) {
  return bento.getOrSet({
    key: `lead:${op.phone}:${op.org}`,
    ttl,
    factory: async () => {
      readQueries++
      const result = await pool.query({
        name: 'lead_by_phone',
        text: config.lead_by_phone_sql,
        values: [op.org, op.phone],
      })
      return result.rows[0] ?? null
    },
  })
}

/** The UPDATE of a lead's notes, then bentocache's delete (both tiers, and the bus). */
async function write(op, notes) {
  writeQueries++
  const result = await pool.query({
    name: 'update_lead',
    text: config.update_lead_sql,
    values: [op.id, null, null, true, notes, new Date()],
  })
  if (result.rowCount !== 1) throw new Error(`updating lead ${op.id}, which does not exist`)
  await bento.delete({ key: `lead:${op.phone}:${op.org}` })
}

/** The version a lead's notes hold (`v{n}`), 0 for anything else. */
function version(lead) {
  const match = /^v(\d+)$/.exec(lead.notes ?? '')
  return match ? Number(match[1]) : 0
}

const turns = new Array(WRITE_STRIPES).fill(Promise.resolve())
/** Runs `task` after every earlier task of `stripe`. */
function inTurn(stripe, task) {
  const run = turns[stripe].then(task)
  turns[stripe] = run.catch(() => {})
  return run
}

const start = process.hrtime.bigint()
const deadline = start + BigInt(config.max_seconds) * 1_000_000_000n
const measureFrom = config.warmup_ops
const end = config.warmup_ops + config.ops
const committed = new Uint32Array(maxId + 1)
const committedAt = new Float64Array(maxId + 1)
const readTimes = []
const writeTimes = []
const out = { violations: 0, staleMaxNs: 0, errors: 0, firstError: null, timedOut: false }
let next = 0
let firstStart = null
let lastFinish = null
let counted = null

function failed(error) {
  out.errors++
  out.firstError ??= String(error?.stack ?? error)
}

async function worker() {
  for (;;) {
    const index = next++
    if (index >= end) return
    const started = process.hrtime.bigint()
    if (started >= deadline) {
      out.timedOut = true
      return
    }
    if (index === measureFrom) {
      counted = { readQueries, writeQueries }
      process.stdout.write('measuring\n')
    }
    const op = ops[index]
    let took
    if (op.write) {
      took = await inTurn(op.id % WRITE_STRIPES, async () => {
        const nextVersion = committed[op.id] + 1
        const began = process.hrtime.bigint()
        try {
          await write(op, `v${nextVersion}`)
          committedAt[op.id] = Number(process.hrtime.bigint() - start)
          committed[op.id] = nextVersion
        } catch (error) {
          failed(error)
        }
        return process.hrtime.bigint() - began
      })
    } else {
      // What had committed before the read began: the read must be at least as new.
      const expected = committed[op.id]
      const expectedAt = committedAt[op.id]
      const began = process.hrtime.bigint()
      try {
        const lead = await read(op)
        took = process.hrtime.bigint() - began
        if (!lead) {
          failed(new Error(`lead ${op.id} was not found`))
        } else if (version(lead) < expected) {
          out.violations++
          const after = Number(began - start) - expectedAt
          out.staleMaxNs = Math.max(out.staleMaxNs, after)
        }
      } catch (error) {
        took = process.hrtime.bigint() - began
        failed(error)
      }
    }
    if (index >= measureFrom) {
      ;(op.write ? writeTimes : readTimes).push(Number(took) / 1e3)
      firstStart ??= started
      lastFinish = process.hrtime.bigint()
    }
  }
}

/** The `q` quantile of `values` (µs), nearest rank; 0 for none. */
function quantile(sorted, q) {
  if (sorted.length === 0) return 0
  return sorted[Math.min(sorted.length - 1, Math.max(0, Math.ceil(q * sorted.length) - 1))]
}

/** How many times the loader ran for PROBE_CALLERS concurrent reads of one cold key. */
async function stampede() {
  let runs = 0
  const probe = { id: -1, org_id: 0, phone: '+16460000000', name: 'Stampede Probe', notes: null }
  const reads = Array.from({ length: PROBE_CALLERS }, () =>
    bento.getOrSet({
      key: `probe:${flags.prefix}`,
      ttl,
      factory: async () => {
        runs++
        await sleep(PROBE_DELAY_MS)
        return probe
      },
    }),
  )
  await Promise.race([
    Promise.all(reads),
    sleep(PROBE_TIMEOUT_MS).then(() => {
      throw new Error(`the stampede probe took over ${PROBE_TIMEOUT_MS} ms`)
    }),
  ])
  return runs
}

const rssSetup = process.memoryUsage().rss
await Promise.all(Array.from({ length: config.concurrency }, worker))
process.stdout.write('measured\n')
const rss = process.memoryUsage().rss
const stampedeRuns = await stampede()
await bento.disconnectAll()
await pool.end()

if (counted === null || readTimes.length === 0) {
  console.error('no operation was measured')
  process.exit(1)
}
const reads = readTimes.length
const writes = writeTimes.length
const windowReadQueries = readQueries - counted.readQueries
const seconds = Number(lastFinish - firstStart) / 1e9
const sortedReads = Float64Array.from(readTimes).sort()
const sortedWrites = Float64Array.from(writeTimes).sort()
// The parent fills what it measures itself: CPU, Redis commands, the best hit ratio.
const result = {
  mode: 'bentocache',
  round: Number(flags.round),
  ops: reads + writes,
  reads,
  writes,
  seconds,
  ops_per_sec: (reads + writes) / seconds,
  read_p50_us: quantile(sortedReads, 0.5),
  read_p99_us: quantile(sortedReads, 0.99),
  read_p999_us: quantile(sortedReads, 0.999),
  write_p50_us: quantile(sortedWrites, 0.5),
  write_p99_us: quantile(sortedWrites, 0.99),
  write_p999_us: quantile(sortedWrites, 0.999),
  read_queries: windowReadQueries,
  write_queries: writeQueries - counted.writeQueries,
  hit_ratio: 1 - windowReadQueries / reads,
  best_hit_ratio: 0,
  redis_commands: 0,
  redis_cmds_per_op: 0,
  cpu_us_per_op: 0,
  cpu_process_us_per_op: 0,
  cpu_postgres_us_per_op: 0,
  cpu_redis_us_per_op: 0,
  cpu_busy: 0,
  cpu_steal: 0,
  rss_bytes: rss,
  rss_setup_bytes: rssSetup,
  stampede_loader_runs: stampedeRuns,
  violations: out.violations,
  stale_max_ms: out.staleMaxNs / 1e6,
  errors: out.errors,
  first_error: out.firstError,
  timed_out: out.timedOut,
}
process.stdout.write(`${JSON.stringify(result)}\n`)
