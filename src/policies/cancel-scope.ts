import { neverAbortedSignal, type PolicyContext } from './types.js'

// Lazy cancellation for the policies' own contexts.
//
// A real AbortController costs an allocation, an EventTarget and a listener per link, and a
// pipeline of timeout + retry + timeout would need one per policy per call, although almost no
// call ever aborts. A CancelScope is the same idea done lazily: it knows its parents (an outer
// scope or a real AbortSignal), answers `aborted` by asking them, and only subscribes to them
// (and only creates its AbortController) when somebody needs to be told: a function that reads
// `ctx.signal`, or a policy that must react at once (a retry's backoff sleep, a timeout racing
// a caller's signal). Scopes are internal; users only ever see real AbortSignals.

/** Something to tell when a parent scope or signal aborts. */
export interface AbortListener {
  /** The parent aborted with `reason`. Called at most once per subscription. */
  parentAborted(reason: unknown): void
}

/** What a policy runs under: an outer scope, or a caller's real signal. */
export type CancelParent = CancelScope | AbortSignal

/**
 * Key of the method through which a breakwater context exposes its scope. Module-local on
 * purpose: a second installed copy of breakwater reads `context.signal` instead.
 */
export const cancelScope: unique symbol = Symbol('breakwater.cancelScope')

interface ScopedContext extends PolicyContext {
  [cancelScope](): CancelParent | undefined
}

/** The parent a policy runs under when handed `context` (undefined: it can never abort). */
export function parentOf(context: PolicyContext): CancelParent | undefined {
  const scoped = (context as Partial<ScopedContext>)[cancelScope]
  if (typeof scoped === 'function') return scoped.call(context)
  const signal = context.signal
  return signal === neverAbortedSignal ? undefined : signal
}

/** The parent for a caller's signal as passed to `execute(fn, signal)`. */
export function parentOfSignal(signal: AbortSignal | undefined): CancelParent | undefined {
  return signal === neverAbortedSignal ? undefined : signal
}

/** True when aborting `parent` can come from outside breakwater (a caller's real signal). */
export function hasExternalSignal(parent: CancelParent | undefined): boolean {
  if (parent === undefined) return false
  return parent instanceof CancelScope ? parent.hasExternalSignal() : true
}

/** True when a caller's real signal among `parent` and its ancestors has aborted. */
export function externalSignalAborted(parent: CancelParent | undefined): boolean {
  if (parent === undefined) return false
  return parent instanceof CancelScope ? parent.externalSignalAborted() : parent.aborted
}

/** The AbortSignal to hand to a function running under `parent`. */
export function signalOf(parent: CancelParent | undefined): AbortSignal {
  if (parent === undefined) return neverAbortedSignal
  return parent instanceof CancelScope ? parent.signal : parent
}

/** Subscribes `listener` to `parent` (nothing for undefined). */
export function listen(parent: CancelParent | undefined, listener: AbortListener): void {
  if (parent === undefined) return
  if (parent instanceof CancelScope) parent.addListener(listener)
  else listenToSignal(parent, listener)
}

/** Undoes {@link listen}. */
export function unlisten(parent: CancelParent | undefined, listener: AbortListener): void {
  if (parent === undefined) return
  if (parent instanceof CancelScope) parent.removeListener(listener)
  else unlistenToSignal(parent, listener)
}

// breakwater's listeners on one caller's real signal, told through a single listener of the
// signal's own. A caller commonly shares one signal across a fan-out of concurrent calls (a
// request's signal for every call it makes): one listener per call would make Node warn
// (MaxListenersExceededWarning) past 10, although nothing leaks. The entry goes with the last
// listener, so a long-lived signal holds nothing of finished calls.
class SignalListeners {
  readonly #signal: AbortSignal
  readonly listeners = new Set<AbortListener>()

  constructor(signal: AbortSignal) {
    this.#signal = signal
  }

  handleEvent(): void {
    const reason = this.#signal.reason
    const listeners = this.listeners
    // As an EventTarget does: a listener removed by an earlier one is not told, one added
    // meanwhile neither; one that throws does not keep the others from being told.
    for (const listener of [...listeners]) {
      if (!listeners.has(listener)) continue
      try {
        listener.parentAborted(reason)
      } catch (error) {
        queueMicrotask(() => {
          throw error
        })
      }
    }
  }
}

const signalListeners = new WeakMap<AbortSignal, SignalListeners>()

/**
 * Tells `listener` when the real `signal` aborts (not if it already has, as for
 * `addEventListener`), sharing one listener of the signal's own with every other breakwater
 * listener on it. Undone by {@link unlistenToSignal}.
 */
export function listenToSignal(signal: AbortSignal, listener: AbortListener): void {
  let entry = signalListeners.get(signal)
  if (entry === undefined) {
    entry = new SignalListeners(signal)
    signalListeners.set(signal, entry)
    signal.addEventListener('abort', entry)
  }
  entry.listeners.add(listener)
}

/** Undoes {@link listenToSignal}; the last listener to go removes the signal's own. */
export function unlistenToSignal(signal: AbortSignal, listener: AbortListener): void {
  const entry = signalListeners.get(signal)
  if (entry === undefined || !entry.listeners.delete(listener)) return
  if (entry.listeners.size > 0) return
  signalListeners.delete(signal)
  signal.removeEventListener('abort', entry)
}

/** A lazily linked cancellation scope with up to two parents. */
export class CancelScope implements AbortListener {
  #aborted = false
  #reason: unknown
  #controller: AbortController | undefined
  #listeners: AbortListener[] | undefined
  readonly #parent: CancelParent | undefined
  readonly #parent2: CancelParent | undefined
  #linked = false
  // Set by link(): the owner must hear of an abort until it closes the scope, whoever else
  // comes and goes as a listener.
  #pinned = false
  #closed = false

  constructor(parent?: CancelParent, parent2?: CancelParent) {
    this.#parent = parent
    this.#parent2 = parent2
  }

  /** True once this scope, one of its ancestors, or its own expiry has aborted it. */
  get aborted(): boolean {
    if (this.#aborted) return true
    const expired = this.expiry()
    if (expired !== undefined) {
      this.abort(expired)
      return true
    }
    const p1 = this.#parent
    if (p1?.aborted) {
      this.abort(p1.reason)
      return true
    }
    const p2 = this.#parent2
    if (p2?.aborted) {
      this.abort(p2.reason)
      return true
    }
    return false
  }

  /** Why the scope aborted, or undefined while it has not. */
  get reason(): unknown {
    return this.aborted ? this.#reason : undefined
  }

  /** A real AbortSignal that follows this scope; created (and linked up) on first read. */
  get signal(): AbortSignal {
    let controller = this.#controller
    if (controller === undefined) {
      controller = new AbortController()
      this.#controller = controller
      if (this.aborted) controller.abort(this.#reason)
      else this.#link()
    }
    return controller.signal
  }

  /** Tells `listener` when this scope aborts (at once if it already has). */
  addListener(listener: AbortListener): void {
    if (this.aborted) {
      listener.parentAborted(this.#reason)
      return
    }
    let listeners = this.#listeners
    if (listeners === undefined) {
      listeners = []
      this.#listeners = listeners
    }
    listeners.push(listener)
    this.#link()
  }

  /** Stops telling `listener`; a scope nobody listens to lets go of its parents. */
  removeListener(listener: AbortListener): void {
    const listeners = this.#listeners
    if (listeners === undefined) return
    const index = listeners.indexOf(listener)
    if (index < 0) return
    const last = listeners.pop()!
    if (index < listeners.length) listeners[index] = last
    if (listeners.length === 0 && this.#controller === undefined && !this.#pinned) this.#unlink()
  }

  /**
   * Aborts the scope, its signal (if created) and everything listening, once. A scope its owner
   * linked (see {@link CancelScope.link}) stays subscribed to its parents until closed: the
   * owner may still have to hear of an abort that comes later (a timeout that ran out and
   * waits for fn must still answer its caller's abort at once).
   */
  abort(reason: unknown): void {
    if (this.#aborted) return
    this.#aborted = true
    this.#reason = reason
    if (!this.#pinned) this.#unlink()
    this.#controller?.abort(reason)
    const listeners = this.#listeners
    if (listeners === undefined) return
    this.#listeners = undefined
    for (let i = 0; i < listeners.length; i++) {
      try {
        listeners[i]!.parentAborted(reason)
      } catch (error) {
        queueMicrotask(() => {
          throw error
        })
      }
    }
  }

  parentAborted(reason: unknown): void {
    this.abort(this.#firstReason(reason))
  }

  // A parent just told us it aborted with `reason`; the other parent (or the scope's own
  // expiry) may have aborted before without telling us (a deadline expires by the clock, with
  // no timer while nobody listens). That one came first, and its reason is the scope's, as for
  // AbortSignal.any() made before either aborted.
  #firstReason(reason: unknown): unknown {
    if (this.#aborted) return reason
    const expired = this.expiry()
    if (expired !== undefined) return expired
    const p1 = this.#parent
    if (p1?.aborted && p1.reason !== reason) return p1.reason
    const p2 = this.#parent2
    if (p2?.aborted && p2.reason !== reason) return p2.reason
    return reason
  }

  /** The owner is done with the scope: unlink from the parents and never link again. */
  close(): void {
    this.#closed = true
    this.#unlink()
  }

  /** True when a caller's real signal is among the ancestors. */
  hasExternalSignal(): boolean {
    return hasExternalSignal(this.#parent) || hasExternalSignal(this.#parent2)
  }

  /** True when a caller's real signal among the ancestors has aborted. */
  externalSignalAborted(): boolean {
    return externalSignalAborted(this.#parent) || externalSignalAborted(this.#parent2)
  }

  /** Subclass hook: the abort reason once the scope has expired by itself, else undefined. */
  protected expiry(): unknown {
    return undefined
  }

  /** Subclass hook: somebody started listening (set up what makes the scope fire). */
  protected onLink(): void {}

  /** Subclass hook: nobody listens any more. */
  protected onUnlink(): void {}

  /**
   * Subscribes to the parents now, for owners that must hear of an abort at once, and stays
   * subscribed until {@link CancelScope.close}: a listener that leaves (a retry's backoff sleep
   * inside) must not unlink a timeout that races its caller's signal.
   */
  protected link(): void {
    this.#pinned = true
    this.#link()
  }

  #link(): void {
    if (this.#linked || this.#closed || this.#aborted) return
    this.#linked = true
    listen(this.#parent, this)
    if (this.#aborted) return
    listen(this.#parent2, this)
    if (this.#aborted) return
    this.onLink()
  }

  #unlink(): void {
    if (!this.#linked) return
    this.#linked = false
    unlisten(this.#parent, this)
    unlisten(this.#parent2, this)
    this.onUnlink()
  }
}
