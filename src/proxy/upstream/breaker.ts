import type { Clock } from '../../core/clock.js'
import type { CircuitState } from '../../index.js'
import type { BreakerConfig } from '../contracts.js'

/**
 * A service's circuit breaker, shaped for the forward path: admission is a state check and a
 * counter, outcomes are recorded by direct calls, and nothing allocates per request. Its
 * semantics are those of the library's `circuitBreaker()` with a consecutive-failures window:
 * closed counts consecutive failed attempts and opens at `failureThreshold`; open fails fast
 * until `cooldownMs` has passed on the clock; half-open admits `halfOpenProbes` attempts, all
 * must succeed to close it and one failure opens it again; isolated fails everything until
 * reset. An attempt admitted before the latest state change does not count (epochs).
 * The library policy wraps each call in a promise chain, which the proxy's streaming handler
 * does not need. Without a config it never trips but can still be isolated by hand.
 */
export class ServiceBreaker {
  readonly #config: BreakerConfig | undefined
  readonly #clock: Clock
  #state: CircuitState = 'closed'
  #epoch = 0
  #failures = 0
  #openUntil = 0
  #probes = 0
  #probeSuccesses = 0
  /** Called on each state change. */
  onChange: ((to: CircuitState) => void) | undefined

  /** @param config Undefined: never trips by itself, can still be isolated. */
  constructor(config: BreakerConfig | undefined, clock: Clock) {
    this.#config = config
    this.#clock = clock
  }

  /** True when configured (the admin API shows `disabled` otherwise, unless isolated). */
  get enabled(): boolean {
    return this.#config !== undefined
  }

  /** The state now (an open breaker past its cooldown reads as half-open). */
  get state(): CircuitState {
    if (this.#state === 'open' && this.#clock.now() >= this.#openUntil) this.#to('half-open')
    return this.#state
  }

  /** Milliseconds until an open breaker lets a probe through. */
  retryAfterMs(): number {
    return this.#state === 'open' ? Math.max(0, this.#openUntil - this.#clock.now()) : 0
  }

  /**
   * The `Retry-After` of a `BROKEN_CIRCUIT` answer: {@link retryAfterMs} in whole seconds,
   * rounded up and at least 1 (half-open with every probe slot taken, or a cooldown with less
   * than a second left, still says 1: a 0 would read as "retry now" and bring the client back
   * while the probe is out).
   */
  retryAfterSeconds(): number {
    return Math.max(1, Math.ceil(this.retryAfterMs() / 1000))
  }

  /**
   * Admits an attempt: returns its epoch (>= 0) to hand back to {@link record}, or -1 when the
   * breaker refuses it.
   */
  admit(): number {
    if (this.#state === 'closed') return this.#epoch
    if (this.state === 'half-open' && this.#probes < (this.#config?.halfOpenProbes ?? 1)) {
      this.#probes++
      return this.#epoch
    }
    return -1
  }

  /**
   * Records an admitted attempt's outcome: `true` failed (connect error, reset, timeout, a
   * counted 5xx status), `false` answered, `undefined` says nothing (the client went away, or
   * the proxy's own pool refused the request before sending it).
   */
  record(epoch: number, failed: boolean | undefined): void {
    if (epoch !== this.#epoch || this.#config === undefined) return
    if (this.#state === 'closed') {
      if (failed === undefined) return
      if (!failed) this.#failures = 0
      else if (++this.#failures >= this.#config.failureThreshold) this.#to('open')
    } else if (this.#state === 'half-open') {
      if (failed === undefined) this.#probes--
      else if (failed) this.#to('open')
      else if (++this.#probeSuccesses >= this.#config.halfOpenProbes) this.#to('closed')
    }
  }

  /** Opens by hand: every attempt is refused until {@link reset}. */
  isolate(): void {
    this.#to('isolated')
  }

  /** Closes the breaker and forgets the failure count. */
  reset(): void {
    this.#to('closed')
  }

  #to(state: CircuitState): void {
    this.#state = state
    this.#epoch++
    this.#failures = 0
    this.#probes = 0
    this.#probeSuccesses = 0
    if (state === 'open') this.#openUntil = this.#clock.now() + (this.#config?.cooldownMs ?? 0)
    this.onChange?.(state)
  }
}
