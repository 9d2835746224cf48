// `npm run bench -- idempotency`: what the Idempotency-Key protocol costs a small JSON POST
// handler that writes one row, on SQLite and on PostgreSQL. Writes bench/results/idempotency.json.
//
// Cases, per store: `no-idempotency-<store>` (plain node:http handler, one INSERT),
// `no-idempotency-tx-<store>` (the same, the INSERT in its own transaction: what the issue's
// goals are also read against, since idempotency needs a transaction), `idempotency-<store>`
// (the same handler under idempotentHandler with the default claim: 'leased', writing through
// ctx.tx, a new key per request), `replay-<store>` (keys already completed, sent again: replayed
// from the store, the handler does not run), and `idempotency-in-tx-<store>` /
// `replay-in-tx-<store>`: the same two with claim: 'in-transaction'. `idempotency-deferred-<store>`
// and `idempotency-in-tx-deferred-<store>` are the new-key cases with the handler's INSERT sent
// through ctx.deferWrite (not awaited; on PostgreSQL it shares the round trip of the result's
// write and COMMIT). `--stores=sqlite` (or postgres) runs one store only and prints without
// writing the results file.
//
// Method: server and load generator share this process (node:http on loopback, undici Pool of
// 32 connections, each connection sends its next request when the last answered). Every case
// gets a 1 s warmup, then `--duration-ms` (default 5000) of measurement split over two
// interleaved rounds, so noise from this shared machine hits every case alike. Metrics:
// requests_per_s, p50_ms and p99_ms of request latency, statements_per_request: the
// statements sent through a counting SqlDriver (a transaction counts BEGIN and COMMIT), and on
// PostgreSQL round_trips_per_request: the times the client waits for the server. The driver
// sends BEGIN with the first statement of a transaction and, through tx.finish, the last
// statement with COMMIT; a statement sent while another of its transaction is still unanswered
// (a deferred write) shares that one's round trip. With group commit (the leased claim, and a
// result whose handler only deferred its writes) several requests share statements: a group's
// statement counts once in statements_per_request (the server's work, averaged over requests)
// and its round trip once for each request of the group (each waits for it). PostgreSQL 15 is
// started for the run (fsync on) and stopped.
import { randomUUID } from 'node:crypto'
import { mkdtempSync, rmSync } from 'node:fs'
import { createServer, type IncomingMessage, type ServerResponse } from 'node:http'
import type { AddressInfo } from 'node:net'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { Pool } from 'undici'
import { startPostgres } from '../scripts/services.mjs'
import type { IdempotencyClaimMode } from '../src/idempotency/index.js'
import type { SqlDriver, SqlTransaction, SqlWrite, WriteCheck } from '../src/stores/index.js'
import { built } from './lib/built.js'
import { collectGarbage, percentile, type ResultRow, writeResults } from './lib/harness.js'

const { createIdempotency, idempotentHandler, migrateIdempotency } =
  await built<typeof import('../src/idempotency/index.js')>('idempotency/index.js')
const { openDatabase } = await built<typeof import('../src/stores/index.js')>('stores/index.js')

const connections = 32
const warmupMs = 1_000
const rounds = 2
const requestBody = JSON.stringify({ amount: 4200, currency: 'EUR' })
const insertCharge = 'INSERT INTO bench_charges (id, amount) VALUES ($1, $2)'

/**
 * How many requests a statement serves: the idempotency store's group statements on
 * PostgreSQL (the claims or results of a group) take one array per column, one element per
 * request; any other statement serves one.
 */
function requestsIn(params: readonly unknown[] | undefined): number {
  const first = params?.[0]
  return Array.isArray(first) ? Math.max(1, first.length) : 1
}

/**
 * Counts the statements sent to the database, and the round trips they take on PostgreSQL:
 * there BEGIN travels with the transaction's first statement (pipeline mode) and costs none,
 * COMMIT costs one unless it travelled with the last statement (`tx.finish`), and a statement
 * of a transaction costs none when it is sent while an earlier one is still unanswered (the
 * connection pipelines: the client waits once for both answers).
 */
class CountingDriver implements SqlDriver {
  readonly dialect: SqlDriver['dialect']
  statements = 0
  roundTrips = 0
  readonly #inner: SqlDriver

  constructor(inner: SqlDriver) {
    this.#inner = inner
    this.dialect = inner.dialect
    const atomically = inner.writeAtomically?.bind(inner)
    if (atomically !== undefined) {
      // A unit's own statements, with its SAVEPOINT and RELEASE; the group's BEGIN and COMMIT
      // are shared by its units, not counted.
      this.writeAtomically = (writes, check) => {
        this.statements += writes.length + 2
        this.roundTrips++
        return atomically(writes, check)
      }
    }
  }

  writeAtomically?: (writes: readonly SqlWrite[], check?: WriteCheck) => Promise<number[]>

  query<R = Record<string, unknown>>(sql: string, params?: readonly unknown[]): Promise<R[]> {
    this.statements++
    this.roundTrips += requestsIn(params)
    return this.#inner.query<R>(sql, params)
  }

  execute(sql: string, params?: readonly unknown[]): Promise<{ rowCount: number }> {
    this.statements++
    this.roundTrips++
    return this.#inner.execute(sql, params)
  }

  async transaction<T>(fn: (tx: SqlTransaction) => Promise<T>): Promise<T> {
    this.statements += 2 // BEGIN and COMMIT (or ROLLBACK)
    const state = { finished: false, unanswered: 0 }
    try {
      return await this.#inner.transaction((tx) => fn(this.#counted(tx, state)))
    } finally {
      if (!state.finished) this.roundTrips++ // COMMIT (or ROLLBACK) on its own
    }
  }

  #counted(tx: SqlTransaction, state: { finished: boolean; unanswered: number }): SqlTransaction {
    // One statement: a round trip of its own unless it goes out behind an unanswered one.
    const sent = <T>(send: () => Promise<T>, members = 1): Promise<T> => {
      this.statements++
      if (state.unanswered === 0) this.roundTrips++
      state.unanswered++
      const answer = send()
      // A statement for a group of requests: each of them waits for this round trip.
      if (members > 1) this.roundTrips += members - 1
      // Registered before the caller's own await, so it runs first when the answer comes.
      const answered = () => {
        state.unanswered--
      }
      answer.then(answered, answered)
      return answer
    }
    const counted: SqlTransaction = {
      dialect: tx.dialect,
      query: (sql, params) => sent(() => tx.query(sql, params), requestsIn(params)),
      execute: (sql, params) => sent(() => tx.execute(sql, params), requestsIn(params)),
      transaction: (fn) => {
        this.statements += 2 // SAVEPOINT and RELEASE
        this.roundTrips += 2
        return tx.transaction((inner) =>
          fn(this.#counted(inner, { finished: false, unanswered: 0 })),
        )
      },
    }
    const finish = tx.finish?.bind(tx)
    if (finish !== undefined) {
      counted.finish = (sql, params) => {
        // COMMIT was counted with the transaction; it travels with this statement.
        state.finished = true
        return sent(() => finish(sql, params), requestsIn(params))
      }
    }
    return counted
  }

  close(): Promise<void> {
    return this.#inner.close()
  }
}

function readBody(req: IncomingMessage): Promise<Buffer> {
  return new Promise((resolve, reject) => {
    const chunks: Buffer[] = []
    req.on('data', (chunk: Buffer) => chunks.push(chunk))
    req.on('end', () => resolve(Buffer.concat(chunks)))
    req.on('error', reject)
  })
}

function respond(res: ServerResponse, id: string, amount: number): void {
  res.writeHead(201, { 'content-type': 'application/json', location: `/charges/${id}` })
  res.end(JSON.stringify({ id, amount }))
}

async function listen(
  handler: (req: IncomingMessage, res: ServerResponse) => void,
): Promise<{ url: string; close(): Promise<void> }> {
  const server = createServer({ keepAliveTimeout: 30_000 }, handler)
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve))
  const { port } = server.address() as AddressInfo
  return {
    url: `http://127.0.0.1:${port}`,
    close: () =>
      new Promise<void>((resolve) => {
        server.closeAllConnections()
        server.close(() => resolve())
      }),
  }
}

/** The handler without idempotency: parse, one INSERT, answer. */
function plainServer(db: SqlDriver) {
  return listen((req, res) => {
    void (async () => {
      const { amount } = JSON.parse((await readBody(req)).toString('utf8')) as { amount: number }
      const id = randomUUID()
      await db.execute(insertCharge, [id, amount])
      respond(res, id, amount)
    })().catch((error: unknown) => {
      console.error(error)
      res.writeHead(500).end()
    })
  })
}

/** The handler without idempotency, writing in its own transaction (BEGIN, INSERT, COMMIT). */
function plainTxServer(db: SqlDriver) {
  return listen((req, res) => {
    void (async () => {
      const { amount } = JSON.parse((await readBody(req)).toString('utf8')) as { amount: number }
      const id = randomUUID()
      await db.transaction((tx) => tx.execute(insertCharge, [id, amount]))
      respond(res, id, amount)
    })().catch((error: unknown) => {
      console.error(error)
      res.writeHead(500).end()
    })
  })
}

/**
 * The same handler under the Idempotency-Key protocol, writing through ctx.tx: awaiting its
 * INSERT, or (`deferred`) sending it with ctx.deferWrite.
 */
function idempotentServer(db: SqlDriver, claim: IdempotencyClaimMode, deferred: boolean) {
  const idempotency = createIdempotency({ store: db, claim })
  return listen(
    idempotentHandler({ idempotency }, async (_req, res, { body, idempotency: ctx }) => {
      const { amount } = JSON.parse(body.toString('utf8')) as { amount: number }
      const id = randomUUID()
      if (deferred) ctx!.deferWrite(insertCharge, [id, amount])
      else await ctx!.tx.execute(insertCharge, [id, amount])
      respond(res, id, amount)
    }),
  )
}

interface LoadCase {
  readonly subject: string
  readonly name: string
  readonly pool: Pool
  readonly db: CountingDriver
  /** The key for the next request, or undefined to send none. */
  nextKey(): string | undefined
  /** Called with the key of each successful request. */
  done?(key: string): void
  /** Whether a 2xx answer must be a replay. */
  readonly replay: boolean
  latenciesMs: number[]
  requests: number
  statements: number
  roundTrips: number
  elapsedMs: number
  errors: number
}

/** Drives `c` with `connections` closed loops for `durationMs`; `record` false for warmup. */
async function drive(c: LoadCase, durationMs: number, record: boolean): Promise<void> {
  collectGarbage()
  const statementsBefore = c.db.statements
  const roundTripsBefore = c.db.roundTrips
  const started = performance.now()
  const end = started + durationMs
  let requests = 0
  const latencies: number[] = []
  let errors = 0
  await Promise.all(
    Array.from({ length: connections }, async () => {
      while (performance.now() < end) {
        const key = c.nextKey()
        const headers: Record<string, string> = { 'content-type': 'application/json' }
        if (key !== undefined) headers['idempotency-key'] = key
        const t0 = performance.now()
        const response = await c.pool.request({
          path: '/charges',
          method: 'POST',
          headers,
          body: requestBody,
        })
        await response.body.arrayBuffer()
        const ms = performance.now() - t0
        const replayed = response.headers['idempotent-replayed'] === 'true'
        if (response.statusCode !== 201 || replayed !== c.replay) {
          errors++
          continue
        }
        requests++
        latencies.push(ms)
        if (key !== undefined) c.done?.(key)
      }
    }),
  )
  if (!record) return
  c.elapsedMs += performance.now() - started
  c.requests += requests
  c.statements += c.db.statements - statementsBefore
  c.roundTrips += c.db.roundTrips - roundTripsBefore
  c.errors += errors
  for (const ms of latencies) c.latenciesMs.push(ms)
}

function value(rows: ResultRow[], name: string, metric: string): number {
  const row = rows.find((r) => r.case === name && r.metric === metric)
  if (row === undefined) throw new Error(`no ${metric} for ${name}`)
  return row.value
}

function goals(rows: ResultRow[], stores: readonly string[]): string[] {
  const lines: string[] = []
  for (const store of ['sqlite', 'postgres'] as const) {
    for (const mode of ['', 'in-tx-'] as const) {
      for (const write of ['', 'deferred-'] as const) {
        if (stores.includes(store)) lines.push(...goalsOf(rows, store, mode, write))
      }
    }
  }
  return lines
}

/** The three goal lines of one claim mode and write style. */
function goalsOf(
  rows: ResultRow[],
  store: 'sqlite' | 'postgres',
  mode: '' | 'in-tx-',
  write: '' | 'deferred-',
): string[] {
  const verdict = (ok: boolean) => (ok ? 'met' : 'MISSED')
  const base = `no-idempotency-${store}`
  const baseTx = `no-idempotency-tx-${store}`
  const first = `idempotency-${mode}${write}${store}`
  const replay = `replay-${mode}${store}`
  const claimLabel = mode === '' ? "'leased'" : "'in-transaction'"
  const label = `${store} (claim: ${claimLabel}, ${write === '' ? 'awaited write' : 'deferWrite'})`
  // Round trips on PostgreSQL; SQLite has none (it runs in-process), so statements there.
  const unit = store === 'postgres' ? 'round trips' : 'statements'
  const statements = (name: string) =>
    value(rows, name, store === 'postgres' ? 'round_trips_per_request' : 'statements_per_request')
  const rps = (name: string) => value(rows, name, 'requests_per_s')
  const extra = statements(first) - statements(base)
  const extraTx = statements(first) - statements(baseTx)
  const ratio = rps(first) / rps(base)
  const ratioTx = rps(first) / rps(baseTx)
  const speedup = value(rows, replay, 'requests_per_s') / value(rows, first, 'requests_per_s')
  const p50Speedup = value(rows, first, 'p50_ms') / value(rows, replay, 'p50_ms')
  return [
    `goal ${label}: <= 1 extra round trip per new key: +${extra.toFixed(2)} ${unit} (${statements(first).toFixed(2)} vs ${statements(base).toFixed(2)}; +${extraTx.toFixed(2)} over the handler in its own transaction) -> ${verdict(extra <= 1.001)}`,
    `goal ${label}: >= 0.7x throughput without idempotency: ${ratio.toFixed(2)}x (${ratioTx.toFixed(2)}x of the handler in its own transaction) -> ${verdict(ratio >= 0.7)}`,
    `goal ${label}: replays >= 2x faster than first executions: ${speedup.toFixed(2)}x requests/s, ${p50Speedup.toFixed(2)}x p50 -> ${verdict(speedup >= 2)}`,
  ]
}

/** Runs the idempotency benchmark. */
export async function main(args: string[]): Promise<void> {
  const began = Date.now()
  const durationArg = args.find((a) => a.startsWith('--duration-ms='))
  const durationMs = durationArg === undefined ? 5_000 : Number(durationArg.split('=')[1])
  const storesArg = args.find((a) => a.startsWith('--stores='))
  const stores = (storesArg?.split('=')[1]?.split(',') ?? ['sqlite', 'postgres']).filter(
    (s): s is 'sqlite' | 'postgres' => s === 'sqlite' || s === 'postgres',
  )
  const log = (line: string) => process.stderr.write(`${line}\n`)
  log('starting PostgreSQL 15 (fsync on) ...')
  const postgres = stores.includes('postgres')
    ? await startPostgres({ watchPid: process.pid, log })
    : { url: '', stop: async () => {} }
  const dir = mkdtempSync(join(tmpdir(), 'breakwater-bench-'))
  const toClose: Array<{ close(): Promise<void> }> = []
  try {
    const cases: LoadCase[] = []
    for (const store of stores) {
      const url = store === 'sqlite' ? `sqlite:${join(dir, 'bench.db')}` : postgres.url
      const raw = await openDatabase(url, { postgres: { maxConnections: 16 } })
      toClose.push(raw)
      await migrateIdempotency(raw)
      await raw.execute('CREATE TABLE bench_charges (id TEXT PRIMARY KEY, amount INTEGER NOT NULL)')
      // One counting driver per case, so each case's statements are its own.
      const plainDb = new CountingDriver(raw)
      const plainTxDb = new CountingDriver(raw)
      const plain = await plainServer(plainDb)
      const plainTx = await plainTxServer(plainTxDb)
      toClose.push(plain, plainTx)
      const plainPool = new Pool(plain.url, { connections, pipelining: 1 })
      const plainTxPool = new Pool(plainTx.url, { connections, pipelining: 1 })
      toClose.push(plainPool, plainTxPool)
      const fresh = {
        latenciesMs: [],
        requests: 0,
        statements: 0,
        roundTrips: 0,
        elapsedMs: 0,
        errors: 0,
      }
      cases.push(
        {
          subject: 'node:http',
          name: `no-idempotency-${store}`,
          pool: plainPool,
          db: plainDb,
          nextKey: () => undefined,
          replay: false,
          ...structuredClone(fresh),
        },
        {
          subject: 'node:http',
          name: `no-idempotency-tx-${store}`,
          pool: plainTxPool,
          db: plainTxDb,
          nextKey: () => undefined,
          replay: false,
          ...structuredClone(fresh),
        },
      )
      for (const claim of ['leased', 'in-transaction'] as const) {
        const mode = claim === 'leased' ? '' : 'in-tx-'
        const deferredDb = new CountingDriver(raw)
        const deferred = await idempotentServer(deferredDb, claim, true)
        toClose.push(deferred)
        const deferredPool = new Pool(deferred.url, { connections, pipelining: 1 })
        toClose.push(deferredPool)
        let deferredCounter = 0
        cases.push({
          subject: 'breakwater',
          name: `idempotency-${mode}deferred-${store}`,
          pool: deferredPool,
          db: deferredDb,
          nextKey: () => `bench-${mode}deferred-${store}-${deferredCounter++}`,
          replay: false,
          ...structuredClone(fresh),
        })
        const idemDb = new CountingDriver(raw)
        const idem = await idempotentServer(idemDb, claim, false)
        toClose.push(idem)
        const idemPool = new Pool(idem.url, { connections, pipelining: 1 })
        toClose.push(idemPool)
        const completed: string[] = []
        let counter = 0
        let replayAt = 0
        cases.push(
          {
            subject: 'breakwater',
            name: `idempotency-${mode}${store}`,
            pool: idemPool,
            db: idemDb,
            nextKey: () => `bench-${mode}${store}-${counter++}`,
            done: (key) => completed.push(key),
            replay: false,
            ...structuredClone(fresh),
          },
          {
            subject: 'breakwater',
            name: `replay-${mode}${store}`,
            pool: idemPool,
            db: idemDb,
            nextKey: () => completed[replayAt++ % completed.length],
            replay: true,
            ...structuredClone(fresh),
          },
        )
      }
    }
    // `--cases=a,b` drives only the named cases (for profiling one path); nothing is written.
    const casesArg = args
      .find((a) => a.startsWith('--cases='))
      ?.split('=')[1]
      ?.split(',')
    if (casesArg !== undefined) {
      const wanted = new Set(casesArg)
      const unknown = casesArg.filter((name) => !cases.some((c) => c.name === name))
      if (unknown.length > 0) {
        throw new Error(
          `--cases: unknown case ${unknown.join(', ')} (cases for --stores=${stores.join(',')}: ${cases.map((c) => c.name).join(', ')})`,
        )
      }
      for (let i = cases.length - 1; i >= 0; i--)
        if (!wanted.has(cases[i]!.name)) cases.splice(i, 1)
    }
    for (const c of cases) {
      log(`warmup ${c.name}`)
      await drive(c, warmupMs, false)
    }
    for (let round = 0; round < rounds; round++) {
      for (const c of cases) {
        log(`round ${round + 1}/${rounds} ${c.name}`)
        await drive(c, durationMs / rounds, true)
      }
    }
    const rows: ResultRow[] = []
    for (const c of cases) {
      if (c.errors > 0) log(`warning: ${c.name} had ${c.errors} unexpected answers`)
      rows.push(
        {
          subject: c.subject,
          case: c.name,
          metric: 'requests_per_s',
          value: c.requests / (c.elapsedMs / 1000),
        },
        {
          subject: c.subject,
          case: c.name,
          metric: 'p50_ms',
          value: percentile(c.latenciesMs, 50),
        },
        {
          subject: c.subject,
          case: c.name,
          metric: 'p99_ms',
          value: percentile(c.latenciesMs, 99),
        },
        {
          subject: c.subject,
          case: c.name,
          metric: 'statements_per_request',
          value: c.statements / c.requests,
        },
      )
      if (c.db.dialect === 'postgres') {
        rows.push({
          subject: c.subject,
          case: c.name,
          metric: 'round_trips_per_request',
          value: c.roundTrips / c.requests,
        })
      }
    }
    if (stores.length === 2 && casesArg === undefined) writeResults('idempotency', rows)
    else
      for (const row of rows)
        console.log(`${row.case.padEnd(28)} ${row.metric.padEnd(24)} ${row.value.toFixed(2)}`)
    if (casesArg === undefined) for (const line of goals(rows, stores)) console.log(line)
  } finally {
    for (const resource of toClose.reverse()) await resource.close().catch(() => {})
    await postgres.stop()
    rmSync(dir, { recursive: true, force: true })
  }
  console.log(`took ${((Date.now() - began) / 1000).toFixed(0)} s`)
}
