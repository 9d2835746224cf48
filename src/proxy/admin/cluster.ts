// The multi-process mode's control plane. The primary process runs no proxy itself: it forks
// the workers (each runs the whole proxy; node:cluster shares the listener ports between
// them), serves the admin API, and turns each admin command into one IPC request per worker,
// gathering the answers. It remembers route switches and isolations so that a worker that
// crashed and was restarted gets them again.
//
// Workers never read the config file. The primary validates it and hands each worker the text
// it accepted, numbered by a generation: a starting worker asks for it, a reload carries it,
// and a worker that comes up behind (it was starting while a reload was accepted) is sent the
// text in force before it counts as ready. So every worker runs what the primary accepted,
// also a worker restarted while the file on disk is one the primary refused.

import type { Worker } from 'node:cluster'
import { type Clock, maxTimerDelayMs, type TimerHandle } from '../../core/clock.js'
import { InvalidOptionError } from '../../core/errors.js'
import { checkClock, checkInteger } from '../../core/validate.js'
import type { Logger } from '../../observability/logger.js'
import type { MetricsRegistry } from '../../observability/metrics.js'
import { ConfigInvalidError, type ConfigProblem, formatProblem } from '../config/errors.js'
import { keepsServiceRuntime } from '../config/reload.js'
import type { ProxyConfig, RouteTargetConfig } from '../contracts.js'
import { logOverridesAfterReload, overridesAfterReload } from '../inbound/route-overrides.js'
import type { SharedRetryPin } from '../inbound/routes.js'
import type { ProxyInternals } from '../runtime.js'
import { startBound } from '../start-bound.js'
import {
  type AdminBackend,
  PartiallyAppliedError,
  type ReloadReport,
  type WorkerReload,
  type WorkerRoutes,
  type WorkerServices,
} from './backend.js'
import { PinBook } from './pin-book.js'

/** A command from the primary to a worker. */
export type WorkerCommand =
  | { readonly op: 'services' }
  | { readonly op: 'routes' }
  | { readonly op: 'metrics' }
  | { readonly op: 'reload'; readonly text: string; readonly generation: number }
  | { readonly op: 'switchRoute'; readonly route: string; readonly targets: RouteTargetConfig[] }
  | { readonly op: 'resetRoute'; readonly route: string }
  | { readonly op: 'isolate'; readonly service: string }
  | { readonly op: 'reset'; readonly service: string }
  | { readonly op: 'drain' }

/** IPC messages (tagged so other IPC traffic is left alone). */
type Message =
  | { readonly bw: 'request'; readonly id: number; readonly command: WorkerCommand }
  | {
      readonly bw: 'reply'
      readonly id: number
      readonly ok: boolean
      readonly value?: unknown
      readonly error?: SerializedError
    }
  // A starting worker asks for the config in force (worker -> primary) ...
  | { readonly bw: 'starting' }
  // ... and is sent it: the text the primary accepted, its generation, the worker count it
  // was validated with, and the route switches and isolations in force (primary -> worker).
  | {
      readonly bw: 'config'
      readonly text: string
      readonly generation: number
      readonly workers: number
      readonly changes?: readonly WorkerCommand[]
    }
  // A switch, override removal, isolation or reset recorded while a worker starts (primary ->
  // a worker sent the config but not counted ready yet): applied before it serves, or at once.
  | { readonly bw: 'change'; readonly command: WorkerCommand }
  // Up and serving the config of `generation`.
  | { readonly bw: 'ready'; readonly generation?: number }
  // The worker's configured listeners that are not listening: sent when it comes up and after
  // each reload (the only times that changes), so the primary's /readyz can see them.
  | { readonly bw: 'listeners'; readonly down: readonly string[] }
  // A retry affinity pin: worker -> primary, then primary -> every other worker.
  | ({ readonly bw: 'pin' } & SharedRetryPin)
  // The live pins, primary -> a worker that just came up (in batches).
  | { readonly bw: 'pins'; readonly pins: readonly SharedRetryPin[] }

interface SerializedError {
  readonly code: string
  readonly message: string
  readonly option?: string
  readonly problems?: readonly ConfigProblem[]
}

// Every IPC send passes a callback. Without one, Node reports a send on a channel that is
// closing (a worker draining and disconnecting while a pin or an answer is on its way) as an
// 'error' event on the process or Worker, which nobody listens to: an uncaught exception that
// ends the primary with exit code 1 in the middle of a clean shutdown. With a callback the
// failure comes to the sender, which decides what it means.
const ignoreSendFailure = (): void => {}

// Pins per message to a new worker: 1,000 pins are about 200 KB of JSON, small enough not to
// hold the channel up for other messages.
const pinBatchSize = 1_000

// How long past its drain time a worker being replaced has to exit before it is killed.
const replaceGraceMs = 5_000

/**
 * How much longer than the config's `startTimeoutMs` the primary waits for a worker's answer to
 * a reload (ms). The worker bounds its reload by that same value and then answers with its
 * refusal (PROXY_START_TIMEOUT's message); the margin is for that answer to be sent and to cross
 * the IPC channel, and for the worker's clock starting a little after the primary's, so a
 * worker that is still within its own bound is never counted as not answering.
 */
export const reloadAnswerMarginMs = 5_000

/** How long the primary waits for a worker to answer a reload to `config` (ms). */
function reloadWaitMs(config: ProxyConfig): number {
  return Math.min(config.startTimeoutMs + reloadAnswerMarginMs, maxTimerDelayMs)
}

/**
 * A command the worker did not answer: it did not in time, it exited first, or the command
 * could not be sent. Unlike a refusal, what the worker does with the command is unknown.
 */
class NoAnswerError extends Error {}

function serialize(error: unknown): SerializedError {
  if (error instanceof ConfigInvalidError)
    return { code: error.code, message: error.message, problems: error.problems }
  if (error instanceof InvalidOptionError)
    return { code: error.code, message: error.message, option: error.option }
  return { code: 'INTERNAL_ERROR', message: error instanceof Error ? error.message : String(error) }
}

function revive(error: SerializedError | undefined): Error {
  if (error?.code === 'CONFIG_INVALID')
    return new ConfigInvalidError('reload', error.problems ?? [])
  if (error?.code === 'INVALID_OPTION') {
    const revived = new InvalidOptionError(error.option ?? 'option', 'a valid value', undefined)
    revived.message = error.message
    return revived
  }
  return new Error(error?.message ?? 'worker failed')
}

/**
 * Why a worker did not apply a command, in one line: a config refusal's problems (such as its
 * own `startTimeoutMs` passing: `(apply): expected a config that can be applied, got
 * startTimeoutMs (N ms) passed while waiting for ...`), or the error's message.
 */
function reasonOf(error: unknown): string {
  if (error instanceof ConfigInvalidError) return error.problems.map(formatProblem).join('; ')
  return error instanceof Error ? error.message : String(error)
}

/** The config a worker is to run, as the primary hands it over (see receiveWorkerConfig). */
export interface WorkerConfig {
  /** The YAML text the primary accepted. */
  readonly text: string
  /** Its generation (0 at start, higher for each reload the primary accepted). */
  readonly generation: number
  /** The worker count it was validated with (the file's `workers`, or `--workers`). */
  readonly workers: number
  /**
   * The route switches and isolations in force, then those the primary recorded while this
   * worker starts (it keeps collecting them until {@link serveWorkerCommands} takes over, which
   * applies them before anything else).
   */
  readonly changes: readonly WorkerCommand[]
}

// Stops collecting a WorkerConfig's changes (see receiveWorkerConfig).
const collecting = new WeakMap<WorkerConfig, () => void>()

// The commands a worker applies without answering: those the primary pushes (see `change`).
const pushedOps: ReadonlySet<WorkerCommand['op']> = new Set([
  'switchRoute',
  'resetRoute',
  'isolate',
  'reset',
])

function isPushed(command: unknown): command is WorkerCommand {
  return (
    typeof command === 'object' && command !== null && pushedOps.has((command as WorkerCommand).op)
  )
}

/**
 * Worker side, first step: asks the primary for the config in force and resolves with it, or
 * with `undefined` when the channel closes first (the primary is gone: nothing to run). The
 * switches and isolations the primary records while the worker starts are collected into the
 * config's `changes` until {@link serveWorkerCommands} is given it.
 */
export function receiveWorkerConfig(channel: NodeJS.Process): Promise<WorkerConfig | undefined> {
  return new Promise((resolve) => {
    const done = (value: WorkerConfig | undefined): void => {
      channel.off('message', listener)
      channel.off('disconnect', gone)
      resolve(value)
    }
    const listener = (message: unknown): void => {
      const m = message as Message
      if (typeof m !== 'object' || m === null || m.bw !== 'config') return
      if (
        typeof m.text !== 'string' ||
        !Number.isInteger(m.generation) ||
        !Number.isInteger(m.workers)
      )
        return
      const changes = Array.isArray(m.changes) ? m.changes.filter(isPushed) : []
      const given: WorkerConfig = {
        text: m.text,
        generation: m.generation,
        workers: m.workers,
        changes,
      }
      // A change recorded while this worker starts its runtime: applied with the others before
      // it serves (the runtime cannot take it before its listeners are up).
      const collect = (pushed: unknown): void => {
        const c = pushed as Message
        if (typeof c === 'object' && c !== null && c.bw === 'change' && isPushed(c.command))
          changes.push(c.command)
      }
      channel.on('message', collect)
      collecting.set(given, () => channel.off('message', collect))
      done(given)
    }
    const gone = (): void => done(undefined)
    channel.on('message', listener)
    channel.on('disconnect', gone)
    if (channel.connected === false) {
      done(undefined)
      return
    }
    // A failed send means the channel is closing: 'disconnect' follows.
    channel.send?.({ bw: 'starting' } satisfies Message, ignoreSendFailure)
  })
}

/**
 * Worker side: answers the primary's commands from the local runtime. `onDrain` is called for
 * the `drain` command (the CLI then stops the worker gracefully). `given` is the config the
 * runtime started on (see receiveWorkerConfig), or its generation: the generation is reported
 * with `ready` so the primary can send a newer one, and the config's `changes` (the route
 * switches and isolations in force) are applied first, synchronously.
 *
 * Call it in the same turn as the runtime's start resolves (no `await` in between): the
 * listeners are bound by then, and a request is only read in a later turn of the event loop,
 * so the worker's first request is routed with the switches and isolations the others have.
 * Returns a function that stops listening.
 */
export function serveWorkerCommands(
  runtime: ProxyInternals,
  channel: NodeJS.Process,
  onDrain: () => void,
  given: number | WorkerConfig = 0,
): () => void {
  const generation = typeof given === 'number' ? given : given.generation
  if (typeof given !== 'number') {
    collecting.get(given)?.()
    for (const command of given.changes) applyPushed(command)
  }
  function applyPushed(command: WorkerCommand): void {
    // Applied by the time run returns (the runtime's switches and isolations are synchronous).
    // A refusal names a route or service this worker's config lacks: it started on an older
    // config, and is brought onto the one in force and given the changes again (catchUp).
    run(command).catch(() => {})
  }
  const listener = (message: unknown): void => {
    const m = message as Message
    if (typeof m !== 'object' || m === null) return
    if (m.bw === 'change') {
      if (isPushed(m.command)) applyPushed(m.command)
      return
    }
    if (m.bw === 'pin') {
      runtime.adoptRetryPin(pinOf(m))
      return
    }
    if (m.bw === 'pins') {
      if (Array.isArray(m.pins)) for (const pin of m.pins) runtime.adoptRetryPin(pinOf(pin))
      return
    }
    if (m.bw !== 'request') return
    // An answer that cannot be sent (the primary is gone) has nobody left to read it.
    void run(m.command).then(
      (value) =>
        channel.send?.(
          { bw: 'reply', id: m.id, ok: true, value } satisfies Message,
          ignoreSendFailure,
        ),
      (error: unknown) =>
        channel.send?.(
          { bw: 'reply', id: m.id, ok: false, error: serialize(error) } satisfies Message,
          ignoreSendFailure,
        ),
    )
  }
  async function run(command: WorkerCommand): Promise<unknown> {
    switch (command.op) {
      case 'services':
        return { pid: process.pid, services: runtime.services() } satisfies WorkerServices
      case 'routes':
        return { pid: process.pid, routes: runtime.routes() } satisfies WorkerRoutes
      case 'metrics':
        return runtime.metricsText()
      case 'reload':
        try {
          await runtime.reload(command.text)
        } finally {
          // A failed reload can leave a listener unbound as much as a successful one.
          reportListeners()
        }
        return null
      case 'switchRoute':
        runtime.switchRoute(command.route, command.targets)
        return null
      case 'resetRoute':
        runtime.resetRoute(command.route)
        return null
      case 'isolate':
        runtime.isolate(command.service)
        return null
      case 'reset':
        runtime.reset(command.service)
        return null
      case 'drain':
        runtime.beginDrain()
        onDrain()
        return null
    }
  }
  channel.on('message', listener)
  // Retries with a key must reach the side of the first attempt whichever worker gets them.
  runtime.onRetryPinReached((pin) => {
    if (channel.connected === true)
      channel.send?.({ bw: 'pin', ...pin } satisfies Message, ignoreSendFailure)
  })
  function reportListeners(): void {
    const down = runtime.listenersDown()
    channel.send?.({ bw: 'listeners', down } satisfies Message, ignoreSendFailure)
  }
  channel.send?.({ bw: 'ready', generation } satisfies Message, ignoreSendFailure)
  reportListeners()
  // A listener bound again between reloads (see ProxyInternals.onListenersChanged).
  runtime.onListenersChanged(reportListeners)
  // The primary logs what a reload did to the route switches once; each worker's lines would
  // only repeat it, once per worker.
  runtime.logSwitchesAtDebug(true)
  return () => {
    runtime.onRetryPinReached(undefined)
    runtime.onListenersChanged(undefined)
    runtime.logSwitchesAtDebug(false)
    channel.off('message', listener)
  }
}

/**
 * Refuses a switch to a service `config` does not have, as a worker's runtime does (same
 * option and wording), so that a switch made while no worker is ready is checked too.
 */
function checkTargets(config: ProxyConfig, targets: readonly RouteTargetConfig[]): void {
  targets.forEach((target, i) => {
    if (!config.services.has(target.service))
      throw new InvalidOptionError(
        `targets[${i}].service`,
        `a configured service (${[...config.services.keys()].join(', ')})`,
        target.service,
      )
  })
}

function pinOf(m: SharedRetryPin): SharedRetryPin {
  return { route: m.route, key: m.key, service: m.service, expiresAt: m.expiresAt }
}

/** Options of {@link createClusterBackend}. */
export interface ClusterBackendOptions {
  /** The config the primary validated (shown by GET /admin/config). */
  readonly config: ProxyConfig
  /** The YAML text `config` was parsed from: what workers are handed to run. */
  readonly configText: string
  /**
   * Re-reads and validates the config file in the primary (before workers are asked): the
   * config and the text it was parsed from (the text is what the workers get).
   */
  readonly loadConfig: () => Promise<{ readonly config: ProxyConfig; readonly text: string }>
  /**
   * The path of the config file `loadConfig` reads, given as `file` in the lines of a refused
   * reload: with several proxies on a host, the line must say which file to fix.
   * @default undefined (not named)
   */
  readonly file?: string | undefined
  /** Where the primary logs (reloads, refused reloads). */
  readonly logger: Logger
  /** The primary's own registry (reload counters), rendered with the workers' metrics. */
  readonly metrics: MetricsRegistry
  /**
   * Time a worker has to answer a command that starts nothing (ms). A reload is waited for
   * longer: the new config's `startTimeoutMs` plus {@link reloadAnswerMarginMs}, as the worker
   * bounds its reload by that `startTimeoutMs`.
   * @default 10000
   */
  readonly commandTimeoutMs?: number | undefined
  /**
   * Times the command timeouts.
   * @default systemClock
   */
  readonly clock?: Clock | undefined
}

/**
 * A worker the primary talks to; `ready` once it reported so and runs the config in force
 * (false again while replaced).
 */
interface WorkerEntry {
  readonly worker: Worker
  ready: boolean
  /** The generation of the config it runs, as far as the primary knows. */
  generation: number
  /** Whether it ever came up (see RestartBackoff). */
  cameUp: boolean
  /**
   * Sent SIGTERM (being replaced, or drained while not up): a second one would force its stop
   * and cut the requests it is draining.
   */
  terminated: boolean
  /** The listeners it last reported not listening. */
  listenersDown: readonly string[]
  /** Sent the config (and the changes in force): the changes recorded since are pushed to it. */
  configSent: boolean
}

/** The primary's admin backend plus worker bookkeeping. */
export interface ClusterBackend extends AdminBackend {
  /** The config in force now (the last one reloaded), as `config()` gives it, synchronously. */
  configInForce(): ProxyConfig
  /** What a reload did in each worker (see {@link AdminBackend.reloadByWorker}). */
  reloadByWorker(): Promise<ReloadReport>
  /** Starts talking to a (new or restarted) worker; replays switches and isolations. */
  attach(worker: Worker): void
  /** Forgets a worker that exited; true when it had come up (reported ready) before. */
  detach(worker: Worker): boolean
  /** Workers that reported ready. */
  readyWorkers(): number
  /** Whether the expected number of workers have all reported ready once (see expect). */
  hasStartedAll(): boolean
  /** Sets how many workers must have come up before the first ready. */
  expect(workers: number): void
  /** Readiness false from now on (first step of a drain). */
  beginDrain(): void
  /** Sends `drain` to every ready worker, and SIGTERM to the others (not listening for commands yet). */
  drainAll(): Promise<void>
}

/**
 * Creates the primary's admin backend: each admin command goes to every attached worker;
 * answers are gathered (state per worker; metrics with a `worker` label). A reload is
 * validated in the primary first, so an invalid file never reaches the workers.
 */
export function createClusterBackend(options: ClusterBackendOptions): ClusterBackend {
  const clock = checkClock('clock', options.clock)
  const timeoutMs = checkInteger('commandTimeoutMs', options.commandTimeoutMs ?? 10_000, 1, 600_000)
  const log = options.logger
  if (options.file !== undefined && typeof options.file !== 'string')
    throw new InvalidOptionError('file', 'the path of the config file', options.file)
  const fileField = options.file === undefined ? {} : { file: options.file }
  const workers = new Map<number, WorkerEntry>()
  const pending = new Map<
    number,
    {
      resolve: (value: unknown) => void
      reject: (error: Error) => void
      timer: TimerHandle
      /** The worker asked, and what: failed at once when it exits (see detach). */
      worker: Worker
      op: WorkerCommand['op']
    }
  >()
  const overrides = new Map<string, RouteTargetConfig[]>()
  const isolated = new Set<string>()
  // Each worker's answer to the last command sendToEach gave it (read right after).
  const answerOf = new WeakMap<WorkerEntry, unknown>()
  let config = options.config
  if (typeof options.configText !== 'string')
    throw new InvalidOptionError('configText', 'the YAML text of config', options.configText)
  // The text in force and its generation: what a starting worker is handed.
  let accepted = { text: options.configText, generation: 0 }
  const pins = new PinBook(config)
  let expected = config.workers
  let draining = false
  let startedAll = false
  let nextId = 1
  // Reloads, and bringing a worker that came up behind onto the config in force, run one at a
  // time: a worker is then never sent an older text after a newer one, and the text in force
  // does not change while a worker is being brought up to date.
  let queue: Promise<unknown> = Promise.resolve()
  let queued = 0
  function enqueue<T>(work: () => Promise<T>): Promise<T> {
    queued++
    const next = queue.then(work).finally(() => {
      queued--
    })
    queue = next.catch(() => {})
    return next
  }
  const reloads = options.metrics.counter({
    name: 'breakwater_proxy_primary_config_reloads_total',
    help: 'Config reloads the primary validated and sent to the workers.',
  })
  const reloadFailures = options.metrics.counter({
    name: 'breakwater_proxy_config_reload_failures_total',
    help: 'Config reloads refused (invalid file, or could not be applied); the old config stays.',
  })

  /** Sends `command` to `worker` and waits `waitMs` for its answer. */
  function ask(worker: Worker, command: WorkerCommand, waitMs = timeoutMs): Promise<unknown> {
    const id = nextId++
    return new Promise((resolve, reject) => {
      const timer = clock.setTimeout(() => {
        pending.delete(id)
        reject(
          new NoAnswerError(
            `worker ${worker.process.pid} did not answer ${command.op} in ${waitMs} ms`,
          ),
        )
      }, waitMs)
      pending.set(id, { resolve, reject, timer, worker, op: command.op })
      const failed = (error: Error): void => {
        if (!pending.delete(id)) return
        clock.clearTimeout(timer)
        reject(new NoAnswerError(error.message, { cause: error }))
      }
      try {
        worker.send({ bw: 'request', id, command } satisfies Message, (error: Error | null) => {
          if (error !== null) failed(error)
        })
      } catch (error) {
        failed(error as Error)
      }
    })
  }

  /**
   * Stops a worker so that the CLI's restart (which follows every exit it did not ask for)
   * replaces it: SIGTERM lets it drain its requests in flight; one that has not exited when
   * its drain time is up (a hung event loop never sees the signal) is killed.
   */
  function replace(entry: WorkerEntry): void {
    // Out of commands and readiness from now on: it is going away.
    entry.ready = false
    const { worker } = entry
    // Exited already (it failed the command by exiting): the CLI replaces it anyway.
    if (workers.get(worker.id) !== entry) return
    const killer = clock.setTimeout(() => {
      if (!worker.isDead()) worker.process.kill('SIGKILL')
    }, config.drainTimeoutMs + replaceGraceMs)
    worker.once('exit', () => clock.clearTimeout(killer))
    terminate(entry, 'could not signal a worker to replace it')
  }

  /** Sends SIGTERM once: a worker drains on it (one still starting stops once it is up). */
  function terminate(entry: WorkerEntry, failure: string): void {
    if (entry.terminated) return
    entry.terminated = true
    try {
      entry.worker.process.kill('SIGTERM')
    } catch (error) {
      log.warn(failure, { workerPid: entry.worker.process.pid, error: (error as Error).message })
    }
  }

  /**
   * Asks every ready worker `command` (a read): the answers, and each worker that did not
   * answer with why. One hung worker must not take the others' answers with it.
   */
  async function all(
    command: WorkerCommand,
  ): Promise<{ answers: unknown[]; unanswered: { pid: number; error: string }[] }> {
    const { appliedBy, failed } = await sendToEach(command)
    const answers = appliedBy.map((entry) => answerOf.get(entry))
    if (failed.length > 0)
      log.warn('some workers did not answer', { op: command.op, workers: notAppliedBy(failed) })
    return { answers, unanswered: notAppliedBy(failed) }
  }

  /** The commands that give a worker the route switches and isolations in force. */
  function replayCommands(): WorkerCommand[] {
    return [
      ...[...overrides].map(
        ([route, targets]): WorkerCommand => ({ op: 'switchRoute', route, targets }),
      ),
      ...[...isolated].map((service): WorkerCommand => ({ op: 'isolate', service })),
    ]
  }

  /**
   * Sends `command` to every ready worker, waiting `waitMs` for each answer, and sorts the
   * answers: the pids that applied it, and the workers that did not, each with its error (in
   * the order the workers were asked).
   */
  async function sendToEach(
    command: WorkerCommand,
    waitMs = timeoutMs,
  ): Promise<{
    asked: WorkerEntry[]
    applied: number[]
    appliedBy: WorkerEntry[]
    failed: { entry: WorkerEntry; pid: number; error: unknown }[]
  }> {
    const live = [...workers.values()].filter((w) => w.ready && w.worker.isConnected())
    const results = await Promise.allSettled(live.map((w) => ask(w.worker, command, waitMs)))
    const applied: number[] = []
    const appliedBy: WorkerEntry[] = []
    const failed: { entry: WorkerEntry; pid: number; error: unknown }[] = []
    results.forEach((result, i) => {
      const entry = live[i] as WorkerEntry
      const pid = entry.worker.process.pid ?? 0
      if (result.status === 'fulfilled') {
        applied.push(pid)
        appliedBy.push(entry)
        answerOf.set(entry, result.value)
      } else failed.push({ entry, pid, error: result.reason })
    })
    return { asked: live, applied, appliedBy, failed }
  }

  /**
   * A worker that came up: counted ready, and given what a worker started from the config in
   * force lacks (the live route switches, isolations and retry pins).
   */
  function welcome(entry: WorkerEntry): void {
    const { worker } = entry
    // Exited meanwhile: its replacement is welcomed instead.
    if (workers.get(worker.id) !== entry) return
    entry.ready = true
    entry.cameUp = true
    if ([...workers.values()].filter((w) => w.ready).length >= expected) startedAll = true
    // It was handed them with the config and applied them before serving; again here for a
    // worker that came up on an older config (it could not apply those its config lacked, and
    // has reloaded the one in force since). Idempotent for the others.
    for (const command of replayCommands()) void ask(worker, command).catch(() => {})
    // ... and the retry pins its siblings reported, so that its retries follow them too.
    for (const batch of pins.batches(clock.now(), pinBatchSize)) {
      try {
        worker.send({ bw: 'pins', pins: batch } satisfies Message, ignoreSendFailure)
      } catch {
        // Gone again: its replacement gets them.
      }
    }
  }

  /**
   * In the queue: a worker that came up on an older config (it was starting when a reload was
   * accepted) reloads the text in force before it is welcomed; one that cannot is replaced.
   */
  async function catchUp(entry: WorkerEntry): Promise<void> {
    const { worker } = entry
    if (workers.get(worker.id) !== entry || !worker.isConnected()) return
    if (entry.generation < accepted.generation) {
      const { text, generation } = accepted
      try {
        // Its reload is bounded by the config in force's startTimeoutMs, as any reload to it.
        await ask(worker, { op: 'reload', text, generation }, reloadWaitMs(config))
      } catch (error) {
        // A reload refused in a worker, counted once here (the workers' own count is not
        // exported in this mode: see primaryOwnedFamilies).
        reloadFailures.inc()
        log.error('a worker could not apply the config in force; replacing it', {
          workerPid: worker.process.pid,
          error: error instanceof Error ? error.message : String(error),
        })
        replace(entry)
        return
      }
      entry.generation = generation
      log.info('a worker that started on an older config reloaded the one in force', {
        workerPid: worker.process.pid,
        generation,
      })
    }
    welcome(entry)
  }

  /** The workers that did not apply a command, as PartiallyAppliedError names them. */
  function notAppliedBy(failed: readonly { pid: number; error: unknown }[]) {
    return failed.map(({ pid, error }) => ({ pid, error: reasonOf(error) }))
  }

  /**
   * Sends a change to every worker, then `record`s it in the primary once any worker applied
   * it: the workers that did keep it, so a restarted worker must be given it too. When some
   * did not, rejects with PartiallyAppliedError naming them; when none did, with the first
   * worker's error (a refusal every worker shares, such as a bad target).
   */
  async function change(command: WorkerCommand, record: () => void): Promise<void> {
    const { applied, failed } = await sendToEach(command)
    if (applied.length === 0 && failed.length > 0) throw failed[0]?.error
    record()
    // With no worker ready (all starting, or crash-looping) nobody was asked: recorded all the
    // same (the primary checked the route or service against its config), so every worker
    // starting now gets it: pushed to those that were sent the config already, the others get
    // it with the config.
    for (const entry of workers.values())
      if (!entry.ready && entry.configSent && entry.worker.isConnected()) {
        try {
          entry.worker.send({ bw: 'change', command } satisfies Message, ignoreSendFailure)
        } catch {
          // Gone: its replacement gets it with the config.
        }
      }
    if (failed.length > 0) {
      const error = new PartiallyAppliedError(command.op, applied, notAppliedBy(failed))
      log.error('a change was applied by only some workers', {
        op: command.op,
        applied,
        failed: failed.map((f) => f.pid),
      })
      throw error
    }
  }

  /**
   * Validates the file in the primary, then has every ready worker apply its text, waiting for
   * each as long as the new config lets its reload take. Resolves with what the reload did in
   * each worker; rejects with PartiallyAppliedError (carrying the same) when only some applied it.
   */
  async function reloadNow(): Promise<ReloadReport> {
    let next: ProxyConfig
    let text: string
    // Bounded by the startTimeoutMs in force, as one process bounds reading the file for a
    // reload: a file that never yields its text (a FIFO, a hung network mount) would hold this
    // queue, every reload behind it and the catching up of workers that came up, for ever.
    const bound = startBound(clock, config.startTimeoutMs, log)
    try {
      ;({ config: next, text } = await bound.wait(
        'config',
        'reading the config file',
        options.loadConfig(),
      ))
    } catch (error) {
      reloadFailures.inc()
      const invalid =
        error instanceof ConfigInvalidError
          ? error
          : new ConfigInvalidError('reload', [
              {
                path: '(file)',
                message: bound.timedOut(error) ? (error as Error).message : String(error),
                line: undefined,
                column: undefined,
              },
            ])
      log.error('config reload refused; the running config stays in force', {
        ...fileField,
        code: invalid.code,
        // As --check prints them, with the line and column: the operator reading the log
        // finds the place without running --check.
        problems: invalid.problems.map(formatProblem),
        problemCount: invalid.problemCount,
      })
      return { refused: invalid, workers: [] }
    } finally {
      bound.end()
    }
    const generation = accepted.generation + 1
    // Each worker bounds its reload by the new config's startTimeoutMs (with --start-timeout
    // standing for it, in the primary's loadConfig as in the worker) and answers with its
    // refusal once that passes: the primary waits that long, plus the margin for the answer.
    const { asked, applied, appliedBy, failed } = await sendToEach(
      { op: 'reload', text, generation },
      reloadWaitMs(next),
    )
    const adopted = applied.length > 0 || failed.length === 0
    // A worker that did not answer may still apply the new text (or be hung): replaced, so its
    // replacement runs the config in force, whichever that ends up being. One that refused
    // runs the old config: replaced only when the new one is adopted.
    const replaced = failed.filter((f) => adopted || f.error instanceof NoAnswerError)
    const report = (): WorkerReload[] =>
      asked.map((entry) => {
        const pid = entry.worker.process.pid ?? 0
        const failure = failed.find((f) => f.entry === entry)
        if (failure === undefined) return { pid, outcome: 'applied', replaced: false }
        return {
          pid,
          outcome: failure.error instanceof NoAnswerError ? 'no-answer' : 'refused',
          reason: reasonOf(failure.error),
          replaced: replaced.includes(failure),
        }
      })
    if (!adopted) {
      for (const { entry } of replaced) replace(entry)
      // Nobody runs the new file: the old config stays in force everywhere.
      const error = failed[0]?.error as Error
      reloadFailures.inc()
      log.error('no worker applied the reload; the running config stays in force', {
        ...fileField,
        workers: report(),
      })
      const refused =
        error instanceof ConfigInvalidError
          ? error
          : new ConfigInvalidError('reload', [
              {
                path: '(apply)',
                message: `expected a config every worker can apply, got ${error.message}`,
                line: undefined,
                column: undefined,
              },
            ])
      return { refused, workers: report() }
    }
    // The workers kept the route switches the reload left alone and dropped the others, and a
    // service it changed or removed got a new runtime in each worker, not isolated: the same
    // rules as in one process, so a restarted worker is given what its siblings kept. Logged
    // here, once, as one process logs it (the workers log it at debug).
    const switches = [...overrides].map(([route, targets]) => ({ route, targets }))
    const decided = overridesAfterReload(config, next, switches)
    for (const { route } of decided.dropped) overrides.delete(route)
    logOverridesAfterReload(log, decided)
    for (const service of isolated)
      if (!keepsServiceRuntime(config, next, service)) isolated.delete(service)
    config = next
    accepted = { text, generation }
    for (const entry of appliedBy) entry.generation = generation
    pins.configure(next)
    reloads.inc()
    // (After the new config is in force: a worker being replaced gets its drainTimeoutMs.)
    for (const { entry } of replaced) replace(entry)
    if (failed.length === 0) {
      log.info('config reloaded in every worker', { ...fileField, workers: workers.size })
      return { refused: undefined, workers: report() }
    }
    // Some workers run the new file and the others the old one. The new one is adopted (it
    // is valid, at least one worker applied it, and a restarted worker is handed it), and the
    // workers that did not apply it are replaced (above): their replacements start from the
    // text in force, so every worker ends up on the same config without the operator having
    // to notice.
    // Refused (or not answered) by some workers: one failure, however many workers.
    reloadFailures.inc()
    log.error('a reload was applied by only some workers; replacing the others', {
      ...fileField,
      workers: report(),
    })
    throw new PartiallyAppliedError('reload', applied, notAppliedBy(failed), report())
  }

  const backend: ClusterBackend = {
    config: async () => config,
    configInForce: () => config,
    services: async () => {
      const { answers, unanswered } = await all({ op: 'services' })
      return [
        ...(answers as WorkerServices[]),
        ...unanswered.map(({ pid, error }) => ({ pid, services: [], error })),
      ]
    },
    routes: async () => {
      const { answers, unanswered } = await all({ op: 'routes' })
      return [
        ...(answers as WorkerRoutes[]),
        ...unanswered.map(({ pid, error }) => ({ pid, routes: [], error })),
      ]
    },
    switchRoute: async (route, targets) => {
      // Checked here too: with no worker ready, no worker would refuse a bad target.
      checkTargets(config, targets)
      await change({ op: 'switchRoute', route, targets }, () => overrides.set(route, targets))
    },
    resetRoute: (route) => change({ op: 'resetRoute', route }, () => overrides.delete(route)),
    isolate: (service) => change({ op: 'isolate', service }, () => isolated.add(service)),
    reset: (service) => change({ op: 'reset', service }, () => isolated.delete(service)),
    reload: () => enqueue(reloadNow).then((report) => report.refused),
    reloadByWorker: () => enqueue(reloadNow),
    async metricsText() {
      const { appliedBy, failed } = await sendToEach({ op: 'metrics' })
      const texts = appliedBy.map((entry) => ({
        pid: entry.worker.process.pid ?? 0,
        text: String(answerOf.get(entry)),
      }))
      if (failed.length > 0)
        log.warn('some workers did not answer', { op: 'metrics', workers: notAppliedBy(failed) })
      // The healthy workers' series; a comment names each worker missing from them.
      const missing = notAppliedBy(failed)
        .map(({ pid, error }) => `# worker ${pid} did not answer: ${error.replace(/\n/g, ' ')}\n`)
        .join('')
      return mergeMetricsText(await options.metrics.render(), texts, primaryOwnedFamilies) + missing
    },
    // Ready once every worker came up; afterwards one ready worker is enough, so a worker
    // being replaced does not take the whole node out of its load balancer.
    ready: () =>
      !draining &&
      startedAll &&
      [...workers.values()].some((w) => w.ready) &&
      backend.listenersDown().length === 0,
    // A listener is down when no ready worker listens on it: node:cluster hands a port's
    // connections only to the workers listening on it, so one worker's dropped listener
    // costs capacity, not availability (its siblings still answer on that port).
    listenersDown() {
      const ready = [...workers.values()].filter((w) => w.ready)
      const [first, ...others] = ready
      if (first === undefined) return []
      return first.listenersDown.filter((name) =>
        others.every((w) => w.listenersDown.includes(name)),
      )
    },
    attach(worker) {
      workers.set(worker.id, {
        worker,
        ready: false,
        generation: 0,
        cameUp: false,
        terminated: false,
        listenersDown: [],
        configSent: false,
      })
      // Sends pass callbacks (see ignoreSendFailure); this catches anything else the channel
      // reports, which would otherwise end the primary.
      worker.on('error', (error: Error) =>
        log.warn('worker channel error', { workerPid: worker.process.pid, error: error.message }),
      )
      worker.on('message', (message: unknown) => {
        const m = message as Message
        if (typeof m !== 'object' || m === null) return
        if (m.bw === 'starting') {
          const entry = workers.get(worker.id)
          if (entry !== undefined) entry.configSent = true
          try {
            // With the switches and isolations in force, which the worker applies before it
            // serves: from its first request it routes as its siblings do.
            worker.send(
              {
                bw: 'config',
                text: accepted.text,
                generation: accepted.generation,
                workers: config.workers,
                changes: replayCommands(),
              } satisfies Message,
              ignoreSendFailure,
            )
          } catch {
            // Gone already: its replacement asks again.
          }
        } else if (m.bw === 'ready') {
          const entry = workers.get(worker.id)
          if (entry === undefined) return
          entry.generation = Number.isInteger(m.generation) ? (m.generation as number) : 0
          // Up to date with nothing under way: welcomed now. Else once the reload under way
          // is done, after reloading the text in force if it started on an older one.
          if (queued === 0 && entry.generation >= accepted.generation) welcome(entry)
          else void enqueue(() => catchUp(entry))
        } else if (m.bw === 'listeners') {
          const entry = workers.get(worker.id)
          if (entry !== undefined && Array.isArray(m.down))
            entry.listenersDown = m.down.filter((name) => typeof name === 'string')
        } else if (m.bw === 'pin') {
          pins.add(pinOf(m), clock.now())
          const pin = { bw: 'pin', ...pinOf(m) } satisfies Message
          for (const other of workers.values())
            if (other.worker.id !== worker.id && other.ready && other.worker.isConnected()) {
              try {
                // A worker going away misses the pin: its retries are routed by weight.
                other.worker.send(pin, ignoreSendFailure)
              } catch {
                // (the same, reported synchronously)
              }
            }
        } else if (m.bw === 'reply') {
          const waiting = pending.get(m.id)
          if (waiting === undefined) return
          pending.delete(m.id)
          clock.clearTimeout(waiting.timer)
          if (m.ok) waiting.resolve(m.value)
          else waiting.reject(revive(m.error))
        }
      })
    },
    detach(worker) {
      const cameUp = workers.get(worker.id)?.cameUp ?? false
      workers.delete(worker.id)
      // Its answers will never come: the commands waiting for them fail now, not at the timeout.
      for (const [id, waiting] of pending)
        if (waiting.worker === worker) {
          pending.delete(id)
          clock.clearTimeout(waiting.timer)
          waiting.reject(
            new NoAnswerError(
              `worker ${worker.process.pid} exited before it answered ${waiting.op}`,
            ),
          )
        }
      return cameUp
    },
    readyWorkers: () => [...workers.values()].filter((w) => w.ready).length,
    hasStartedAll: () => startedAll,
    expect(n) {
      expected = n
    },
    beginDrain() {
      draining = true
    },
    async drainAll() {
      draining = true
      const all = [...workers.values()].filter((w) => w.worker.isConnected())
      // A worker not up yet does not listen for commands: a drain request would be lost and
      // waited for until the command timeout. It gets SIGTERM, and one being replaced already
      // drains on its own.
      for (const entry of all)
        if (!entry.ready) terminate(entry, 'could not signal a starting worker to stop')
      await Promise.allSettled(
        all.filter((w) => w.ready).map((w) => ask(w.worker, { op: 'drain' })),
      )
    },
  }
  return backend
}

/** Options of {@link RestartBackoff}. */
export interface RestartBackoffOptions {
  /**
   * Delay before replacing a worker that crashed after it came up, and the first of a series
   * of workers that exit while starting (ms).
   * @default 500
   */
  readonly firstDelayMs?: number | undefined
  /**
   * The longest delay, reached by doubling (ms).
   * @default 30000
   */
  readonly maxDelayMs?: number | undefined
}

/**
 * How long the primary waits before replacing a worker that exited. A worker that crashed
 * while serving is replaced after `firstDelayMs`. One that exits before it came up would
 * likely fail the same way again (its store down, a file gone), so the delay doubles for each
 * such worker in a row, up to `maxDelayMs`, instead of forking a whole Node process every
 * `firstDelayMs` for as long as the cause lasts; it starts over once a worker came up.
 */
export class RestartBackoff {
  readonly #firstDelayMs: number
  readonly #maxDelayMs: number
  #failures = 0

  /** Throws InvalidOptionError (code `INVALID_OPTION`) for a bad delay. */
  constructor(options: RestartBackoffOptions = {}) {
    this.#firstDelayMs = checkInteger('firstDelayMs', options.firstDelayMs ?? 500, 1, 600_000)
    this.#maxDelayMs = checkInteger(
      'maxDelayMs',
      options.maxDelayMs ?? Math.max(30_000, this.#firstDelayMs),
      this.#firstDelayMs,
      3_600_000,
    )
  }

  /** The delay before replacing a worker that exited; `cameUp`: it had reported ready. */
  next(cameUp: boolean): number {
    if (cameUp) {
      this.#failures = 0
      return this.#firstDelayMs
    }
    const delay = Math.min(this.#firstDelayMs * 2 ** Math.min(this.#failures, 30), this.#maxDelayMs)
    this.#failures++
    return delay
  }
}

/**
 * The metric families the primary owns in the multi-process mode: the workers count them too
 * (a worker refuses a reload as one process does), but the primary counts each reload refused
 * anywhere once, so the workers' series would count it again, and mix series with and without
 * a `worker` label in one family.
 */
export const primaryOwnedFamilies: ReadonlySet<string> = new Set([
  'breakwater_proxy_config_reload_failures_total',
])

/**
 * Merges Prometheus texts: the primary's as is, each worker's samples with a
 * `worker="<pid>"` label, and one HELP/TYPE block per metric family. The workers' samples of
 * the families in `primaryOnly` are left out (see {@link primaryOwnedFamilies}).
 */
export function mergeMetricsText(
  primary: string,
  workers: readonly { readonly pid: number; readonly text: string }[],
  primaryOnly: ReadonlySet<string> = new Set(),
): string {
  const families = new Map<string, { meta: string[]; samples: string[] }>()
  const family = (name: string): { meta: string[]; samples: string[] } => {
    let entry = families.get(name)
    if (entry === undefined) {
      entry = { meta: [], samples: [] }
      families.set(name, entry)
    }
    return entry
  }
  const add = (text: string, worker: number | undefined): void => {
    let current = ''
    for (const line of text.split('\n')) {
      if (line === '') continue
      const meta = /^# (HELP|TYPE) (\S+)/.exec(line)
      if (meta !== null) {
        current = meta[2] as string
        const entry = family(current)
        if (!entry.meta.some((m) => m.startsWith(`# ${meta[1]} `))) entry.meta.push(line)
        continue
      }
      if (line.startsWith('#')) continue
      const name = current === '' ? (/^[^{\s]+/.exec(line)?.[0] ?? '') : current
      if (worker !== undefined && primaryOnly.has(name)) continue
      const sample = worker === undefined ? line : withWorkerLabel(line, worker)
      family(name).samples.push(sample)
    }
  }
  add(primary, undefined)
  for (const { pid, text } of workers) add(text, pid)
  const out: string[] = []
  for (const { meta, samples } of families.values()) out.push(...meta, ...samples)
  return `${out.join('\n')}\n`
}

function withWorkerLabel(line: string, pid: number): string {
  const brace = line.indexOf('{')
  const space = line.indexOf(' ')
  if (brace !== -1 && (space === -1 || brace < space)) {
    const close = line.indexOf('}', brace)
    const inner = line.slice(brace + 1, close)
    return `${line.slice(0, brace)}{worker="${pid}"${inner === '' ? '' : `,${inner}`}${line.slice(close)}`
  }
  return `${line.slice(0, space)}{worker="${pid}"}${line.slice(space)}`
}
