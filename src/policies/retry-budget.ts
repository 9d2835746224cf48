import type { Clock } from '../core/clock.js'
import { InvalidOptionError } from '../core/errors.js'
import { checkKnownOptions, checkObject, optionKeys } from '../core/validate.js'
import { optionalClock, optionalInteger, optionalNumber } from './options.js'

/**
 * Limits retries to a share of the traffic, so that a struggling downstream is not hit by a
 * retry storm (every caller multiplying its load by `maxAttempts`). Share one budget between
 * every retry policy that calls the same downstream.
 */
export interface RetryBudget {
  /** Records a first attempt; it deposits `ratio` tokens. */
  recordRequest(): void
  /**
   * Takes one token for a retry; false (and nothing taken) when fewer than one is left.
   * Synchronous: `retry()` refuses a promise (it would read as true) with `InvalidOptionError`.
   */
  tryWithdraw(): boolean
  /**
   * Gives back the token of a retry that was never made: `tryWithdraw()` took it before the
   * backoff sleep, and the sleep was aborted, so no attempt reached the downstream. Undoes the
   * newest withdrawal still counted; nothing when none is. Optional: without it the token of
   * an aborted retry stays spent until it ages out.
   */
  refund?(): void
  /** Tokens available now (whole and fractional), never below 0. */
  available(): number
}

/** Options of {@link createRetryBudget}. */
export interface RetryBudgetOptions {
  /**
   * Tokens deposited per first attempt: retries allowed per request, on top of the floor.
   * 0.2 lets retries add at most 20% to the load. Kept to thousandths of a token: a positive
   * ratio below 0.0005 (which would round to no deposit) is refused.
   * @default 0.2
   */
  readonly ratio?: number | undefined
  /**
   * The floor: retries allowed per second even without traffic, so that a caller with few
   * requests can still retry. Provides `minRetriesPerSecond * ttlMs / 1000` tokens per window.
   * @default 10
   */
  readonly minRetriesPerSecond?: number | undefined
  /**
   * How long deposits (and withdrawals) count, in milliseconds.
   * @default 10_000
   */
  readonly ttlMs?: number | undefined
  /**
   * The clock that ages deposits.
   * @default systemClock
   */
  readonly clock?: Clock | undefined
}

// Deposits and withdrawals are kept in fixed point (1 token = 1000 units), as Finagle does,
// so that five deposits of 0.2 make exactly one token.
const unit = 1_000
// The window is kept as this many slices; an amount expires when its slice leaves the window,
// between (slices - 1) / slices and 1 times ttlMs after it was recorded.
const slices = 10

class TokenRetryBudget implements RetryBudget {
  readonly #deposit: number
  readonly #reserve: number
  readonly #sliceMs: number
  readonly #clock: Clock
  readonly #amounts = new Array<number>(slices).fill(0)
  // Withdrawals per slice, so that a refund only undoes one that still counts.
  readonly #withdrawals = new Array<number>(slices).fill(0)
  #sum = 0
  #slice: number

  constructor(deposit: number, reserve: number, ttlMs: number, clock: Clock) {
    this.#deposit = deposit
    this.#reserve = reserve
    this.#sliceMs = ttlMs / slices
    this.#clock = clock
    this.#slice = Math.floor(clock.now() / this.#sliceMs)
  }

  recordRequest(): void {
    this.#add(this.#deposit)
  }

  tryWithdraw(): boolean {
    if (this.#balance() < unit) return false
    this.#add(-unit)
    this.#withdrawals[this.#slice % slices]!++
    return true
  }

  refund(): void {
    this.#expire()
    // The newest slice first: the refunded retry withdrew at most one backoff ago.
    for (let s = this.#slice; s > this.#slice - slices; s--) {
      const index = ((s % slices) + slices) % slices
      if (this.#withdrawals[index]! > 0) {
        this.#withdrawals[index]!--
        this.#amounts[index]! += unit
        this.#sum += unit
        return
      }
    }
  }

  available(): number {
    return Math.max(0, this.#balance()) / unit
  }

  #balance(): number {
    this.#expire()
    return this.#reserve + this.#sum
  }

  #add(amount: number): void {
    this.#expire()
    this.#amounts[this.#slice % slices]! += amount
    this.#sum += amount
  }

  // Drops the slices that left the window since the last call. A clock that moves back
  // (wall-clock adjustments) leaves the window as it is.
  #expire(): void {
    const slice = Math.floor(this.#clock.now() / this.#sliceMs)
    const passed = slice - this.#slice
    if (passed <= 0) return
    if (passed >= slices) {
      this.#amounts.fill(0)
      this.#withdrawals.fill(0)
      this.#sum = 0
    } else {
      for (let s = this.#slice + 1; s <= slice; s++) {
        const index = s % slices
        this.#sum -= this.#amounts[index]!
        this.#amounts[index] = 0
        this.#withdrawals[index] = 0
      }
    }
    this.#slice = slice
  }
}

/** The option keys `createRetryBudget` takes (internal: not exported from the package root). */
export const retryBudgetOptions = optionKeys<RetryBudgetOptions>({
  ratio: true,
  minRetriesPerSecond: true,
  ttlMs: true,
  clock: true,
})

/**
 * A retry budget as in Finagle's `RetryBudget` (and Envoy's retry budgets): every first
 * attempt deposits `ratio` tokens, every retry withdraws one, deposits and withdrawals count
 * for `ttlMs`, and a reserve of `minRetriesPerSecond * ttlMs / 1000` tokens is always added, so
 * retries are limited to `ratio` of the traffic plus that floor. Pass it to `retry({ budget })`;
 * when it is spent, retry fails with `RetryBudgetExhaustedError`. Retry takes the token before
 * its backoff sleep and gives it back (`refund()`) when the sleep is aborted: only retries
 * actually made count. An unknown (misspelt) option is refused with `InvalidOptionError`
 * (code `INVALID_OPTION`) naming it.
 *
 * @example
 * ```ts
 * import { createRetryBudget, retry } from 'breakwater'
 * const budget = createRetryBudget({ ratio: 0.1, minRetriesPerSecond: 5 })
 * const toPayments = retry({ maxAttempts: 3, budget })
 * const toLedger = retry({ maxAttempts: 5, budget }) // same downstream, same budget
 * ```
 */
export function createRetryBudget(options: RetryBudgetOptions = {}): RetryBudget {
  checkKnownOptions('retryBudget', checkObject('retryBudget', options), retryBudgetOptions)
  const ratio = optionalNumber('retryBudget.ratio', options.ratio, 0.2, 0, 1_000)
  const perSecond = optionalNumber(
    'retryBudget.minRetriesPerSecond',
    options.minRetriesPerSecond,
    10,
    0,
    1_000_000,
  )
  const ttlMs = optionalInteger('retryBudget.ttlMs', options.ttlMs, 10_000, 10, 3_600_000)
  const reserve = Math.round(perSecond * (ttlMs / 1_000) * unit)
  const deposit = Math.round(ratio * unit)
  // Amounts are kept in thousandths of a token: a positive option that rounds to nothing would
  // silently allow no retries at all.
  if (ratio > 0 && deposit === 0)
    throw new InvalidOptionError('retryBudget.ratio', `0 or a number >= ${0.5 / unit}`, ratio)
  if (perSecond > 0 && reserve === 0)
    throw new InvalidOptionError(
      'retryBudget.minRetriesPerSecond',
      `0 or a number >= ${0.5 / unit / (ttlMs / 1_000)} (with ttlMs ${ttlMs})`,
      perSecond,
    )
  return new TokenRetryBudget(
    deposit,
    reserve,
    ttlMs,
    optionalClock('retryBudget.clock', options.clock),
  )
}
