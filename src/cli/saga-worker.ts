import { isAbsolute, resolve } from 'node:path'
import { pathToFileURL } from 'node:url'
import { maxTimerDelayMs } from '../core/clock.js'
import {
  createJsonLogger,
  createMetricsRegistry,
  type Logger,
  type LogThreshold,
} from '../observability/index.js'
import {
  createSagaWorker,
  type ErrorInfo,
  type SagaDefinition,
  type SagaWorker,
  type SagaWorkerMetrics,
  sagaCrashAtFromEnv,
  sagaMigrations,
} from '../saga/index.js'
import { sagaEventsTable, sagaTable } from '../saga/sql.js'
import type { SqlDriver } from '../stores/index.js'
import { visibleStatOf } from '../stores/sqlite-path.js'
import {
  type LongRunningCommandDeps,
  openServiceDatabase,
  requireMigrations,
  requireWrites,
  runLongRunningCommand,
  serveMetrics,
} from './long-running.js'
import {
  databaseUrl,
  integerFlag,
  logLevelFlag,
  metricsFlags,
  readFlags,
  StartupError,
} from './process-support.js'
import { messageOf, oneLine, UsageError, wantsHelp } from './usage.js'

/**
 * What `sagaWorkerCommand` needs besides its arguments; `BREAKWATER_DB_URL` and
 * `BREAKWATER_CRASH_AT` come from `env`.
 */
export type SagaWorkerCommandDeps = LongRunningCommandDeps

const defaultDb = 'sqlite:./.breakwater/breakwater.db'

const usage = `usage: breakwater saga worker --module <file> [options]

Runs the sagas that a module defines until SIGTERM or SIGINT; then each instance in hand
finishes the step it is running and is given back for another worker, and the process exits 0.
SIGHUP is logged and ignored (nothing to reload).
Logs JSON lines to stdout. Run \`breakwater migrate --db <url>\` first.

options:
  --module <file>            an ES or CommonJS module that exports \`sagas\`, the
                             definitions to run (defineSaga), as an array (or as its
                             default export, module.exports in CommonJS)
  --db <url>                 sqlite:<file> or postgres://user@host/db (default ${defaultDb})
  --metrics-port <n>         serve Prometheus /metrics and /healthz on this port (0: any free
                             port, logged at start; default: no server)
  --metrics-host <host>      the metrics server's address, with --metrics-port (default
                             127.0.0.1)
  --concurrency <n>          instances run at once, 1-10000 (default 16)
  --lease-ms <n>             how long a claimed instance stays this worker's (default 800)
  --poll-interval-ms <n>     how often an idle worker looks for work (default 100)
  --worker-id <id>           the lease owner's name (default host:pid:random)
  --drain-timeout-ms <n>     how long a graceful stop may take (default 30000); a step still
                             running a tenth of it (at most 2 s) before the end is abandoned
                             to another worker, and the process exits 1
  --log-level <level>        debug, info (default), warn, error or silent

environment:
  BREAKWATER_DB_URL          used when --db is not given (URLs with passwords belong here)
  BREAKWATER_CRASH_AT        saga:<fault point>[:<step>][:<n>]: SIGKILL itself there (crash tests)
`

interface WorkerArgs {
  readonly db: string
  readonly module: string
  readonly metricsPort: number | undefined
  readonly metricsHost: string
  readonly concurrency: number | undefined
  readonly leaseMs: number | undefined
  readonly pollIntervalMs: number | undefined
  readonly workerId: string | undefined
  readonly drainTimeoutMs: number
  readonly logLevel: LogThreshold
}

const valueFlags = new Set([
  '--module',
  '--db',
  '--metrics-port',
  '--metrics-host',
  '--concurrency',
  '--lease-ms',
  '--poll-interval-ms',
  '--worker-id',
  '--drain-timeout-ms',
  '--log-level',
])

function parse(
  args: readonly string[],
  env: Readonly<Record<string, string | undefined>>,
): WorkerArgs {
  const { values } = readFlags(args, valueFlags)
  const module = values.get('--module')
  if (module === undefined) throw new UsageError('--module <file> is required')
  const db = databaseUrl(values, env, defaultDb)
  const logLevel = logLevelFlag(values.get('--log-level'))
  const metrics = metricsFlags(values)
  const workerId = values.get('--worker-id')
  if (workerId !== undefined && !/^[\x21-\x7e]{1,200}$/.test(workerId))
    throw new UsageError('--worker-id must be 1 to 200 visible ASCII characters')
  return {
    db,
    module,
    metricsPort: metrics.port,
    metricsHost: metrics.host,
    concurrency: integerFlag('--concurrency', values.get('--concurrency'), 1, 10_000),
    leaseMs: integerFlag('--lease-ms', values.get('--lease-ms'), 30, maxTimerDelayMs),
    pollIntervalMs: integerFlag(
      '--poll-interval-ms',
      values.get('--poll-interval-ms'),
      1,
      maxTimerDelayMs,
    ),
    workerId,
    drainTimeoutMs:
      integerFlag('--drain-timeout-ms', values.get('--drain-timeout-ms'), 0, maxTimerDelayMs) ??
      30_000,
    logLevel,
  }
}

/**
 * Loads the definitions `--module` exports (here and for `saga list|show --module`). Whether
 * they are valid definitions is left to `createSagaWorker` (or `listSagas`), which names the
 * one at fault. A path that names no file is a bad argument
 * (exit 2, with the usage); a file that fails while it loads (its own code throws, a package it
 * imports is missing, it cannot reach what it connects to at its top level) is a failure to
 * start (exit 1): the arguments were right, and the usage would not help.
 */
export async function loadSagas(
  file: string,
): Promise<readonly SagaDefinition<unknown, unknown>[]> {
  const path = isAbsolute(file) ? file : resolve(process.cwd(), file)
  const stats = visibleStatOf(path)
  if (stats === undefined) throw new UsageError(`--module: cannot load ${path}: no such file`)
  if (!stats.isFile()) throw new UsageError(`--module: cannot load ${path}: not a file`)
  let loaded: Record<string, unknown>
  try {
    loaded = (await import(pathToFileURL(path).href)) as Record<string, unknown>
  } catch (error) {
    throw new StartupError(`--module: ${path} failed while loading: ${messageOf(error)}`)
  }
  const sagas =
    loaded.sagas ??
    (loaded.default as Record<string, unknown> | undefined)?.sagas ??
    (Array.isArray(loaded.default) ? loaded.default : undefined)
  if (!Array.isArray(sagas) || sagas.length === 0)
    throw new UsageError(
      `--module: ${path} must export \`sagas\`, a non-empty array of saga definitions (defineSaga), or export that array as default`,
    )
  return sagas as SagaDefinition<unknown, unknown>[]
}

/** Counters of the worker's metrics, exposed as Prometheus counters (names and help). */
const counters: ReadonlyArray<readonly [keyof SagaWorkerMetrics, string, string]> = [
  ['claimed', 'claimed_total', 'Instances claimed (takeovers included).'],
  ['recovered', 'recovered_total', "Instances taken over after their worker's lease expired."],
  ['stepAttempts', 'step_attempts_total', 'Step attempts started.'],
  ['stepsCompleted', 'steps_completed_total', 'Steps recorded as completed.'],
  ['stepFailures', 'step_failures_total', 'Step attempts that failed.'],
  ['compensations', 'compensations_total', 'Compensations recorded as done.'],
  ['compensationFailures', 'compensation_failures_total', 'Compensation attempts that failed.'],
  ['completed', 'completed_total', 'Instances finished as completed.'],
  ['compensated', 'compensated_total', 'Instances finished as compensated.'],
  ['cancelled', 'cancelled_total', 'Instances finished as cancelled.'],
  ['parked', 'parked_total', 'Instances parked as failed (waiting for an operator).'],
  [
    'leaseLost',
    'lease_lost_total',
    'Writes refused by fencing (another worker owns the instance).',
  ],
  ['errors', 'errors_total', 'Database errors of claims, renewals and writes.'],
]

/** Metrics of the worker process, read from the worker's counters at each scrape. */
function workerMetrics(worker: SagaWorker, db: SqlDriver, log: Logger) {
  const registry = createMetricsRegistry({
    onCollectError: (error) => log.warn('metrics collection failed', { error }),
  })
  const series = counters.map(
    ([key, suffix, help]) =>
      [key, registry.counter({ name: `breakwater_saga_worker_${suffix}`, help })] as const,
  )
  const inFlight = registry.gauge({
    name: 'breakwater_saga_worker_in_flight',
    help: 'Instances in hand right now.',
  })
  const info = registry.gauge({
    name: 'breakwater_saga_worker_info',
    help: 'Identity of this saga worker process.',
    labelNames: ['worker_id', 'dialect'],
  })
  info.set({ worker_id: worker.id, dialect: db.dialect }, 1)
  registry.onCollect(() => {
    const m = worker.metrics()
    // The worker's counters only go up: add what they gained since the last scrape.
    for (const [key, counter] of series) counter.inc(Math.max(0, m[key] - counter.get()))
    inFlight.set(m.inFlight)
  })
  return registry
}

/**
 * How long the worker's own stop waits for the steps in hand, out of `drainTimeoutMs`: a tenth
 * of it (at most 2 s) is left to close the database and the metrics server and log the last
 * line, so that a step that never returns is abandoned (another worker resumes it when its
 * lease runs out) instead of the drain timing out with everything still open.
 */
export function workerStopTimeoutMs(drainTimeoutMs: number): number {
  return drainTimeoutMs - Math.min(2_000, Math.floor(drainTimeoutMs / 10))
}

/** A persisted error in the shape the JSON logger writes an `Error` in. */
function loggedError({ name, message, code, status }: ErrorInfo): Record<string, unknown> {
  return {
    type: name,
    message,
    ...(code === undefined ? {} : { code }),
    ...(status === undefined ? {} : { status }),
  }
}

/**
 * Logs what the worker reports, at levels an operator can filter on; `onAbandoned` is called
 * for each instance the stop gave up on.
 */
function logWorkerEvents(worker: SagaWorker, log: Logger, onAbandoned: () => void): void {
  worker.events.on((event) => {
    const { type, at: _at, worker: _worker, error, ...rest } = event
    // An event's error is the persisted ErrorInfo, `{ name, message, code?, status? }`; every
    // other breakwater log line (createJsonLogger's, the relay's, the proxy's) writes an error
    // as `{ type, message, code, status }`, so it is written in that shape here too: a query or
    // alert on error.type would otherwise never match a saga failure.
    const fields = error === undefined ? rest : { ...rest, error: loggedError(error) }
    switch (type) {
      case 'abandoned':
        // Its step may still be running, and another worker will repeat it once the lease
        // runs out: an operator needs to see it at the default level.
        onAbandoned()
        log.warn(`saga ${type}`, fields)
        return
      case 'step-failed':
      case 'compensation-failed':
      case 'lease-lost':
      case 'definition-missing':
        log.warn(`saga ${type}`, fields)
        return
      case 'parked':
      case 'error':
        log.error(`saga ${type}`, fields)
        return
      case 'completed':
      case 'compensated':
      case 'cancelled':
      case 'recovered':
        log.info(`saga ${type}`, fields)
        return
      default:
        log.debug(`saga ${type}`, fields)
    }
  })
}

/**
 * `breakwater saga worker --module <file>`: runs the sagas a module defines as a process, until
 * SIGTERM or SIGINT, with JSON logs and optional Prometheus metrics. Resolves to the exit code:
 * 0 after a graceful stop, 2 for bad arguments or a module without sagas, 1 when the module
 * fails while it loads, when the database fails, is not migrated, or the drain takes too long.
 *
 * @example
 * ```ts
 * const code = await sagaWorkerCommand(['--module', './dist/sagas.js', '--db', 'postgres://app@db/app'])
 * ```
 */
export async function sagaWorkerCommand(
  args: string[],
  deps: SagaWorkerCommandDeps = {},
): Promise<number> {
  const out = deps.stdout ?? process.stdout
  const err = deps.stderr ?? process.stderr
  const env = deps.env ?? process.env
  if (wantsHelp(args)) {
    out.write(usage)
    return 0
  }
  let parsed: WorkerArgs
  let faults: ReturnType<typeof sagaCrashAtFromEnv>
  try {
    parsed = parse(args, env)
    try {
      faults = sagaCrashAtFromEnv(env.BREAKWATER_CRASH_AT)
    } catch (error) {
      throw new UsageError(messageOf(error))
    }
  } catch (error) {
    if (!(error instanceof UsageError)) throw error
    err.write(`breakwater saga worker: ${oneLine(error.message)}\n\n${usage}`)
    return 2
  }

  const log = createJsonLogger({
    output: out,
    level: parsed.logLevel,
    fields: { service: 'breakwater-saga-worker' },
  })
  return runLongRunningCommand({
    name: 'saga worker',
    log,
    deps,
    drainTimeoutMs: parsed.drainTimeoutMs,
    drainMessage: 'stopping: finishing the steps in hand',
    // A definition createSagaWorker refuses is the module's fault, like a bad argument.
    invalidOptionPrefix: '--module: ',
    usage,
    async start(resources, signal) {
      // Loaded once the signals are handled: an import that takes a while (an app connecting at
      // its top level) must not leave a SIGTERM to its default action, which kills the process.
      const sagas = await loadSagas(parsed.module)
      // Stopped while loading: nothing was started (the signal's reason ends it cleanly).
      signal.throwIfAborted()
      const db = await openServiceDatabase(resources, parsed.db, env, 'the saga worker', signal)
      // The definitions are checked first: a bad module is the user's to fix (exit 2) whatever
      // state the database is in.
      const worker = createSagaWorker({
        db,
        sagas,
        ...(parsed.concurrency === undefined ? {} : { concurrency: parsed.concurrency }),
        ...(parsed.leaseMs === undefined ? {} : { leaseMs: parsed.leaseMs }),
        ...(parsed.pollIntervalMs === undefined ? {} : { pollIntervalMs: parsed.pollIntervalMs }),
        ...(parsed.workerId === undefined ? {} : { workerId: parsed.workerId }),
        ...(faults === undefined ? {} : { faults }),
        ...(deps.clock === undefined ? {} : { clock: deps.clock }),
      })
      await requireMigrations(db, parsed.db, 'saga', sagaMigrations, env)
      // A role that may only read the tables (or a read-only server) would fail every claim for
      // as long as the worker runs: the writes each step makes are tried first, changing nothing.
      await requireWrites(db, parsed.db, [
        `UPDATE ${sagaTable} SET id = id WHERE 1 = 0`,
        // Named columns: PostgreSQL's seq is GENERATED ALWAYS, which refuses a value even here.
        `INSERT INTO ${sagaEventsTable} (saga_id, at, kind) SELECT saga_id, at, kind FROM ${sagaEventsTable} WHERE 1 = 0`,
      ])
      let abandoned = 0
      logWorkerEvents(worker, log, () => abandoned++)
      const registry = workerMetrics(worker, db, log)
      // Bound before the worker starts: a port in use must fail the start before any instance
      // is claimed (a claimed one would be abandoned, its step left running, to the lease).
      // /healthz answers 503 until the worker runs.
      const server = await serveMetrics(resources, {
        port: parsed.metricsPort,
        host: parsed.metricsHost,
        registry,
        health: () => worker.state === 'running',
        log,
      })
      try {
        await worker.start()
      } catch (error) {
        throw new StartupError(`the saga worker could not start: ${messageOf(error)}`)
      }
      resources.add('worker', () =>
        worker.stop({ timeoutMs: workerStopTimeoutMs(parsed.drainTimeoutMs) }),
      )
      log.info('saga worker started', {
        workerId: worker.id,
        db: parsed.db,
        dialect: db.dialect,
        sagas: sagas.map((s) => `${s.name}@${s.version}`),
        ...(server === undefined ? {} : { metrics: `${server.url}/metrics` }),
      })
      return {
        // The worker stops first (each instance in hand finishes its step and is given back);
        // the metrics server keeps answering until then.
        stop: () => resources.closeFirst('worker'),
        stopped() {
          const m = worker.metrics()
          log.info('saga worker stopped', {
            workerId: worker.id,
            completed: m.completed,
            compensated: m.compensated,
            cancelled: m.cancelled,
            parked: m.parked,
            state: worker.state,
          })
        },
        unfinished: () => (abandoned === 0 ? undefined : { drain: 'abandoned', abandoned }),
      }
    },
  })
}
