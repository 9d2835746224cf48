import type { RunOutcome, SignalTarget } from '../process/index.js'

// Until a process listens for SIGTERM or SIGINT, Node leaves them their default action: the
// process ends at once (exit 143 or 130 in a shell), skipping the graceful stop a command
// promises. Loading a command's modules can take a second or more on a busy machine, so a
// command with a graceful stop holds them from its first moment until its own handlers are on.

/** SIGTERM and SIGINT held until a command's own handlers are on; see {@link holdSignals}. */
export interface HeldSignals {
  /** Aborts at the first signal held; its reason is the signal's name. */
  readonly signal: AbortSignal
  /**
   * Stops holding SIGHUP: true when one came while held. For a command that handles SIGHUP
   * itself (relay and saga worker ignore it, the proxy reloads), called once its own handler is
   * on, in the same turn, so that none falls in between. Later calls give false.
   */
  takeHangup(): boolean
  /**
   * Stops holding: the command's own handlers are on, and it has seen `signal`. A SIGHUP held
   * and not taken over ({@link HeldSignals.takeHangup}) gets its default action now: the
   * process ends, as it would have with nothing held.
   */
  handOver(): void
  /**
   * Gives the signals their default action back: one held already ends the process now, one
   * that comes later as soon as it is dispatched. For a command that ends up with no graceful
   * stop of its own (`demo policies`). A no-op after {@link HeldSignals.handOver}.
   */
  release(): void
}

/**
 * Listens for SIGTERM, SIGINT and SIGHUP on `target` until {@link HeldSignals.handOver} or
 * {@link HeldSignals.release}: the first SIGTERM or SIGINT aborts {@link HeldSignals.signal},
 * later ones are taken as said (the command stops at its next step anyway). A SIGHUP is noted,
 * not a stop: every command that holds signals handles it once running or gives it its default
 * action ({@link HeldSignals.takeHangup}). Handed over, the signals are the handlers' the
 * command installed before.
 */
export function holdSignals(target: SignalTarget = process): HeldSignals {
  const aborter = new AbortController()
  const names = ['SIGTERM', 'SIGINT'] as const
  let holding = true
  let holdingHangup = true
  let hungUp = false
  // Set by release(): a signal that comes from then on is raised again with its default action.
  let passOn = false
  const stopHangup = (): boolean => {
    if (!holdingHangup) return false
    holdingHangup = false
    target.off('SIGHUP', holdHangup)
    return hungUp
  }
  const stop = (): void => {
    if (!holding) return
    holding = false
    for (const name of names) target.off(name, hold)
  }
  const raise = (signal: NodeJS.Signals): void => {
    stop()
    stopHangup()
    // No listener left: the signal's default action ends the process, as if never held.
    // A test's target has no default action to give.
    if (target === process) process.kill(process.pid, signal)
  }
  function hold(signal: NodeJS.Signals): void {
    if (passOn) raise(signal)
    else if (!aborter.signal.aborted) aborter.abort(signal)
  }
  function holdHangup(): void {
    if (passOn) raise('SIGHUP')
    else hungUp = true
  }
  for (const name of names) target.on(name, hold)
  target.on('SIGHUP', holdHangup)
  return {
    signal: aborter.signal,
    takeHangup: stopHangup,
    handOver() {
      stop()
      if (stopHangup()) raise('SIGHUP')
    },
    release() {
      if (!holding || passOn) return
      // A test's target has no default action to give.
      if (target !== process) {
        stop()
        stopHangup()
      } else if (aborter.signal.aborted) raise(aborter.signal.reason as NodeJS.Signals)
      else if (hungUp) raise('SIGHUP')
      // The listeners stay rather than go at once: a signal the OS delivered while the command
      // ran without yielding to the event loop (loading modules) reaches it only later, and
      // with no listener left it would be dropped, neither held nor given its default action.
      else passOn = true
    },
  }
}

/**
 * Runs `run` (a call of runUntilSignal, which installs its SIGTERM and SIGINT handlers as it is
 * called, before its first await) and hands `held` over in the same turn: no signal falls
 * between the two. When one was held already, nothing is run: `before` is told (for its log
 * line) and the outcome is that of a stop by that signal, with nothing to drain.
 */
export function runHandedOver(
  held: HeldSignals | undefined,
  run: () => Promise<RunOutcome>,
  before: (signal: NodeJS.Signals) => void,
): Promise<RunOutcome> {
  if (held?.signal.aborted === true) {
    held.handOver()
    const signal = held.signal.reason as NodeJS.Signals
    before(signal)
    return Promise.resolve({ reason: 'signal', signal, drain: 'complete' })
  }
  const running = run()
  held?.handOver()
  return running
}
