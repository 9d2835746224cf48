import { setMaxListeners } from 'node:events'
/**
 * What every policy hands to the function it runs.
 */
export interface PolicyContext {
  /**
   * Fires when this attempt should stop: the caller aborted, a timeout elapsed or the deadline
   * passed. Pass it on to fetch, undici, pg or any API that accepts a signal.
   */
  readonly signal: AbortSignal
  /** 1 for the first attempt, 2 for the first retry, and so on. */
  readonly attempt: number
}

/** The function a policy runs. */
export type PolicyFunction<T> = (context: PolicyContext) => PromiseLike<T> | T

/**
 * A resilience policy: runs a function with some protection around it. Policies compose with
 * `pipeline()` (first = outermost).
 */
export interface Policy {
  /**
   * Runs `fn` under this policy.
   * @param fn The work. It receives the signal to honour and the attempt number.
   * @param signal The caller's signal. Already aborted, the call rejects with `AbortedError`
   *   and `fn` does not run. Aborted later, `fn`'s signal aborts; a call waiting in a policy (a
   *   backoff sleep, a bulkhead queue) or timed by a `timeout()` rejects with `AbortedError` at
   *   once, while other policies settle when `fn` does (so `fn` should honour its signal).
   *   Anything but an AbortSignal (or undefined) rejects with `InvalidOptionError`, option
   *   `<policy>.execute(signal)` (e.g. `retry.execute(signal)`), and `fn` does not run.
   */
  execute<T>(fn: PolicyFunction<T>, signal?: AbortSignal): Promise<T>
}

// Shared by every call that has no caller signal, so a policy never allocates an
// AbortController just to have something to hand down.
const neverController = new AbortController()
// Every in-flight call may hand this one signal to undici, fetch or pg, each of which adds a
// listener for the life of its request; with thousands in flight Node would warn about a leak
// that is not one (the listeners leave with their requests, and the signal never fires).
setMaxListeners(0, neverController.signal)

/** A signal that never aborts. */
export const neverAbortedSignal: AbortSignal = neverController.signal
