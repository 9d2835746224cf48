// `npm run bench -- saga`: sagas/s and p99 completion latency of a 3-step saga with no-op steps,
// 16 concurrent, on SQLite and on PostgreSQL, side by side with DBOS Transact
// (@dbos-inc/dbos-sdk) running the same 3-step workflow on the same PostgreSQL; then crash
// recovery: a worker process is SIGKILLed inside a step and the time until another worker
// resumes the step is measured (from the kill, and from the dead worker's lease expiry).
// Writes bench/results/saga.json.
//
// Cases:
//   breakwater/run    worker.run(): insert the instance already claimed, run it in-process
//   breakwater/queue  startSaga() from 16 producers; a started worker claims (NOTIFY on
//                     PostgreSQL, 10 ms polls on SQLite) and runs; latency is start -> completed
//   dbos/direct       calling the registered workflow (16 concurrent)
import { type ChildProcess, spawn } from 'node:child_process'
import { rmSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { fileURLToPath } from 'node:url'
import type { SagaEvent } from '../src/saga/index.js'
import type { SqlDriver } from '../src/stores/index.js'
import { built } from './lib/built.js'
import { type ResultRow, writeResults } from './lib/harness.js'

const { createSagaWorker, defineSaga, getSaga, migrateSagas, startSaga } =
  await built<typeof import('../src/saga/index.js')>('saga/index.js')
const { openDatabase } = await built<typeof import('../src/stores/index.js')>('stores/index.js')

const concurrency = 16
const warmupMs = 1_000
const measureMs = Number(process.env.BENCH_SAGA_MS ?? 5_000)
const rounds = Number(process.env.BENCH_SAGA_ROUNDS ?? 3)

const noop = async () => undefined
const saga = defineSaga({
  name: 'bench',
  version: 1,
  steps: [
    { name: 'one', action: noop },
    { name: 'two', action: noop },
    { name: 'three', action: noop },
  ],
})

interface Measured {
  readonly perSecond: number
  readonly p50Ms: number
  readonly p99Ms: number
}

function percentile(sorted: readonly number[], p: number): number {
  if (sorted.length === 0) return Number.NaN
  return sorted[Math.min(sorted.length - 1, Math.floor((p / 100) * sorted.length))]!
}

/**
 * Runs `once` from `concurrency` loops: warmup, then a measured window. The windows are read
 * off the clock inside the loops, not from timers: on SQLite a saga of no-op steps completes in
 * promise jobs alone, so a timer would never get to fire while the loops run.
 */
async function closedLoop(once: () => Promise<void>): Promise<Measured> {
  const warmEnd = performance.now() + warmupMs
  const end = warmEnd + measureMs
  const latencies: number[] = []
  let yields = 0
  const loop = async () => {
    for (;;) {
      const start = performance.now()
      if (start >= end) return
      await once()
      if (start >= warmEnd) latencies.push(performance.now() - start)
      // Let I/O callbacks and timers (the workers' polls) run now and then.
      if (++yields % 64 === 0) await new Promise((resolve) => setImmediate(resolve))
    }
  }
  await Promise.all(Array.from({ length: concurrency }, loop))
  latencies.sort((a, b) => a - b)
  const completed = latencies.length
  return {
    perSecond: (completed / measureMs) * 1_000,
    p50Ms: percentile(latencies, 50),
    p99Ms: percentile(latencies, 99),
  }
}

interface Subject {
  readonly subject: string
  readonly case: string
  setup(): Promise<() => Promise<void>>
  teardown(): Promise<void>
}

async function freshSqlite(name: string): Promise<{ db: SqlDriver; url: string; drop(): void }> {
  const file = join(tmpdir(), `breakwater-bench-${name}-${process.pid}.db`)
  for (const f of [file, `${file}-wal`, `${file}-shm`]) rmSync(f, { force: true })
  const db = await openDatabase(`sqlite:${file}`)
  await migrateSagas(db)
  return {
    db,
    url: `sqlite:${file}`,
    drop: () => {
      for (const f of [file, `${file}-wal`, `${file}-shm`]) rmSync(f, { force: true })
    },
  }
}

async function createDatabase(adminUrl: string, name: string): Promise<string> {
  const admin = await openDatabase(adminUrl)
  try {
    await admin.execute(`DROP DATABASE IF EXISTS ${name} WITH (FORCE)`)
    await admin.execute(`CREATE DATABASE ${name}`)
  } finally {
    await admin.close()
  }
  const url = new URL(adminUrl)
  url.pathname = `/${name}`
  return url.toString()
}

function runSubject(label: string, open: () => Promise<SqlDriver>): Subject {
  let db: SqlDriver | undefined
  return {
    subject: 'breakwater',
    case: `${label}/run`,
    async setup() {
      db = await open()
      const worker = createSagaWorker({ db, sagas: [saga], concurrency })
      return async () => {
        const outcome = await worker.run(saga, {})
        if (outcome.status !== 'completed') throw new Error(`saga ended ${outcome.status}`)
      }
    },
    async teardown() {
      await db?.close()
    },
  }
}

function queueSubject(label: string, open: () => Promise<SqlDriver>): Subject {
  let db: SqlDriver | undefined
  let stopWorker: (() => Promise<void>) | undefined
  return {
    subject: 'breakwater',
    case: `${label}/queue`,
    async setup() {
      db = await open()
      const worker = createSagaWorker({
        db,
        sagas: [saga],
        concurrency,
        pollIntervalMs: 10,
        keepAlive: false,
      })
      const waiting = new Map<string, () => void>()
      worker.events.on((e: SagaEvent) => {
        if (e.type === 'completed' && e.sagaId !== undefined) waiting.get(e.sagaId)?.()
      })
      await worker.start()
      stopWorker = () => worker.stop()
      const producer = db
      return async () => {
        let resolve!: () => void
        const done = new Promise<void>((r) => {
          resolve = r
        })
        const id = crypto.randomUUID()
        waiting.set(id, resolve)
        await startSaga(producer, saga, {}, { id })
        await done
        waiting.delete(id)
      }
    },
    async teardown() {
      await stopWorker?.()
      await db?.close()
    },
  }
}

interface DbosModule {
  DBOS: {
    setConfig(config: Record<string, unknown>): void
    launch(): Promise<void>
    shutdown(): Promise<void>
    registerStep<A extends unknown[], R>(
      fn: (...args: A) => Promise<R>,
      config: { name: string },
    ): (...args: A) => Promise<R>
    registerWorkflow<A extends unknown[], R>(
      fn: (...args: A) => Promise<R>,
      config: { name: string },
    ): (...args: A) => Promise<R>
  }
}

function dbosSubject(systemDatabaseUrl: () => string): Subject {
  let dbos: DbosModule['DBOS'] | undefined
  return {
    subject: 'dbos',
    case: 'postgres/direct',
    async setup() {
      ;({ DBOS: dbos } = (await import('@dbos-inc/dbos-sdk')) as unknown as DbosModule)
      dbos.setConfig({
        name: 'breakwater-bench',
        systemDatabaseUrl: systemDatabaseUrl(),
        systemDatabasePoolSize: concurrency,
        logLevel: 'error',
        runAdminServer: false,
      })
      const one = dbos.registerStep(noop, { name: 'one' })
      const two = dbos.registerStep(noop, { name: 'two' })
      const three = dbos.registerStep(noop, { name: 'three' })
      const workflow = dbos.registerWorkflow(
        async () => {
          await one()
          await two()
          await three()
        },
        { name: 'bench' },
      )
      await dbos.launch()
      return async () => {
        await workflow()
      }
    },
    async teardown() {
      await dbos?.shutdown()
    },
  }
}

// ---- crash recovery ------------------------------------------------------------------------

const recoverySaga = defineSaga({
  name: 'recovery',
  version: 1,
  steps: [
    {
      name: 'hold',
      action: async (ctx) => {
        // In the child, the step never ends: the process is killed inside it.
        if (process.env.BENCH_SAGA_CHILD === '1') await new Promise(() => {})
        return { resumedBy: ctx.attempt }
      },
    },
  ],
})

/** The child side: a worker with default settings that runs `recovery` sagas. */
async function crashChild(url: string): Promise<void> {
  const db = await openDatabase(url)
  const worker = createSagaWorker({ db, sagas: [recoverySaga], workerId: `child-${process.pid}` })
  worker.events.on((e) => {
    if (e.type === 'step-started') process.stdout.write(`${JSON.stringify(e)}\n`)
  })
  await worker.start()
}

async function measureRecovery(
  url: string,
  runs: number,
): Promise<{ fromKill: number[]; fromExpiry: number[] }> {
  const db = await openDatabase(url)
  await migrateSagas(db)
  const fromKill: number[] = []
  const fromExpiry: number[] = []
  const runFile = fileURLToPath(new URL('./run.ts', import.meta.url))
  for (let i = 0; i < runs; i++) {
    const { id } = await startSaga(db, recoverySaga, {})
    const child: ChildProcess = spawn(
      process.execPath,
      ['--import', 'tsx', runFile, 'saga', '--crash-child', url],
      { env: { ...process.env, BENCH_SAGA_CHILD: '1' }, stdio: ['ignore', 'pipe', 'inherit'] },
    )
    const exited = new Promise((resolve) => child.once('exit', resolve))
    await new Promise<void>((resolve) => {
      child.stdout!.on('data', (chunk: Buffer) => {
        if (chunk.toString().includes(id)) resolve()
      })
    })
    // Let a renewal or two happen, as in a step that has been running for a while.
    await new Promise((resolve) => setTimeout(resolve, 300 + Math.random() * 300))
    // The survivor, started once the child holds the lease: default lease (800 ms, renewed
    // every 266 ms) and poll interval (100 ms).
    const survivor = createSagaWorker({ db, sagas: [recoverySaga] })
    let recovery: SagaEvent | undefined
    const resumedAt = new Promise<number>((resolve) => {
      survivor.events.on((e) => {
        if (e.type === 'recovered' && e.sagaId === id) recovery = e
        if (e.type === 'step-started' && e.sagaId === id) resolve(performance.now())
      })
    })
    await survivor.start()
    const killedAt = performance.now()
    child.kill('SIGKILL')
    const at = await resumedAt
    fromKill.push(at - killedAt)
    console.log(`  run ${i + 1}: resumed ${(at - killedAt).toFixed(0)} ms after the kill`)
    if (recovery?.recoveryMs !== undefined) fromExpiry.push(recovery.recoveryMs)
    await exited
    while ((await getSaga(db, id))?.status !== 'completed')
      await new Promise((r) => setTimeout(r, 10))
    await survivor.stop()
  }
  await db.close()
  return { fromKill, fromExpiry }
}

// ---- main ----------------------------------------------------------------------------------

export async function main(args: string[]): Promise<void> {
  if (args[0] === '--crash-child') return crashChild(args[1]!)
  const { startPostgres } = (await import(
    '../scripts/services.mjs'
  )) as typeof import('../scripts/services.mjs')
  const pg = await startPostgres({ watchPid: process.pid })
  const rows: ResultRow[] = []
  try {
    const bwPgUrl = await createDatabase(pg.url, 'bw_saga_bench')
    const dbosUrl = await createDatabase(pg.url, 'dbos_saga_bench')
    const sqlite = await freshSqlite('saga')
    await sqlite.db.close()
    const openPg = async () => {
      const db = await openDatabase(bwPgUrl, { postgres: { maxConnections: concurrency } })
      await migrateSagas(db)
      return db
    }
    const openSqlite = () => openDatabase(sqlite.url)

    let dbosAvailable = true
    try {
      await import('@dbos-inc/dbos-sdk')
    } catch {
      dbosAvailable = false
    }
    const subjects: Subject[] = [
      runSubject('sqlite', openSqlite),
      queueSubject('sqlite', openSqlite),
      runSubject('postgres', openPg),
      queueSubject('postgres', openPg),
    ]
    const results = new Map<string, Measured[]>()
    // DBOS keeps process-wide state: launched once, measured in the same rounds.
    const dbos = dbosAvailable ? dbosSubject(() => dbosUrl) : undefined
    const dbosRun = dbos === undefined ? undefined : await dbos.setup()
    for (let round = 0; round < rounds; round++) {
      for (const s of subjects) {
        const once = await s.setup()
        const m = await closedLoop(once)
        await s.teardown()
        const key = `${s.subject} ${s.case}`
        results.set(key, [...(results.get(key) ?? []), m])
        console.log(
          `round ${round + 1}  ${key.padEnd(28)} ${m.perSecond.toFixed(0)}/s  p99 ${m.p99Ms.toFixed(1)} ms`,
        )
      }
      if (dbos !== undefined && dbosRun !== undefined) {
        const m = await closedLoop(dbosRun)
        const key = `${dbos.subject} ${dbos.case}`
        results.set(key, [...(results.get(key) ?? []), m])
        console.log(
          `round ${round + 1}  ${key.padEnd(28)} ${m.perSecond.toFixed(0)}/s  p99 ${m.p99Ms.toFixed(1)} ms`,
        )
      }
    }
    console.log('stopping DBOS')
    await dbos?.teardown()
    for (const [key, ms] of results) {
      const [subject, kase] = key.split(' ') as [string, string]
      // The median round by throughput, with its own latencies.
      const median = [...ms].sort((a, b) => a.perSecond - b.perSecond)[Math.floor(ms.length / 2)]!
      rows.push({ subject, case: kase, metric: 'sagas_per_s', value: median.perSecond })
      rows.push({ subject, case: kase, metric: 'p50_ms', value: median.p50Ms })
      rows.push({ subject, case: kase, metric: 'p99_ms', value: median.p99Ms })
    }
    if (!dbosAvailable) {
      // Not measured: @dbos-inc/dbos-sdk is not installed (NaN marks the missing figure).
      rows.push({
        subject: 'dbos',
        case: 'postgres/direct (NOT MEASURED: not installed)',
        metric: 'sagas_per_s',
        value: Number.NaN,
      })
    }
    const dbosRate = rows.find((r) => r.subject === 'dbos' && r.metric === 'sagas_per_s')?.value
    if (dbosRate !== undefined && Number.isFinite(dbosRate)) {
      for (const r of rows.filter(
        (r) =>
          r.subject === 'breakwater' && r.case.startsWith('postgres') && r.metric === 'sagas_per_s',
      )) {
        rows.push({
          subject: 'breakwater',
          case: r.case,
          metric: 'x_dbos_throughput',
          value: r.value / dbosRate,
        })
      }
    }

    for (const [label, url] of [
      ['postgres', bwPgUrl],
      ['sqlite', sqlite.url],
    ] as const) {
      console.log(`crash recovery on ${label}`)
      const { fromKill, fromExpiry } = await measureRecovery(
        url,
        Number(process.env.BENCH_SAGA_CRASHES ?? 8),
      )
      fromKill.sort((a, b) => a - b)
      fromExpiry.sort((a, b) => a - b)
      rows.push({
        subject: 'breakwater',
        case: `${label}/recovery`,
        metric: 'kill_to_resume_p50_ms',
        value: percentile(fromKill, 50),
      })
      rows.push({
        subject: 'breakwater',
        case: `${label}/recovery`,
        metric: 'kill_to_resume_max_ms',
        value: fromKill.at(-1)!,
      })
      rows.push({
        subject: 'breakwater',
        case: `${label}/recovery`,
        metric: 'expiry_to_resume_p50_ms',
        value: percentile(fromExpiry, 50),
      })
      rows.push({
        subject: 'breakwater',
        case: `${label}/recovery`,
        metric: 'expiry_to_resume_max_ms',
        value: fromExpiry.at(-1)!,
      })
    }
    sqlite.drop()
  } finally {
    await pg.stop()
  }
  writeResults('saga', rows)
}
