import cluster, { type Worker } from 'node:cluster'
import { resolve } from 'node:path'
import { type Clock, maxTimerDelayMs, systemClock } from '../core/clock.js'
import { BreakwaterError } from '../core/errors.js'
import {
  createBufferedOutput,
  createJsonLogger,
  createMetricsRegistry,
  type Logger,
  type LogOutput,
  type LogThreshold,
  type MetricsRegistry,
} from '../observability/index.js'
import { runUntilSignal, type SignalTarget } from '../process/index.js'
import type { AdminBackend, AdminServer } from '../proxy/admin/index.js'
import type { ProxyConfigOverrides } from '../proxy/config/load.js'
import type { ProxyConfig } from '../proxy/contracts.js'
import type { ProxyDrainReport, ProxyInternals } from '../proxy/runtime.js'
import { type HeldSignals, runHandedOver } from './held-signals.js'
import { integerFlag, logLevelFlag, StartupError } from './process-support.js'
import { counted, messageOf, oneLine, UsageError, wantsHelp } from './usage.js'

/** What `proxyCommand` needs besides its arguments; everything has a default. */
export interface ProxyCommandDeps {
  /** Receives the JSON log lines. @default process.stdout */
  readonly stdout?: LogOutput
  /** Receives usage and config errors as plain text. @default process.stderr */
  readonly stderr?: { write(text: string): unknown }
  /**
   * Where the admin token's `{ env }` reference is read (services read their outbound
   * credentials from `process.env`, as startProxy's `env` option says). @default process.env
   */
  readonly env?: Readonly<Record<string, string | undefined>>
  /** Where SIGTERM, SIGINT and SIGHUP come from. @default process */
  readonly signals?: SignalTarget
  /**
   * Ends a single-process proxy whose drain did not finish (timed out, or cut short by a second
   * signal): the requests still in flight hold their sockets, and with them the process, open.
   * @default process.exit
   */
  readonly exit?: (code: number) => void
  /** Times the command's own bound on a drain (see drainWait). @default systemClock */
  readonly clock?: Clock
  /**
   * SIGTERM, SIGINT and SIGHUP as held since before this module loaded (main.ts holds them):
   * handed over once the proxy's own handlers are on; a SIGTERM or SIGINT held already stops
   * it before it starts (exit 0), a SIGHUP reloads once it is up. `--check` gives them their
   * default action back. @default none held
   */
  readonly held?: HeldSignals
}

const usage = `usage: breakwater proxy --config <file.yaml> [options]

Runs the resilience proxy (ambassador, sidecar, strangler-fig gateway) described by the YAML
file until SIGTERM or SIGINT, then drains: /readyz answers 503, listeners stop accepting,
requests in flight finish (up to drainTimeoutMs), and the process exits 0. SIGHUP, a change
to the file, or POST /admin/reload reloads it; an invalid file keeps the running config.
Logs JSON lines to stdout. See docs/proxy.md.

options:
  --config <file>, -c    the YAML config (required)
  --workers <n>          worker processes sharing the listener ports (default: the config's
                         workers, 1 = a single process)
  --start-timeout <ms>   how long a start, and each reload's start, may take, in ms
                         (default: the config's startTimeoutMs, 60000); past it the start
                         fails naming what it waited for, a reload is refused
  --check                validate the file (and that the files it names can be read),
                         print its problems (the first 50), exit 0 (valid) or 1
  --log-level <level>    debug, info (default), warn, error or silent
`

interface ProxyArgs {
  readonly config: string
  readonly workers: number | undefined
  readonly startTimeoutMs: number | undefined
  readonly check: boolean
  readonly logLevel: LogThreshold
}

function parseArgs(args: readonly string[]): ProxyArgs | 'help' {
  let config: string | undefined
  let workers: number | undefined
  let startTimeoutMs: number | undefined
  let check = false
  let logLevel: LogThreshold = 'info'
  const seen = new Set<string>()
  for (let i = 0; i < args.length; i++) {
    const arg = args[i] as string
    const [flag, inline] = arg.startsWith('--') && arg.includes('=') ? arg.split(/=(.*)/s) : [arg]
    const value = (): string => {
      const v = inline ?? args[++i]
      // A flag where the value should be (`--config --check`, `--config -c`), not any word
      // starting with `-`: `--workers -1` is a value out of range, and is told as such.
      if (
        v === undefined ||
        v === '' ||
        (inline === undefined && (v.startsWith('--') || v === '-c'))
      )
        throw new UsageError(`${flag} needs a value`)
      return v
    }
    // One name per setting: `-c` is `--config`.
    const name = flag === '-c' ? '--config' : (flag as string)
    if (seen.has(name) && name !== '--help' && name !== '-h')
      throw new UsageError(`${name} given twice`)
    seen.add(name)
    if (name === '--check' && inline !== undefined) throw new UsageError('--check takes no value')
    switch (flag) {
      case '--help':
      case '-h':
        return 'help'
      case '--config':
      case '-c':
        config = value()
        break
      case '--workers':
        workers = integerFlag('--workers', value(), 1, 256)
        break
      case '--start-timeout':
        // Milliseconds, as the file's startTimeoutMs, and within what a timer can wait.
        startTimeoutMs = integerFlag('--start-timeout', value(), 1, maxTimerDelayMs, 'milliseconds')
        break
      case '--check':
        check = true
        break
      case '--log-level':
        logLevel = logLevelFlag(value())
        break
      default:
        throw new UsageError(`unknown option ${JSON.stringify(arg)}`)
    }
  }
  if (config === undefined) throw new UsageError('--config <file.yaml> is required')
  return { config, workers, startTimeoutMs, check, logLevel }
}

/** The settings given on the command line in place of the file's. */
function configOverrides(parsed: ProxyArgs): ProxyConfigOverrides {
  return {
    ...(parsed.workers === undefined ? {} : { workers: parsed.workers }),
    ...(parsed.startTimeoutMs === undefined ? {} : { startTimeoutMs: parsed.startTimeoutMs }),
  }
}

/** Marks a forked worker, so the same command line runs the worker side. */
const workerEnv = 'BREAKWATER_PROXY_WORKER'

/** `breakwater proxy`: resolves to the exit code. */
export async function proxyCommand(args: string[], deps: ProxyCommandDeps = {}): Promise<number> {
  const stdout = deps.stdout ?? process.stdout
  const stderr = deps.stderr ?? process.stderr
  // As every command: --help or -h anywhere, or help first, before any argument is judged.
  if (wantsHelp(args)) {
    stdout.write(usage)
    return 0
  }
  let parsed: ProxyArgs | 'help'
  try {
    parsed = parseArgs(args)
  } catch (error) {
    if (!(error instanceof UsageError)) throw error
    // Redacted as every command's: a message quotes the argument at fault, and a URL with a
    // password given by mistake (`--db=postgres://app:pw@db/app`) is such an argument.
    // Made one line too: the value quoted may hold a control character or an escape sequence.
    stderr.write(`breakwater proxy: ${oneLine(error.message)}\n\n${usage}`)
    return 2
  }
  if (parsed === 'help') {
    stdout.write(usage)
    return 0
  }
  // No graceful stop to keep the signals for: they end a check by their default action.
  if (parsed.check) deps.held?.release()
  // First thing, before the config loader (and later the runtime) is imported: SIGHUP's
  // default action ends the process, and loading the modules and reading the file take a while.
  const early = parsed.check ? undefined : holdSighup(deps.signals ?? process, deps.held)
  try {
    return await runProxy(parsed, deps, early)
  } catch (error) {
    // Said here, under the command's own prefix as its usage errors are, rather than by
    // main.ts (`breakwater: ...`); the exit codes are main's: 2 for the file or an option, 1
    // for a start that failed. Anything else is a bug, which main prints with its stack.
    const code = startExitCode(error)
    if (code === undefined) throw error
    stderr.write(`breakwater proxy: ${(error as Error).message}\n`)
    return code
  } finally {
    early?.handOver()
  }
}

async function runProxy(
  parsed: ProxyArgs,
  deps: ProxyCommandDeps,
  early: EarlySighup | undefined,
): Promise<number> {
  const stdout = deps.stdout ?? process.stdout
  const stderr = deps.stderr ?? process.stderr
  const env = deps.env ?? process.env
  const file = resolve(parsed.config)
  const { loadProxyConfig } = await import('../proxy/config/load.js')
  // `--workers` is validated as the file's `workers` would be (a memory idempotency store is
  // refused with more than one), and `--start-timeout` stands for the file's startTimeoutMs.
  const overrides = configOverrides(parsed)

  // `early` is undefined exactly when checking.
  if (parsed.check || early === undefined) {
    try {
      const config = await loadProxyConfig(file, overrides)
      const { envSecretProblems } = await import('../proxy/config/env-secrets.js')
      const { unusableFiles } = await import('../proxy/config/files.js')
      const { capped, echo, moreProblems, ConfigInvalidError } = await import(
        '../proxy/config/errors.js'
      )
      const missing = unusableFiles(config)
      // Refused as the start refuses them (CONFIG_INVALID, listed as the loader lists problems),
      // with the files that cannot be used listed too: the start would stop at those next.
      const envProblems = envSecretProblems(config, { services: process.env, admin: env })
      if (envProblems.length > 0) {
        const fileProblems = missing.map((p) => ({
          path: p.path,
          message: `${echo(p.file)}: ${p.reason}`,
          line: undefined,
          column: undefined,
        }))
        throw new ConfigInvalidError(file, [...envProblems, ...fileProblems])
      }
      if (missing.length > 0) {
        // Listed as the loader lists problems: the first 50, and each path cut as a value is.
        const { listed, more } = capped(missing)
        const lines = listed.map((p) => `  ${p.path}: ${echo(p.file)}: ${p.reason}\n`)
        if (more > 0) lines.push(`  ${moreProblems(more)}\n`)
        stderr.write(
          `${file}: the config is valid, but ${missing.length === 1 ? 'a file it refers to' : `${missing.length} files it refers to`} cannot be used:\n${lines.join('')}`,
        )
        return 1
      }
      stdout.write(
        `${file}: valid (${counted(config.services.size, 'service')}, ${counted(config.listeners.length, 'listener')}, ${counted(config.workers, 'worker')})\n`,
      )
      return 0
    } catch (error) {
      if (BreakwaterError.is(error) && error.code === 'CONFIG_INVALID') {
        stderr.write(`${error.message}\n`)
        return 1
      }
      throw error
    }
  }

  const isWorker = cluster.isWorker && env[workerEnv] === '1'
  // An access line per request: gathered per event-loop turn, so a busy proxy makes one write
  // to its stdout pipe per turn instead of one per request (see buffered-output.ts). A given
  // output (tests) is written to directly. A primary passes its workers' lines on through it.
  const output = deps.stdout ?? createBufferedOutput(process.stdout)
  const logger = createJsonLogger({
    level: parsed.logLevel,
    output,
    fields: {
      component: 'proxy',
      pid: process.pid,
      ...(isWorker ? { worker: cluster.worker?.id } : {}),
    },
  })
  try {
    if (isWorker) return await runWorker(logger, overrides, deps, early)
    // Validates before anything starts; an invalid file is exit 2 through main.ts.
    const { config, text } = await readProxyConfig(file, overrides, env)
    if (config.workers > 1 && cluster.isPrimary)
      return await runPrimary(file, config, text, overrides, logger, output, deps, early)
    return await runSingle(file, config, overrides, logger, deps, early)
  } catch (error) {
    // proxyCommand writes the stderr line; the log gets it too (once: a start past its
    // startTimeoutMs was logged by endTimedOutStart, which ends the process).
    if (error instanceof StartupError) logStartFailure(logger, error)
    throw error
  }
}

/**
 * A start that failed (exit 1), as a JSON error line whose `msg` is the stderr line without its
 * prefix, as the relay and the saga worker log theirs: a log collector reads stdout only, and
 * without it the proxy's log ended with no word of why the process went away.
 */
function logStartFailure(logger: Logger, error: StartupError): void {
  logger.error(error.message)
}

/** A SIGHUP held from the command's start until its own handler is installed. */
interface EarlySighup {
  /** Removes the holder (call it once the real handler is on): true when a SIGHUP came. */
  handOver(): boolean
}

/**
 * Listens for SIGHUP on `signals` until {@link EarlySighup.handOver}: one that comes while the
 * command loads its modules and reads the file is noted instead of ending the process, and the
 * real handler, installed before the holder is removed so that none falls in between, applies
 * it once the proxy is up. Takes over one `held` noted while main.ts loaded this module.
 */
function holdSighup(signals: SignalTarget, held: HeldSignals | undefined): EarlySighup {
  let seen = false
  const hold = (): void => {
    seen = true
  }
  signals.on('SIGHUP', hold)
  if (held?.takeHangup()) seen = true
  return {
    handOver() {
      signals.off('SIGHUP', hold)
      return seen
    },
  }
}

/**
 * Reads and validates the config file: the config and the text it was parsed from (what the
 * primary hands its workers). Throws ConfigInvalidError as loadProxyConfig does, and for a
 * `{ env }` secret that is unset or unusable (the services' read in `process.env`, the admin
 * token's in `env`): the primary refuses it at start and on a reload before any worker is
 * forked or asked, as one process refuses it.
 */
async function readProxyConfig(
  file: string,
  overrides: ProxyConfigOverrides,
  env: Readonly<Record<string, string | undefined>>,
): Promise<{ config: ProxyConfig; text: string }> {
  const { parseProxyConfig, readConfigText } = await import('../proxy/config/load.js')
  const { checkEnvSecrets } = await import('../proxy/config/env-secrets.js')
  // Refuses a path that is no regular file before reading it (a FIFO's read never ends).
  const text = await readConfigText(file)
  const config = parseProxyConfig(text, file, overrides)
  checkEnvSecrets(config, file, { services: process.env, admin: env })
  return { config, text }
}

async function runSingle(
  file: string,
  config: ProxyConfig,
  overrides: ProxyConfigOverrides,
  logger: Logger,
  deps: ProxyCommandDeps,
  early: EarlySighup,
): Promise<number> {
  const { startProxyRuntime } = await import('../proxy/runtime.js')
  const signals = deps.signals ?? process
  // Handled from before the start: the default action of SIGHUP ends the process, and a start
  // can take a while (binding listeners, opening the idempotency store). One that comes while
  // the proxy starts is applied once it is up.
  let proxy: ProxyInternals | undefined
  let drained: ProxyDrainReport | undefined
  let hupWhileStarting = false
  const reload = (): void => {
    // Refused reloads are logged by the runtime; one after the stop began is not applied.
    proxy
      ?.tryReload()
      .catch((error: unknown) =>
        logger.warn('SIGHUP: reload not applied', { error: messageOf(error) }),
      )
  }
  const onHup = (): void => {
    if (proxy === undefined) {
      if (!hupWhileStarting) logger.info('SIGHUP while starting: reloading once started')
      hupWhileStarting = true
      return
    }
    logger.info('SIGHUP: reloading the config')
    reload()
  }
  signals.on('SIGHUP', onHup)
  if (early.handOver()) onHup()
  const outcome = await runHandedOver(
    deps.held,
    () =>
      runUntilSignal(
        async () => {
          proxy = await startProxyRuntime({
            config: { file },
            // --workers 1 on a file with more: the file is read (and reloaded) as one process.
            configOverrides: { ...overrides, workers: config.workers },
            logger,
            ...(deps.env === undefined ? {} : { env: deps.env }),
          }).catch(startFailure)
          if (hupWhileStarting) {
            logger.info('SIGHUP: reloading the config')
            reload()
          }
          const running = proxy
          return {
            stop: async () => {
              signals.off('SIGHUP', onHup)
              // Readiness goes false first, so a load balancer stops sending before we stop taking.
              running.beginDrain()
              drained = await running.close()
            },
          }
        },
        {
          target: signals,
          clock: deps.clock ?? systemClock,
          // drainTimeoutMs is reloadable: the config in force at the signal bounds the drain.
          drainTimeoutMs: () =>
            drainWait(proxy?.config().drainTimeoutMs ?? config.drainTimeoutMs, 5_000),
          onSignal: (signal, phase) =>
            logger.info(`${signal}: ${phase === 'drain' ? 'draining' : 'forced stop'}`),
        },
      ),
    (signal) => logStoppedBeforeStart(logger, signal, 'proxy'),
  )
    .finally(() => signals.off('SIGHUP', onHup))
    .catch((error: unknown) => endTimedOutStart(error, deps, logger))
  if (typeof outcome === 'number') return outcome
  logExit(logger, 'proxy exited', outcome, drained)
  if (outcome.reason === 'signal' && outcome.drain !== 'complete') {
    // The drain given up on is still under way: its connections would keep the process alive
    // (until their timeouts, or for ever). The buffered log output is flushed at exit.
    ;(deps.exit ?? ((code: number) => process.exit(code)))(1)
    return 1
  }
  return 0
}

async function runWorker(
  logger: Logger,
  overrides: ProxyConfigOverrides,
  deps: ProxyCommandDeps,
  early: EarlySighup,
): Promise<number> {
  let failed = true
  try {
    const code = await serveAsWorker(logger, overrides, deps, early)
    failed = code !== 0
    return code
  } finally {
    // Let go of the IPC channel so the process ends, also when it could not start (the primary
    // then sees it exit).
    if (process.connected) letGoOfPrimary(failed)
  }
}

/**
 * Closes a worker's IPC channel, which ends the process at once. node:cluster ends a worker
 * whose channel closes with exit code 0, taking it for one its primary left, unless it left by
 * `worker.disconnect()`: a worker that failed leaves that way and ends with the code main.ts
 * gave it (1 for a failed start), so the primary, and a supervisor, see the failure.
 */
function letGoOfPrimary(failed: boolean): void {
  const worker = cluster.worker
  if (!failed || worker === undefined) {
    process.disconnect()
    return
  }
  // The channel closes on a later I/O turn: the error has reached main.ts by then (in this
  // turn's microtasks), which set the exit code.
  worker.once('disconnect', () => process.exit(process.exitCode ?? 1))
  worker.disconnect()
}

async function serveAsWorker(
  logger: Logger,
  overrides: ProxyConfigOverrides,
  deps: ProxyCommandDeps,
  early: EarlySighup,
): Promise<number> {
  const { startProxyRuntime } = await import('../proxy/runtime.js')
  const { receiveWorkerConfig, serveWorkerCommands } = await import('../proxy/admin/cluster.js')
  let drained: ProxyDrainReport | undefined
  // The primary coordinates reloads; a SIGHUP sent to a worker must not end it (the default
  // action of SIGHUP is to exit), also while it waits for its config or starts.
  const onHup = (): void => logger.info('SIGHUP ignored in a worker: signal the primary')
  process.on('SIGHUP', onHup)
  if (early.handOver()) onHup()
  const outcome = await runHandedOver(
    deps.held,
    () =>
      runUntilSignal(
        async () => {
          // The primary watches the file, serves the admin API and tells workers to reload. A
          // worker never reads the file: it runs the text the primary accepted, so one restarted
          // while the file holds a config the primary refused starts on the config in force.
          const given = await receiveWorkerConfig(process)
          if (given === undefined)
            throw new StartupError(
              'cannot start: the primary process went away before it sent the config',
            )
          const proxy = await startProxyRuntime({
            config: given.text,
            // Validated with the primary's worker count (the file's, or --workers). The others
            // (--start-timeout) are the primary's too: node:cluster forks a worker with the
            // primary's command line.
            configOverrides: { ...overrides, workers: given.workers },
            logger,
            watch: false,
            admin: false,
            ...(deps.env === undefined ? {} : { env: deps.env }),
          }).catch(startFailure)
          let drain: () => void = () => {}
          const done = new Promise<void>((resolvePromise) => {
            drain = resolvePromise
          })
          // In the turn the start resolved in (no await since): the route switches and isolations
          // in force are applied before the listeners' first request is read.
          const stopServing = serveWorkerCommands(proxy, process, () => drain(), given)
          return {
            done,
            stop: async () => {
              proxy.beginDrain()
              drained = await proxy.close()
              stopServing()
            },
          }
        },
        { target: deps.signals ?? process, drainTimeoutMs: 600_000 },
      ),
    (signal) => logStoppedBeforeStart(logger, signal, 'worker'),
  )
    .finally(() => process.off('SIGHUP', onHup))
    // Ended at once: the primary notices a worker that failed to start only once it exits.
    .catch((error: unknown) => endTimedOutStart(error, deps, logger))
  if (typeof outcome === 'number') return outcome
  logExit(logger, 'worker exited', outcome, drained)
  return 0
}

async function runPrimary(
  file: string,
  config: ProxyConfig,
  configText: string,
  overrides: ProxyConfigOverrides,
  logger: Logger,
  output: LogOutput,
  deps: ProxyCommandDeps,
  early: EarlySighup,
): Promise<number> {
  const workers = config.workers
  const { forwardLines } = await import('./worker-output.js')
  const { createClusterBackend, RestartBackoff } = await import('../proxy/admin/cluster.js')
  const { watchFileContent } = await import('../proxy/upstream/file-watch.js')
  const signals = deps.signals ?? process
  const log = logger.child({ role: 'primary' })
  const metrics = createMetricsRegistry()
  const restarts = metrics.counter({
    name: 'breakwater_proxy_worker_restarts_total',
    help: 'Worker processes restarted after they exited unexpectedly.',
  })
  const backend = createClusterBackend({
    config,
    configText,
    // A reload is checked with the worker count in force (the file's, or --workers).
    loadConfig: async () => {
      const read = await readProxyConfig(file, { ...overrides, workers }, deps.env ?? process.env)
      // The admin API's token file (of the start's settings, in force until a restart) is
      // read on each request: one that became empty or unreadable is refused as at start.
      const { checkAdminTokenFile } = await import('../proxy/config/files.js')
      await checkAdminTokenFile({ admin: config.admin }, file)
      return read
    },
    file,
    logger: log,
    metrics,
  })
  backend.expect(workers)
  const restartDelay = new RestartBackoff()
  let stopping = false
  let admin: AdminServer | undefined
  let watcher: { close(): void } | undefined
  const exited = new Map<number, Promise<void>>()
  // Each worker's stdout is a pipe of its own, passed on here a whole line at a time: shared,
  // the workers' writes of more than PIPE_BUF to a pipe read slowly cut each other's lines
  // (see worker-output.ts). stderr stays shared: a worker writes there only when it fails.
  cluster.setupPrimary({ stdio: ['inherit', 'pipe', 'inherit', 'ipc'] })
  const forwarding = new Set<Promise<void>>()

  // Until every first worker has come up, a worker that exits ends the start: a worker that
  // cannot start (a port in use, a store that does not open) would fail the same way again.
  let failStart: (() => void) | undefined
  const startFailed = new Promise<void>((resolvePromise) => {
    failStart = resolvePromise
  })
  let startError: string | undefined
  const fork = (): Worker => {
    const worker = cluster.fork({ [workerEnv]: '1' })
    const stdout = worker.process.stdout
    if (stdout !== null) {
      const forwarded = forwardLines(stdout, output).then(() => {
        forwarding.delete(forwarded)
      })
      forwarding.add(forwarded)
    }
    backend.attach(worker)
    exited.set(
      worker.id,
      new Promise<void>((resolvePromise) => {
        worker.once('exit', (code, signal) => {
          const cameUp = backend.detach(worker)
          exited.delete(worker.id)
          resolvePromise()
          if (stopping) return
          if (!backend.hasStartedAll()) {
            startError = 'a worker exited while starting; its error is above'
            log.error('a worker failed to start; stopping', {
              workerPid: worker.process.pid,
              code,
              signal,
            })
            failStart?.()
            return
          }
          restarts.inc()
          // A short pause, longer for each worker in a row that died while starting, so a
          // cause that lasts (a store down) does not have a process forked twice a second.
          const delayMs = restartDelay.next(cameUp)
          log.error('worker exited unexpectedly; starting a new one', {
            workerPid: worker.process.pid,
            code,
            signal,
            restartInMs: delayMs,
          })
          setTimeout(() => {
            if (!stopping) fork()
          }, delayMs).unref()
        })
      }),
    )
    return worker
  }

  const reload = (why: string): void => {
    log.info(`${why}: reloading the config`)
    void backend
      .reload()
      .catch((error: unknown) => log.error('reload failed', { error: String(error) }))
  }
  // Handled from before the start (the default action of SIGHUP ends the process); one that
  // comes before the workers are forked is applied once they are (they may still be starting:
  // the backend hands the config in force to each as it comes up).
  let forked = false
  let hupWhileStarting = false
  const onHup = (): void => {
    if (forked) reload('SIGHUP')
    else {
      if (!hupWhileStarting) log.info('SIGHUP while starting: reloading once started')
      hupWhileStarting = true
    }
  }
  signals.on('SIGHUP', onHup)
  if (early.handOver()) onHup()

  const outcome = await runHandedOver(
    deps.held,
    () =>
      runUntilSignal(
        async () => {
          // The admin API first: a port in use then fails the start before any worker is forked
          // (a worker left running would keep this process, and the listener ports, alive).
          admin = await startPrimaryAdmin(config, file, backend, log, metrics, deps.env)
          // Calls reload once the file's text changed, 250 ms after the last event. Watches the
          // folder, not the file: editors and `mv` replace the file, which ends a watch on the file
          // itself; a ConfigMap volume's update names only its `..`-prefixed entries, and happens
          // for an update of any of its keys, so an event that leaves the text as it was reloads
          // nothing (a reload rebuilds the generation and drops any route switch whose route
          // changed, see route-overrides.ts). Read once when armed:
          // a change since the text above was read is not missed.
          watcher = watchFileContent(
            file,
            Buffer.from(configText, 'utf8'),
            () => reload('config file changed'),
            (error) => log.warn('config file watch failed', { error: messageOf(error) }),
            {
              debounceMs: 250,
              readAtStart: true,
              onUnchanged: () => log.debug('config file unchanged; not reloaded', { file }),
              onRewatched: () => log.info('config file watched again', { file }),
            },
          )
          log.info('starting workers', { workers })
          for (let i = 0; i < workers; i++) fork()
          forked = true
          if (hupWhileStarting) reload('SIGHUP')
          return {
            done: startFailed,
            stop: async () => {
              stopping = true
              signals.off('SIGHUP', onHup)
              watcher?.close()
              backend.beginDrain()
              if (startError === undefined && backend.hasStartedAll()) {
                await backend.drainAll()
              } else {
                // Some workers have not come up (a signal while they start), or never will: a drain
                // request sent before a worker listens is lost. Signal each one instead: a worker
                // drains on SIGTERM, and one still starting stops as soon as it is up.
                for (const worker of Object.values(cluster.workers ?? {})) worker?.kill('SIGTERM')
              }
              await Promise.all(exited.values())
              // A worker's last lines ("worker exited") may still be in its pipe.
              await Promise.all(forwarding)
              await admin?.close()
            },
          }
        },
        {
          target: signals,
          clock: deps.clock ?? systemClock,
          // drainTimeoutMs is reloadable: the config in force at the signal bounds the drain.
          drainTimeoutMs: () => drainWait(backend.configInForce().drainTimeoutMs, 10_000),
          onSignal: (signal, phase) =>
            log.info(`${signal}: ${phase === 'drain' ? 'draining every worker' : 'forced stop'}`),
        },
      ),
    (signal) => logStoppedBeforeStart(log, signal, 'proxy'),
  )
    .finally(() => signals.off('SIGHUP', onHup))
    // No worker was forked yet: nothing to stop but this process.
    .catch((error: unknown) => endTimedOutStart(error, deps, logger))
  if (typeof outcome === 'number') return outcome
  if (outcome.reason === 'signal' && outcome.drain !== 'complete') {
    for (const worker of Object.values(cluster.workers ?? {})) worker?.kill('SIGKILL')
    await admin?.close()
  }
  log.info('proxy exited', { ...outcome })
  if (startError !== undefined) throw new StartupError(`cannot start: ${startError}`)
  return outcome.reason === 'signal' && outcome.drain !== 'complete' ? 1 : 0
}

/**
 * Starts the multi-process primary's admin API, bounded by the config's `startTimeoutMs` as one
 * process's start is (its admin token file, or the bind, may wait on something that never
 * answers: a hung network mount, a resolver that does not reply): past it the start fails
 * with PROXY_START_TIMEOUT naming `admin.token` or `admin`, and an admin server that comes up
 * after all is closed. A token file without a usable token is refused (CONFIG_INVALID, exit 2)
 * as one process refuses it; an admin API that cannot bind is one line naming `admin`.
 */
async function startPrimaryAdmin(
  config: ProxyConfig,
  file: string,
  backend: AdminBackend,
  log: Logger,
  metrics: MetricsRegistry,
  env: Readonly<Record<string, string | undefined>> | undefined,
): Promise<AdminServer | undefined> {
  const { checkAdminTokenFile } = await import('../proxy/config/files.js')
  const { startAdminServer } = await import('../proxy/admin/server.js')
  const { startBound } = await import('../proxy/start-bound.js')
  const bound = startBound(systemClock, config.startTimeoutMs, log)
  try {
    await bound
      .wait('admin.token', 'reading the admin token file', checkAdminTokenFile(config, file))
      .catch(startFailure)
    const settings = config.admin
    if (settings === undefined) return undefined
    return await bound
      .wait(
        'admin',
        `starting the admin API on ${settings.host}:${settings.port}`,
        startAdminServer({
          config: settings,
          backend,
          deps: { clock: systemClock, logger: log, metrics },
          ...(env === undefined ? {} : { env }),
        }),
        (late) => late.close(),
      )
      .catch((error: unknown) => {
        if (bound.timedOut(error)) startFailure(error)
        throw new StartupError(`cannot start: admin: ${messageOf(error)}`)
      })
  } finally {
    bound.end()
  }
}

/** Said when a signal held while the command loaded stops it before `what` started. */
function logStoppedBeforeStart(logger: Logger, signal: NodeJS.Signals, what: string): void {
  logger.info(`stopped by ${signal} before the ${what} started; nothing was started`, { signal })
}

/**
 * The exit line. A drain that ended in time but cut requests at drainTimeoutMs says
 * `"drain":"cut"` and how many, at warn: the stop finished as bounded (exit 0), yet
 * drainTimeoutMs is too short for the requests it should let finish.
 */
function logExit(
  logger: Logger,
  msg: string,
  outcome: object & { readonly drain?: string },
  drained: ProxyDrainReport | undefined,
): void {
  // A drain runUntilSignal gave up on (timeout, forced) says so itself; the runtime's report is
  // for a stop that finished (on a signal, or a worker's drain command from the primary).
  const finished = outcome.drain === undefined || outcome.drain === 'complete'
  if (finished && drained?.drain === 'cut') {
    logger.warn(msg, { ...outcome, ...drained })
  } else logger.info(msg, { ...outcome })
}

/**
 * How long the command waits for a drain: the config's `drainTimeoutMs` plus `margin` (for
 * closing services and stores), within what a timer can wait. The config takes any delay up to
 * that bound, and the sum past it was refused by runUntilSignal, so such a file never started.
 */
function drainWait(drainTimeoutMs: number, margin: number): number {
  return Math.min(drainTimeoutMs + margin, maxTimerDelayMs)
}

// Why the proxy could not start, for proxyCommand: config and option errors stay what they are
// (exit 2); anything else (a port in use, a store that does not open) becomes one line, exit 1,
// with the runtime's error as its cause.
function startFailure(error: unknown): never {
  if (
    BreakwaterError.is(error) &&
    (error.code === 'CONFIG_INVALID' || error.code === 'INVALID_OPTION')
  )
    throw error
  throw new StartupError(`cannot start: ${messageOf(error)}`, { cause: error })
}

/** The exit code main.ts gives `error` when it is no bug: 2 for the file or an option, 1 for a failed start. */
function startExitCode(error: unknown): number | undefined {
  if (
    BreakwaterError.is(error) &&
    (error.code === 'CONFIG_INVALID' || error.code === 'INVALID_OPTION')
  )
    return 2
  return error instanceof StartupError ? 1 : undefined
}

/**
 * A start that failed past `startTimeoutMs` is said (as proxyCommand says a failed start) and ends the
 * process with exit 1 at once: the step it gave up on (a database that never answers, a lock
 * wait) holds its socket, and with it the process, open for as long as that step lasts. Any
 * other error is thrown on.
 */
function endTimedOutStart(error: unknown, deps: ProxyCommandDeps, logger: Logger): number {
  if (!(error instanceof StartupError)) throw error
  const cause = error.cause
  if (!BreakwaterError.is(cause) || cause.code !== 'PROXY_START_TIMEOUT') throw error
  logStartFailure(logger, error)
  ;(deps.stderr ?? process.stderr).write(`breakwater proxy: ${error.message}\n`)
  ;(deps.exit ?? ((code: number) => process.exit(code)))(1)
  return 1
}
