import { type Clock, systemClock, type TimerHandle } from '../core/clock.js'
import { BreakwaterError } from '../core/errors.js'
import {
  type Logger,
  type LogOutput,
  type MetricsRegistry,
  type MetricsServer,
  redactSecrets,
  startMetricsServer,
} from '../observability/index.js'
import { runUntilSignal, type SignalTarget } from '../process/index.js'
import type { Migration, SqlDriver } from '../stores/index.js'
import {
  badDatabaseArgument,
  databaseUrlSource,
  openExistingDatabase,
} from './existing-database.js'
import { type HeldSignals, runHandedOver } from './held-signals.js'
import { checkMigrated, StartupError } from './process-support.js'
import { maskedUrl, messageOf, oneLine, UsageError } from './usage.js'

// The life of a long-running command (`breakwater relay`, `breakwater saga worker`): start
// what it needs, in order, run until SIGTERM or SIGINT, drain, close everything in reverse,
// and turn the outcome into an exit code. Each command only says what it starts.

/** What a long-running command needs besides its arguments; everything has a default. */
export interface LongRunningCommandDeps {
  /** Receives the JSON log lines. @default process.stdout */
  readonly stdout?: LogOutput
  /** Receives usage errors and fatal errors as plain text. @default process.stderr */
  readonly stderr?: { write(text: string): unknown }
  /** Where `BREAKWATER_*` settings are read. @default process.env */
  readonly env?: Readonly<Record<string, string | undefined>>
  /** Where SIGTERM, SIGINT and SIGHUP (logged and ignored) come from. @default process */
  readonly signals?: SignalTarget
  /**
   * SIGTERM, SIGINT and SIGHUP as held since before the command's modules loaded (main.ts
   * holds them): handed over once its own handlers are on; a SIGTERM or SIGINT held already
   * stops it before it starts (exit 0), a SIGHUP is logged as ignored. @default none held
   */
  readonly held?: HeldSignals
  /**
   * Ends the process when a drain did not finish (timed out, or cut short by a second signal):
   * the service may still hold the process open (a saga step that never returns keeps renewing
   * its lease), and then no other process could take its work over.
   * @default process.exit
   */
  readonly exit?: (code: number) => void
  /** Times the drain (and the service's own bounds, where it has any); for tests. @default systemClock */
  readonly clock?: Clock
}

/** What a starting service holds: closed in reverse order at stop, or when start fails. */
export class ServiceResources {
  readonly #log: Logger
  readonly #held: Array<{ readonly what: string; close(): Promise<void> }> = []

  constructor(log: Logger) {
    this.#log = log
  }

  /** Registers something to close (`what` names it in a warning if closing fails). */
  add(what: string, close: () => Promise<void>): void {
    this.#held.push({ what, close })
  }

  /** Closes the resource registered as `what` now, ahead of the others (the service itself). */
  async closeFirst(what: string): Promise<void> {
    const index = this.#held.findIndex((r) => r.what === what)
    if (index < 0) return
    const [resource] = this.#held.splice(index, 1)
    await resource!.close()
  }

  /** Closes everything still held, last registered first; failures are logged, not thrown. */
  async closeAll(): Promise<void> {
    for (const resource of this.#held.splice(0).reverse()) {
      try {
        await resource.close()
      } catch (error) {
        this.#log.warn(`closing the ${resource.what} failed`, { error })
      }
    }
  }
}

/**
 * Opens the database at `url` for a service (closed with its other resources); a SQLite file
 * must already exist and be migrated (see existing-database.ts). A URL whose path cannot be a
 * database file (a folder) is a {@link UsageError} (exit 2), any other failure a StartupError. `env` holds the
 * `BREAKWATER_DB_URL` the hint to migrate may name; `writer` (`the relay`) names the service in
 * the refusal of a SQLite file this user may not write. When `signal` (the start's) aborts
 * while a PostgreSQL connect is under way, the connect is abandoned and its reason thrown.
 */
export async function openServiceDatabase(
  resources: ServiceResources,
  url: string,
  env: Readonly<Record<string, string | undefined>>,
  writer: string,
  signal?: AbortSignal,
): Promise<SqlDriver> {
  let db: SqlDriver
  try {
    db = await openExistingDatabase(url, env, { writer, ...(signal && { signal }) })
  } catch (error) {
    // Stopped while connecting: the signal's reason ends the start cleanly (exit 0).
    if (signal?.aborted === true && error === signal.reason) throw error
    const bad = badDatabaseArgument(error, databaseUrlSource(url, env))
    if (bad !== undefined) throw new UsageError(bad, { cause: error })
    throw new StartupError(`cannot open ${maskedUrl(url)}: ${messageOf(error)}`)
  }
  resources.add('database', () => db.close())
  return db
}

/**
 * Throws a StartupError unless `capability`'s migrations were applied to `db` (at `url`); `env`
 * holds the `BREAKWATER_DB_URL` the hint to migrate may name.
 */
export async function requireMigrations(
  db: SqlDriver,
  url: string,
  capability: string,
  migrations: readonly Migration[],
  env: Readonly<Record<string, string | undefined>> = {},
): Promise<void> {
  try {
    await checkMigrated(db, capability, migrations, url, env)
  } catch (error) {
    if (error instanceof StartupError) throw error
    throw new StartupError(`cannot read ${maskedUrl(url)}: ${messageOf(error)}`)
  }
}

/**
 * Runs `statements`, writes that change nothing (`UPDATE t SET id = id WHERE 1 = 0`), on `db`
 * (at `url`): a role without the privileges, or a server that takes no writes (a standby), is
 * a StartupError naming what refused, before a service starts that would fail each write.
 */
export async function requireWrites(
  db: SqlDriver,
  url: string,
  statements: readonly string[],
): Promise<void> {
  for (const statement of statements) {
    try {
      await db.execute(statement)
    } catch (error) {
      throw new StartupError(`cannot write ${maskedUrl(url)}: ${messageOf(error)}`)
    }
  }
}

/**
 * Opens the database at `url` and checks that `capability`'s migrations were applied (`env`,
 * `writer` and `signal` as for {@link openServiceDatabase}).
 */
export async function openMigratedDatabase(
  resources: ServiceResources,
  url: string,
  capability: string,
  migrations: readonly Migration[],
  env: Readonly<Record<string, string | undefined>>,
  writer: string,
  signal?: AbortSignal,
): Promise<SqlDriver> {
  const db = await openServiceDatabase(resources, url, env, writer, signal)
  await requireMigrations(db, url, capability, migrations, env)
  return db
}

/** Serves `/metrics` and `/healthz` when a port was given; undefined otherwise. */
export async function serveMetrics(
  resources: ServiceResources,
  options: {
    readonly port: number | undefined
    readonly host: string
    readonly registry: MetricsRegistry
    readonly health: () => boolean
    readonly log: Logger
  },
): Promise<MetricsServer | undefined> {
  if (options.port === undefined) return undefined
  let server: MetricsServer
  try {
    server = await startMetricsServer({
      port: options.port,
      host: options.host,
      registry: options.registry,
      health: options.health,
      onError: (error) => options.log.warn('metrics server error', { error }),
    })
  } catch (error) {
    throw new StartupError(
      `cannot serve metrics on ${options.host}:${options.port}: ${messageOf(error)}`,
    )
  }
  resources.add('metrics server', () => server.close())
  return server
}

/** A started service, as {@link LongRunningCommand.start} returns it. */
export interface StartedService {
  /** Drains the service; the remaining resources are closed after it. */
  stop(): Promise<void>
  /** Called once everything is closed after a stop (for the last log line). */
  stopped?(): void
  /**
   * After `stop()`: what the stop gave up on (the saga worker's abandoned instances), as the
   * fields of the error line, or undefined when it finished everything. When set, the command
   * exits 1 through `exit()` once everything is closed: the work given up on may still hold the
   * process open.
   */
  unfinished?(): Readonly<Record<string, unknown>> | undefined
  /** Settles when the service ends by itself (rejects: it failed). */
  readonly done?: Promise<void>
}

/** One long-running command, as {@link runLongRunningCommand} runs it. */
export interface LongRunningCommand {
  /** Its name in messages: `relay`, `saga worker`. */
  readonly name: string
  readonly log: Logger
  /** Where fatal errors go, signals come from and the process is ended (each with its default). */
  readonly deps: LongRunningCommandDeps
  readonly drainTimeoutMs: number
  /** Logged when the first signal arrives. */
  readonly drainMessage: string
  /** Prefixes the message of an `INVALID_OPTION` error thrown while starting (exit 2). */
  readonly invalidOptionPrefix?: string
  /** Printed after the message of a `UsageError` thrown while starting (exit 2). */
  readonly usage?: string
  /**
   * Starts the service, registering in `resources` what must be closed. `signal` aborts at the
   * first SIGTERM or SIGINT: a start that throws its reason ends the command cleanly (exit 0).
   */
  start(resources: ServiceResources, signal: AbortSignal): Promise<StartedService>
}

/** A start that a signal interrupted and that outlasted the drain timeout (exit 1). */
class StartOutlastedDrain extends Error {}

/**
 * `starting`, bounded once `signal` aborts: if it has not settled `ms` later (on `clock`), the
 * result rejects with {@link StartOutlastedDrain}, and a service it still brings up is stopped.
 * runUntilSignal waits for an interrupted start until a second signal; the drain timeout an
 * operator gave must bound that wait too (a module import or a connect that never ends).
 */
function boundOnceAborted(
  starting: Promise<StartedService & { stop(): Promise<void> }>,
  signal: AbortSignal,
  ms: number,
  clock: Clock,
): Promise<StartedService> {
  return new Promise((resolve, reject) => {
    let timer: TimerHandle | undefined
    let gaveUp = false
    const onAbort = (): void => {
      timer = clock.setTimeout(() => {
        gaveUp = true
        reject(new StartOutlastedDrain())
      }, ms)
    }
    if (signal.aborted) onAbort()
    else signal.addEventListener('abort', onAbort, { once: true })
    starting.then(
      (service) => {
        if (gaveUp) service.stop().catch(() => {})
        else resolve(service)
      },
      (error: unknown) => {
        if (!gaveUp) reject(error)
      },
    )
    void starting
      .catch(() => {})
      .finally(() => {
        signal.removeEventListener('abort', onAbort)
        if (timer !== undefined) clock.clearTimeout(timer)
      })
  })
}

/**
 * Closes what a failed start left open, for at most `ms` (on `clock`); false when that was not
 * enough. What the start had already set going (a relay publishing its batch) must not hold a
 * process that failed to start for longer than its drain timeout: the caller then ends it.
 */
async function closedWithin(
  resources: ServiceResources,
  ms: number,
  clock: Clock,
): Promise<boolean> {
  let timer: TimerHandle | undefined
  try {
    return await Promise.race([
      resources.closeAll().then(() => true),
      new Promise<boolean>((resolve) => {
        timer = clock.setTimeout(() => resolve(false), ms)
      }),
    ])
  } finally {
    if (timer !== undefined) clock.clearTimeout(timer)
  }
}

/**
 * Runs a long-running command until SIGTERM or SIGINT and resolves to its exit code: 0 after a
 * graceful stop; 1 when starting fails (a `StartupError`, its message printed; what the start
 * already opened is closed within `drainTimeoutMs`, or `exit(1)` ends the process), when the drain
 * outlasts `drainTimeoutMs` or a second signal cuts it short, also when the signal came while
 * the service was still starting (then `exit(1)` ends the process at once, whatever still holds
 * it open), when the service's stop gave up on some work (its
 * `unfinished()`; `exit(1)` too, once everything is closed), when the service ends by itself,
 * or when it fails; 2
 * when starting throws an `INVALID_OPTION` error (a configuration fault) or a `UsageError`.
 */
export async function runLongRunningCommand(command: LongRunningCommand): Promise<number> {
  const { log, name, deps } = command
  const err = deps.stderr ?? process.stderr
  const exit = deps.exit ?? ((code: number) => process.exit(code))
  const fail = (message: string, error?: unknown): number => {
    log.error(message, error === undefined ? {} : { error })
    const detail = error === undefined ? '' : `: ${redactSecrets(messageOf(error))}`
    // One line: the message may quote a URL or a path holding a control character (the JSON
    // log escapes it itself).
    err.write(`breakwater ${name}: ${oneLine(message)}${detail}\n`)
    return 1
  }
  let startupFailure: number | undefined
  let started: StartedService | undefined
  const clock = deps.clock ?? systemClock
  const start = (signal: AbortSignal) =>
    boundOnceAborted(startService(signal), signal, command.drainTimeoutMs, clock)
  const startService = async (signal: AbortSignal) => {
    const resources = new ServiceResources(log)
    try {
      const service = await command.start(resources, signal)
      started = service
      return {
        ...(service.done === undefined ? {} : { done: service.done }),
        async stop() {
          try {
            await service.stop()
          } finally {
            // Even when the service's own stop failed, nothing else is left open.
            await resources.closeAll()
          }
          service.stopped?.()
        },
      }
    } catch (error) {
      // Said first: the cleanup may take the whole drain (a batch in hand to finish).
      if (error instanceof StartupError) startupFailure = fail(error.message)
      if (!(await closedWithin(resources, command.drainTimeoutMs, clock)))
        throw new StartOutlastedDrain()
      throw error
    }
  }
  // SIGHUP's default action ends the process at once, with no drain, and a proxy takes it as
  // "reload": an operator or a script may send it to every breakwater process. These have no
  // configuration to reload, so they say so and run on (as a proxy worker does). Installed
  // before the start, which may take a while (a saga module connecting at import).
  const signals: SignalTarget = deps.signals ?? process
  const onHup = (): void =>
    log.info(`SIGHUP ignored: the ${name} has nothing to reload; SIGTERM or SIGINT stops it`, {
      signal: 'SIGHUP',
    })
  signals.on('SIGHUP', onHup)
  // One that came while main.ts loaded the command is said now, as if it came just now.
  if (deps.held?.takeHangup()) onHup()
  try {
    const outcome = await runHandedOver(
      deps.held,
      () =>
        runUntilSignal(start, {
          drainTimeoutMs: command.drainTimeoutMs,
          ...(deps.signals === undefined ? {} : { target: deps.signals }),
          clock,
          onSignal: (signal, phase) =>
            phase === 'drain'
              ? log.info(command.drainMessage, { signal })
              : log.warn('second signal: exiting without waiting for the drain', { signal }),
        }),
      (signal) =>
        log.info(`stopped by ${signal} before the ${name} started; nothing was started`, {
          signal,
        }),
    )
    if (outcome.reason === 'signal' && outcome.drain !== 'complete') {
      log.error(`the ${name} did not stop in time; exiting now`, {
        drain: outcome.drain,
        drainTimeoutMs: command.drainTimeoutMs,
      })
      exit(1)
      return 1
    }
    const unfinished = outcome.reason === 'signal' ? started?.unfinished?.() : undefined
    if (unfinished !== undefined) {
      // Stopped in time by giving up on some work: everything is closed, but what was given up
      // on (a step that never returns) may still hold the process open.
      log.error(`the ${name} did not stop in time; exiting now`, {
        ...unfinished,
        drainTimeoutMs: command.drainTimeoutMs,
      })
      exit(1)
      return 1
    }
    return outcome.reason === 'signal' ? 0 : 1
  } catch (error) {
    if (error instanceof StartOutlastedDrain) {
      log.error(`the ${name} did not stop in time; exiting now`, {
        drain: 'timeout',
        phase: 'start',
        drainTimeoutMs: command.drainTimeoutMs,
      })
      exit(1)
      return 1
    }
    if (startupFailure !== undefined) return startupFailure
    if (error instanceof UsageError) {
      err.write(`breakwater ${name}: ${oneLine(error.message)}\n\n${command.usage ?? ''}`)
      return 2
    }
    if (BreakwaterError.is(error) && error.code === 'INVALID_OPTION') {
      err.write(
        `breakwater ${name}: ${command.invalidOptionPrefix ?? ''}${oneLine(error.message)}\n`,
      )
      return 2
    }
    return fail(`the ${name} failed`, error)
  } finally {
    signals.off('SIGHUP', onHup)
  }
}
