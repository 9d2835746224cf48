// `npm run bench -- eventstore`: breakwater's event store on SQLite and PostgreSQL, side by side
// with Emmett's PostgreSQL event store (@event-driven-io/emmett-postgresql 0.42.0) on the same
// PostgreSQL database, in one run. Writes bench/results/eventstore.json.
//
// Cases (each subject appends with an optimistic expected version, as a command handler would):
// - append 1x1:   one event per append, one stream, appends one after the other.
// - append 1x16:  one event per append, 16 streams appended to concurrently (one writer each).
// - append 10x1, append 10x16: the same with 10-event batches (figures in events/s).
// - readAll 10k:  the first 10,000 events of the log read in pages of 1,000
//   (Emmett: its readMessagesBatch, the reader its consumers use).
// - readStream 10k: one 10,000-event stream read in one call.
// pg-plain-insert is the ceiling: the same rows in one plain INSERT per commit (the row
// `ratio plain/emmett` says how far ahead of Emmett that ceiling is in the same run). A
// sequential case (1x1, 10x1) is one WAL flush per append for every subject, so under disk
// contention from the shared machine all of them converge and no ratio can exceed that one.
// breakwater's concurrent cases (1x16, 10x16) go through its group commit.
// Every case runs in rounds, subjects interleaved within each round (in a balanced order: see
// balancedOrder) so that noise from the shared machine hits them alike; the figure is the
// median round. PostgreSQL runs with fsync on (scripts/services.mjs), so a sequential append
// waits for one WAL flush.
//
// BREAKWATER_SCALE=full runs more rounds and longer samples.

import { mkdtempSync, rmSync } from 'node:fs'
import { createRequire } from 'node:module'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { startPostgres } from '../scripts/services.mjs'
import type { EventStore } from '../src/cqrs/index.js'
import type { SqlDriver } from '../src/stores/index.js'
import { built } from './lib/built.js'
import { balancedOrder, median, type ResultRow, writeResults } from './lib/harness.js'

const { createEventStore, migrateCqrs } =
  await built<typeof import('../src/cqrs/index.js')>('cqrs/index.js')
const { createPostgresDriver, createSqliteDriver } =
  await built<typeof import('../src/stores/index.js')>('stores/index.js')

const full = process.env.BREAKWATER_SCALE === 'full'
const rounds = full ? 9 : 5
const concurrency = 16

/** One event store under test. */
interface Subject {
  readonly name: string
  /** Appends `count` events to `stream` at `expected` (its version); resolves to the new version. */
  append(stream: string, count: number, expected: number): Promise<number>
  /** Reads the first 10,000 events of the log in pages of 1,000; resolves to the count. */
  readAll?(): Promise<number>
  /** Reads one stream whole; resolves to the number of events. */
  readStream?(stream: string): Promise<number>
  close(): Promise<void>
}

function events(count: number, seq: number) {
  return Array.from({ length: count }, (_, i) => ({
    type: 'counter-incremented',
    data: { by: 1, seq: seq + i, note: 'benchmark event' },
  }))
}

function breakwaterSubject(name: string, db: SqlDriver, store: EventStore): Subject {
  return {
    name,
    async append(stream, count, expected) {
      const result = await store.append(stream, events(count, expected), {
        expectedVersion: expected,
      })
      return result.version
    },
    async readAll() {
      let total = 0
      let from = 0
      for (;;) {
        const page = await store.readAll({ fromPosition: from, limit: 1000 })
        total += page.length
        if (page.length < 1000 || total >= readSize) return total
        from = page[page.length - 1]!.position + 1
      }
    },
    async readStream(stream) {
      return (await store.readStream(stream)).events.length
    },
    close: () => db.close(),
  }
}

interface EmmettModule {
  getPostgreSQLEventStore(
    connectionString: string,
    options?: Record<string, unknown>,
  ): {
    appendToStream(
      stream: string,
      events: unknown[],
      options?: { expectedStreamVersion?: bigint },
    ): Promise<{ nextExpectedStreamVersion: bigint }>
    readStream(stream: string): Promise<{ events: unknown[] }>
    schema: { migrate(): Promise<void> }
    close(): Promise<void>
  }
  readMessagesBatch(
    execute: unknown,
    options: { from: bigint; batchSize: number },
  ): Promise<{ messages: { metadata: { globalPosition: bigint } }[] }>
}

async function loadEmmett(): Promise<
  | { emmett: EmmettModule; dumbo: (o: unknown) => { execute: unknown; close(): Promise<void> } }
  | string
> {
  try {
    const emmett = (await import('@event-driven-io/emmett-postgresql')) as unknown as EmmettModule
    const dumboModule = (await import('@event-driven-io/dumbo')) as unknown as {
      dumbo: (o: unknown) => { execute: unknown; close(): Promise<void> }
    }
    return { emmett, dumbo: dumboModule.dumbo }
  } catch (error) {
    return `not installed (${error instanceof Error ? error.message.split('\n')[0] : String(error)})`
  }
}

async function emmettSubject(
  loaded: {
    emmett: EmmettModule
    dumbo: (o: unknown) => { execute: unknown; close(): Promise<void> }
  },
  url: string,
): Promise<Subject> {
  const require = createRequire(import.meta.url)
  const pg = require('pg') as { Pool: new (o: Record<string, unknown>) => { end(): Promise<void> } }
  // Emmett's default pool has 10 connections; 16 gives it one per concurrent stream, as
  // breakwater gets.
  const pool = new pg.Pool({ connectionString: url, max: concurrency })
  const store = loaded.emmett.getPostgreSQLEventStore(url, { connectionOptions: { pool } })
  await store.schema.migrate()
  const reader = loaded.dumbo({ connectionString: url, pool })
  return {
    name: 'emmett-postgres',
    async append(stream, count, expected) {
      const result = await store.appendToStream(
        stream,
        events(count, expected),
        expected === 0 ? {} : { expectedStreamVersion: BigInt(expected) },
      )
      return Number(result.nextExpectedStreamVersion)
    },
    async readAll() {
      let total = 0
      let from = 0n
      for (;;) {
        const { messages } = await loaded.emmett.readMessagesBatch(reader.execute, {
          from,
          batchSize: 1000,
        })
        total += messages.length
        if (messages.length < 1000 || total >= readSize) return total
        from = messages[messages.length - 1]!.metadata.globalPosition + 1n
      }
    },
    async readStream(stream) {
      return (await store.readStream(stream)).events.length
    },
    async close() {
      await store.close().catch(() => {})
      await pool.end().catch(() => {})
    },
  }
}

/**
 * The ceiling this machine allows: the same rows inserted by one plain multi-row INSERT per
 * commit (no concurrency check, no positions), through the same pool size.
 */
async function plainInsertSubject(url: string): Promise<Subject> {
  const db = await createPostgresDriver({ connectionString: url, maxConnections: concurrency })
  await db.execute(
    'CREATE TABLE plain_events (id BIGSERIAL PRIMARY KEY, stream_id TEXT NOT NULL, type TEXT NOT NULL, data TEXT NOT NULL)',
  )
  return {
    name: 'pg-plain-insert',
    async append(stream, count, expected) {
      const batch = events(count, expected)
      await db.query(
        'INSERT INTO plain_events (stream_id, type, data) SELECT $1, t, d FROM unnest($2::text[], $3::text[]) AS u(t, d)',
        [stream, batch.map((e) => e.type), batch.map((e) => JSON.stringify(e.data))],
      )
      return expected + count
    },
    close: () => db.close(),
  }
}

/** Runs `appends` appends of `batch` events over `streams` concurrent streams; returns events/s. */
async function measureAppends(
  subject: Subject,
  tag: string,
  batch: number,
  streams: number,
  appends: number,
): Promise<number> {
  const perStream = Math.ceil(appends / streams)
  const start = performance.now()
  await Promise.all(
    Array.from({ length: streams }, async (_, s) => {
      const stream = `${tag}-${s}`
      let version = 0
      for (let i = 0; i < perStream; i++) version = await subject.append(stream, batch, version)
    }),
  )
  const seconds = (performance.now() - start) / 1000
  return (perStream * streams * batch) / seconds
}

const readSize = 10_000

async function seed(subject: Subject, stream: string): Promise<void> {
  let version = 0
  for (let i = 0; i < readSize / 100; i++) version = await subject.append(stream, 100, version)
}

/** Main entry, called by bench/run.ts. */
export async function main(): Promise<void> {
  const emmett = await loadEmmett()
  const pgServer = await startPostgres({ watchPid: process.pid })
  const sqliteDir = mkdtempSync(join(tmpdir(), 'breakwater-bench-'))
  const subjects: Subject[] = []
  const rows: ResultRow[] = []
  try {
    const url = new URL(pgServer.url)
    const admin = await createPostgresDriver({ connectionString: pgServer.url })
    await admin.execute('CREATE DATABASE eventstore_bench')
    await admin.close()
    url.pathname = '/eventstore_bench'
    const pgUrl = url.toString()

    const sqlite = await createSqliteDriver({ filename: join(sqliteDir, 'bench.db') })
    await migrateCqrs(sqlite)
    subjects.push(breakwaterSubject('bw-sqlite', sqlite, createEventStore(sqlite)))
    const postgres = await createPostgresDriver({
      connectionString: pgUrl,
      maxConnections: concurrency,
    })
    await migrateCqrs(postgres)
    subjects.push(breakwaterSubject('bw-postgres', postgres, createEventStore(postgres)))
    subjects.push(await plainInsertSubject(pgUrl))
    if (typeof emmett === 'string') {
      console.log(`emmett-postgres: ${emmett}; its cases are reported as not measured`)
    } else {
      subjects.push(await emmettSubject(emmett, pgUrl))
    }

    const cases = [
      { name: 'append 1x1', batch: 1, streams: 1, appends: full ? 1000 : 300 },
      { name: 'append 1x16', batch: 1, streams: concurrency, appends: full ? 3200 : 1600 },
      { name: 'append 10x1', batch: 10, streams: 1, appends: full ? 600 : 200 },
      { name: 'append 10x16', batch: 10, streams: concurrency, appends: full ? 1600 : 800 },
    ]
    const samples = new Map<string, number[]>()
    const add = (subject: string, name: string, value: number): void => {
      const key = `${subject}\u0000${name}`
      const list = samples.get(key) ?? []
      list.push(value)
      samples.set(key, list)
    }
    for (let round = 0; round < rounds; round++) {
      // A balanced order, so that no subject always runs right after the same neighbour
      // (whose WAL, checkpoints and SQLite syncs land on the same disk).
      const order = balancedOrder(subjects.length, round).map((i) => subjects[i]!)
      for (const c of cases) {
        for (const subject of order) {
          // SQLite is not fsync-bound: give it enough appends for a measurable sample.
          const appends = subject.name === 'bw-sqlite' ? c.appends * 10 : c.appends
          const rate = await measureAppends(
            subject,
            `${subject.name}-${c.name.replace(' ', '-')}-r${round}`,
            c.batch,
            c.streams,
            appends,
          )
          add(subject.name, c.name, rate)
        }
      }
    }
    const readers = subjects.filter((s) => s.readAll !== undefined && s.readStream !== undefined)
    for (const subject of readers) await seed(subject, `read-10k-${subject.name}`)
    // Reads are short: more rounds for a steadier median.
    for (let round = 0; round < rounds * 3; round++) {
      for (const subject of readers) {
        let start = performance.now()
        const all = await subject.readAll!()
        if (all !== readSize) throw new Error(`${subject.name} read ${all} events from the log`)
        add(subject.name, 'readAll 10k', all / ((performance.now() - start) / 1000))
        start = performance.now()
        const count = await subject.readStream!(`read-10k-${subject.name}`)
        if (count !== readSize) throw new Error(`${subject.name} read ${count} events`)
        add(subject.name, 'readStream 10k', count / ((performance.now() - start) / 1000))
      }
    }
    const names = [...cases.map((c) => c.name), 'readAll 10k', 'readStream 10k']
    const allSubjects = ['bw-sqlite', 'bw-postgres', 'emmett-postgres', 'pg-plain-insert']
    for (const name of names) {
      for (const subject of allSubjects) {
        if (subject === 'pg-plain-insert' && name.startsWith('read')) continue
        const values = samples.get(`${subject}\u0000${name}`)
        const metric =
          name.startsWith('read') || name.includes('10x') ? 'events_per_s' : 'appends_per_s'
        // NaN marks a case that was not measured (Emmett not installed).
        rows.push({
          subject,
          case: name,
          metric,
          value: values === undefined ? Number.NaN : median(values),
        })
      }
      const bw = samples.get(`bw-postgres\u0000${name}`)
      const em = samples.get(`emmett-postgres\u0000${name}`)
      if (bw !== undefined && em !== undefined) {
        rows.push({
          subject: 'ratio',
          case: name,
          metric: 'bw_pg/emmett',
          value: median(bw) / median(em),
        })
        // The ceiling of that ratio on this run: one plain autocommit insert per append (the
        // same round trip and WAL flush, no concurrency check) against Emmett.
        const plain = samples.get(`pg-plain-insert\u0000${name}`)
        if (plain !== undefined) {
          rows.push({
            subject: 'ratio',
            case: name,
            metric: 'plain/emmett',
            value: median(plain) / median(em),
          })
        }
      }
    }
  } finally {
    for (const subject of subjects) await subject.close().catch(() => {})
    rmSync(sqliteDir, { recursive: true, force: true })
    await pgServer.stop()
  }
  writeResults('eventstore', rows)
}
