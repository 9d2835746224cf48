import type { RunOutcome, SignalTarget } from '../process/index.js'

// Until a process listens for SIGTERM or SIGINT, Node leaves them their default action: the
// process ends at once (exit 143 or 130 in a shell), skipping the graceful stop a command
// promises. Loading a command's modules can take a second or more on a busy machine, so a
// command with a graceful stop holds them from its first moment until its own handlers are on.

/** SIGTERM and SIGINT held until a command's own handlers are on; see {@link holdSignals}. */
export interface HeldSignals {
  /** Aborts at the first signal held; its reason is the signal's name. */
  readonly signal: AbortSignal
  /** Stops holding: the command's own handlers are on, and it has seen `signal`. */
  handOver(): void
  /**
   * Gives the signals their default action back: one held already ends the process now, one
   * that comes later as soon as it is dispatched. For a command that ends up with no graceful
   * stop of its own (`demo policies`). A no-op after {@link HeldSignals.handOver}.
   */
  release(): void
}

/**
 * Listens for SIGTERM and SIGINT on `target` until {@link HeldSignals.handOver} or
 * {@link HeldSignals.release}: the first one aborts {@link HeldSignals.signal}, later ones are
 * taken as said (the command stops at its next step anyway). Handed over, the signals are the
 * handlers' the command installed before.
 */
export function holdSignals(target: SignalTarget = process): HeldSignals {
  const aborter = new AbortController()
  const names = ['SIGTERM', 'SIGINT'] as const
  let holding = true
  // Set by release(): a signal that comes from then on is raised again with its default action.
  let passOn = false
  const stop = (): void => {
    if (!holding) return
    holding = false
    for (const name of names) target.off(name, hold)
  }
  const raise = (signal: NodeJS.Signals): void => {
    stop()
    // No listener left: the signal's default action ends the process, as if never held.
    process.kill(process.pid, signal)
  }
  function hold(signal: NodeJS.Signals): void {
    if (passOn) raise(signal)
    else if (!aborter.signal.aborted) aborter.abort(signal)
  }
  for (const name of names) target.on(name, hold)
  return {
    signal: aborter.signal,
    handOver: stop,
    release() {
      if (!holding || passOn) return
      // A test's target has no default action to give.
      if (target !== process) stop()
      else if (aborter.signal.aborted) raise(aborter.signal.reason as NodeJS.Signals)
      // The listener stays rather than go at once: a signal the OS delivered while the command
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
