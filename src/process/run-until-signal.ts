import { constants as osConstants } from 'node:os'
import { type Clock, keepProcessAlive, maxTimerDelayMs, type TimerHandle } from '../core/clock.js'
import { BreakwaterError, InvalidOptionError } from '../core/errors.js'
import {
  checkClock,
  checkFunction,
  checkInteger,
  checkObject,
  checkOptionKeys,
  optionKeys,
} from '../core/validate.js'

/** A started long-running service, as the `start` function of {@link runUntilSignal} returns it. */
export interface RunningService {
  /**
   * Shuts down gracefully: stop taking new work, finish the work in hand, release resources.
   * Called once, after a signal (or after `done` settled).
   */
  stop(): Promise<void>
  /**
   * Settles when the service ends by itself (resolves: finished; rejects: failed). A service
   * that only ends when stopped leaves it out.
   * @default never settles
   */
  readonly done?: Promise<void>
}

/** Where signals come from: `process` by default, an `EventEmitter` in tests. */
export interface SignalTarget {
  on(signal: NodeJS.Signals, listener: (signal: NodeJS.Signals) => void): unknown
  off(signal: NodeJS.Signals, listener: (signal: NodeJS.Signals) => void): unknown
}

/** Options of {@link runUntilSignal}. */
export interface RunUntilSignalOptions {
  /**
   * The signals that start a graceful shutdown. A second one gives up waiting (outcome
   * `drain: 'forced'`), whether it comes during the drain or while `start` is still running.
   * Distinct names this platform knows (`os.constants.signals`), not SIGKILL or SIGSTOP.
   * @default ['SIGTERM', 'SIGINT']
   */
  readonly signals?: readonly NodeJS.Signals[] | undefined
  /**
   * How long `stop()` may take after a signal before the run gives up on it (outcome
   * `drain: 'timeout'`). A function is asked at the first signal, for a bound that can change
   * while the service runs (a reloaded config's); what it returns is checked then, and a value
   * out of range rejects the run with `INVALID_OPTION`. A `stop()` that closes a broker
   * subscriber should bound it below this (the adapters' `closeTimeoutMs`, also 30 s by
   * default): the drain's timer starts first, so with equal bounds the run can end with
   * `drain: 'timeout'` instead of rejecting with the `SUBSCRIPTION_CLOSE_TIMEOUT` that names
   * the topic and group given up.
   * @default 30_000
   */
  readonly drainTimeoutMs?: number | (() => number) | undefined
  /**
   * Called when a signal arrives: `'drain'` for the first, `'force'` for any later one (during
   * the drain, or during a start that the first one interrupted). For logging, with a logger
   * that cannot throw: an error it throws is not caught (a bug should surface), but only after
   * the drain or the forced end has been set off. It is thrown from the signal listener, so on
   * `process` it is an uncaughtException, which, with no handler for it, ends the process at
   * once: before `stop()` ran, without a graceful shutdown.
   * @default none
   */
  readonly onSignal?: ((signal: NodeJS.Signals, phase: 'drain' | 'force') => void) | undefined
  /**
   * Keeps the event loop alive while the service runs, for services whose only handles are
   * unreferenced timers (a relay on SQLite): otherwise Node would exit under them.
   * @default true
   */
  readonly keepAlive?: boolean | undefined
  /**
   * Where signals are listened for.
   * @default process
   */
  readonly target?: SignalTarget | undefined
  /**
   * Times the drain.
   * @default systemClock
   */
  readonly clock?: Clock | undefined
}

/** How {@link runUntilSignal} ended. */
export type RunOutcome =
  | {
      /** A signal stopped the service. */
      readonly reason: 'signal'
      readonly signal: NodeJS.Signals
      /**
       * `'complete'`: `stop()` resolved in time; `'timeout'`: it took longer than
       * `drainTimeoutMs`; `'forced'`: a second signal cut the wait short (for `stop()`, or for a
       * `start` still running).
       */
      readonly drain: 'complete' | 'timeout' | 'forced'
    }
  | {
      /** The service's `done` resolved by itself (then it was stopped). */
      readonly reason: 'ended'
    }

const defaultSignals: readonly NodeJS.Signals[] = ['SIGTERM', 'SIGINT']
// No process can listen for these.
const uncatchableSignals: ReadonlySet<string> = new Set(['SIGKILL', 'SIGSTOP'])

/** The keys RunUntilSignalOptions takes (internal: not exported from the package root). */
export const runUntilSignalOptions = optionKeys<RunUntilSignalOptions>({
  signals: true,
  drainTimeoutMs: true,
  onSignal: true,
  keepAlive: true,
  target: true,
  clock: true,
})

/**
 * Runs a long-running service until SIGTERM or SIGINT, then shuts it down gracefully: calls
 * `start`, waits for a signal, calls the service's `stop()` and waits up to `drainTimeoutMs`
 * for it. A signal that arrives while `start` is still running aborts the signal handed to
 * `start` and stops the service as soon as it is up. A second signal forces the end: during
 * the drain the run stops waiting for `stop()`; during a start (one that does not give up on
 * its abort signal, such as a connect that hangs) it resolves at once with `drain: 'forced'`
 * rather than wait for `start` to settle, since the user asked twice; the service that `start`
 * still brings up is then stopped in the background, and a failure of that start or stop is
 * ignored (nobody is left to tell, as with a `stop()` still running after a forced drain).
 * A service whose `done` settles is stopped too; a signal during that `stop()` bounds it the
 * same way (`drainTimeoutMs`, then a second signal), and the run then resolves with the signal's
 * outcome unless `done` rejected, whose error it still rejects with.
 * Signal listeners are installed before `start` runs (so a signal never kills the process with
 * its default action mid-start), in the call itself, before its first await (a caller that held
 * the signals until then can let go of them in the same turn), and removed before the promise
 * settles.
 *
 * Resolves with how the run ended; the caller (a CLI's `main`) decides the exit code. Rejects
 * when `start` or `stop` rejects, or when `done` rejects (after `stop()` was tried, with
 * `done`'s error even when that `stop()` rejects too). Never calls `process.exit`.
 *
 * @example
 * ```ts
 * import { runUntilSignal } from 'breakwater'
 * const outcome = await runUntilSignal(async () => {
 *   await relay.start()
 *   return { stop: () => relay.stop() }
 * }, { drainTimeoutMs: 10_000 })
 * process.exitCode = outcome.reason === 'signal' && outcome.drain !== 'complete' ? 1 : 0
 * ```
 */
export async function runUntilSignal(
  start: (signal: AbortSignal) => RunningService | Promise<RunningService>,
  options: RunUntilSignalOptions = {},
): Promise<RunOutcome> {
  checkFunction('start', start)
  checkObject('runUntilSignal', options)
  // A misspelt option (`drainTimeoutMS`) would drain with the 30 s default without a word.
  checkOptionKeys('runUntilSignal', options, runUntilSignalOptions)
  const signals = options.signals ?? defaultSignals
  // Checked before any listener is installed: an unknown name ('SIGTRM') listens for nothing
  // and leaves SIGTERM to its default action; process.on('SIGKILL') throws EINVAL after the
  // listeners before it were installed for good; a repeated name makes one signal both drain
  // and force.
  if (
    !Array.isArray(signals) ||
    signals.length === 0 ||
    signals.some(
      (s, i) =>
        typeof s !== 'string' ||
        !Object.hasOwn(osConstants.signals, s) ||
        uncatchableSignals.has(s) ||
        signals.indexOf(s) !== i,
    )
  )
    throw new InvalidOptionError(
      'runUntilSignal.signals',
      'a non-empty array of distinct signal names this platform knows, other than SIGKILL and SIGSTOP',
      signals,
    )
  const drainOption = options.drainTimeoutMs ?? 30_000
  const checkDrain = (ms: number): number =>
    checkInteger('runUntilSignal.drainTimeoutMs', ms, 0, maxTimerDelayMs)
  // A number is checked now; a function's answer when it is asked (at the first signal).
  const fixedDrainMs = typeof drainOption === 'function' ? undefined : checkDrain(drainOption)
  const drainTimeoutMs = (): number => fixedDrainMs ?? checkDrain((drainOption as () => number)())
  const onSignal =
    options.onSignal === undefined
      ? () => {}
      : checkFunction<NonNullable<RunUntilSignalOptions['onSignal']>>(
          'runUntilSignal.onSignal',
          options.onSignal,
        )
  if (options.keepAlive !== undefined && typeof options.keepAlive !== 'boolean')
    throw new InvalidOptionError('runUntilSignal.keepAlive', 'a boolean', options.keepAlive)
  const target: SignalTarget = options.target ?? process
  if (typeof target?.on !== 'function' || typeof target.off !== 'function')
    throw new InvalidOptionError('runUntilSignal.target', 'an object with on() and off()', target)
  const clock = checkClock('clock', options.clock)

  const aborter = new AbortController()
  let received: NodeJS.Signals | undefined
  let wakeRun: () => void = () => {}
  let forceDrain: () => void = () => {}
  let signalled: () => void = () => {}
  // Settles at the first signal: from then on, stop() gets drainTimeoutMs.
  const firstSignal = new Promise<void>((resolve) => {
    signalled = resolve
  })
  // Settles at the second signal, whether start is still running or the drain has begun.
  const forced = new Promise<'forced'>((resolve) => {
    forceDrain = () => resolve('forced')
  })
  const listener = (signal: NodeJS.Signals): void => {
    // onSignal is called first (its log line comes before what the signal sets off), but a
    // throwing one must not swallow the signal: its error still surfaces, after the drain or
    // the forced end has begun.
    if (received === undefined) {
      received = signal
      try {
        onSignal(signal, 'drain')
      } finally {
        aborter.abort(signal)
        signalled()
        wakeRun()
      }
    } else {
      try {
        onSignal(signal, 'force')
      } finally {
        forceDrain()
      }
    }
  }
  const keepAlive = (options.keepAlive ?? true) ? holdOpen(clock) : () => {}
  try {
    // Inside the try: a target that throws on one signal leaves none of the others installed.
    for (const signal of signals) target.on(signal, listener)
    let service: RunningService
    const starting = (async () => start(aborter.signal))()
    const started = await Promise.race([
      starting.then(
        (value) => ({ ok: true as const, value }),
        (error: unknown) => ({ ok: false as const, error }),
      ),
      forced,
    ])
    if (started === 'forced') {
      // Asked twice: stop waiting for start. What it still brings up is stopped.
      starting
        .then((late) => (typeof late?.stop === 'function' ? late.stop() : undefined))
        .catch(() => {})
      return { reason: 'signal', signal: received!, drain: 'forced' }
    }
    if (started.ok) service = started.value
    else {
      const { error } = started
      // A start that gave up because the signal asked it to is a clean shutdown.
      if (received !== undefined && isAbort(error, aborter.signal))
        return { reason: 'signal', signal: received, drain: 'complete' }
      throw error
    }
    if (typeof service !== 'object' || service === null || typeof service.stop !== 'function')
      throw new InvalidOptionError('start()', 'a RunningService with stop()', service)
    const done: unknown = service.done
    if (done !== undefined && typeof (done as { then?: unknown } | null)?.then !== 'function') {
      // The service is up: it is stopped (in the background, nobody waits for a failure) rather
      // than left running under a run that rejects.
      Promise.resolve()
        .then(() => service.stop())
        .catch(() => {})
      throw new InvalidOptionError('start().done', 'a promise, or undefined', done)
    }

    // Wait for a signal or for the service to end by itself.
    let ended: { ok: true } | { ok: false; error: unknown } | undefined
    await new Promise<void>((resolve) => {
      wakeRun = resolve
      if (received !== undefined) resolve()
      service.done?.then(
        () => {
          ended = { ok: true }
          resolve()
        },
        (error: unknown) => {
          ended = { ok: false, error }
          resolve()
        },
      )
    })
    // stop() gets drainTimeoutMs from the first signal, and a second signal ends the wait, also
    // for a service that ended by itself: a SIGTERM there must not be swallowed while a hung
    // stop() (and keepAlive) hold the process open.
    const stopWithin = async (): Promise<'complete' | 'timeout' | 'forced'> => {
      let timer: TimerHandle | undefined
      let over = false
      // A stop() that returns no promise (`() => server.close()`) is a stop that has finished.
      const stopping = Promise.resolve(service.stop())
      // Once the wait is over (timeout, forced), a late failure of stop() has nobody to tell.
      stopping.catch(() => {})
      try {
        return await Promise.race([
          stopping.then(() => 'complete' as const),
          firstSignal.then(() => {
            if (over) return 'complete' as const
            const ms = drainTimeoutMs()
            return new Promise<'timeout'>((resolve) => {
              timer = clock.setTimeout(() => resolve('timeout'), ms)
            })
          }),
          forced,
        ])
      } finally {
        over = true
        clock.clearTimeout(timer)
      }
    }
    if (received === undefined) {
      // Ended by itself: release what it holds, then report. A service that failed often cannot
      // stop cleanly either (its connection is gone): its own error says what happened, so it
      // is the one the run rejects with, whatever stop() did.
      const drain = await stopWithin().catch((error: unknown) => {
        throw ended?.ok === false ? ended.error : error
      })
      if (ended?.ok === false) throw ended.error
      if (drain === 'complete') return { reason: 'ended' }
      // Not 'complete': a signal came during stop() (TS still narrows `received` to undefined).
      return { reason: 'signal', signal: received as unknown as NodeJS.Signals, drain }
    }
    const signal = received
    return { reason: 'signal', signal, drain: await stopWithin() }
  } finally {
    keepAlive()
    for (const signal of signals) target.off(signal, listener)
  }
}

function isAbort(error: unknown, signal: AbortSignal): boolean {
  if (error === signal.reason) return true
  if (BreakwaterError.is(error) && error.code === 'ABORTED') return true
  return error instanceof Error && error.name === 'AbortError'
}

// A referenced timer, re-armed when it fires: the cheapest handle that keeps Node running. The
// clock's timers are unreferenced (they must not hold a process open), so this one is ref'd
// explicitly (keepProcessAlive); with a test clock there is nothing to ref and nothing to hold.
function holdOpen(clock: Clock): () => void {
  let handle: TimerHandle | undefined
  let released = false
  const arm = (): void => {
    if (released) return
    handle = clock.setTimeout(arm, maxTimerDelayMs)
    keepProcessAlive(handle)
  }
  arm()
  return () => {
    released = true
    clock.clearTimeout(handle)
  }
}
