import { type Clock, sleep } from '../../core/clock.js'
import { checkClock, checkInteger, checkNumber, checkObject } from '../../core/validate.js'
import { type CircuitState, circuitBreaker } from '../../policies/circuit-breaker.js'
import { pipeline } from '../../policies/pipeline.js'
import { seededRandom } from '../../policies/random.js'
import { retry } from '../../policies/retry.js'
import type { Policy } from '../../policies/types.js'
import { createDemoClient } from './client.js'
import { CallLog } from './measure.js'
import type { DemoTransport } from './services.js'
import { createFaultyService } from './services.js'
import {
  type Conclusion,
  formatMs,
  type ScenarioHeading,
  scaled,
  type VariantResult,
} from './types.js'

/** Options of {@link runBreakerScenario}. */
export interface BreakerScenarioOptions {
  /**
   * Calls made in each variant, one every 50 ms of the story; the service is down for the
   * first half of them.
   * @default 240
   */
  readonly calls?: number | undefined
  /**
   * Multiplies every duration of the story (a call every 50 ms, answers in 20 ms, a 1 s
   * cooldown, backoff from 100 ms).
   * @default 0.1
   */
  readonly timeScale?: number | undefined
  /**
   * Seed of the backoff jitter.
   * @default 1
   */
  readonly seed?: number | undefined
  /**
   * The clock for pacing, backoff, the cooldown and measurements.
   * @default systemClock
   */
  readonly clock?: Clock | undefined
  /**
   * How the calls reach the scenario's services: real HTTP on 127.0.0.1, or `'memory'` (no
   * sockets; with a ManualClock the scenario runs in virtual time, as the tests run it).
   * @default 'http'
   */
  readonly transport?: DemoTransport | undefined
}

/** A state change of the breaker, with when it happened relative to the service's return. */
export interface BreakerTransition {
  readonly from: CircuitState
  readonly to: CircuitState
  /** Milliseconds after the service came back (negative: while it was down). */
  readonly afterRecoveryMs: number
}

/** One variant of the breaker scenario. */
export interface BreakerVariantResult extends VariantResult {
  /** Requests the service received while it was down. */
  readonly loadWhileDown: number
  /** The breaker's state changes, in order (none without a breaker). */
  readonly transitions: readonly BreakerTransition[]
}

/** What {@link runBreakerScenario} measured. */
export interface BreakerScenarioResult extends ScenarioHeading {
  readonly scenario: 'breaker'
  /** How long the service was down, in milliseconds. */
  readonly downMs: number
  /** Retry alone first, then retry around a circuit breaker. */
  readonly variants: readonly [BreakerVariantResult, BreakerVariantResult]
}

const intervalSeedMs = 50
const answerSeedMs = 20
const cooldownSeedMs = 1_000
const baseDelaySeedMs = 100
const attempts = 3
const consecutiveFailures = 5

/**
 * "The breaker takes load off a down service." Calls arrive at a steady rate at a service
 * that resets every connection for a while, then comes back. Retry alone sends every call and
 * its retries to the dead service; retry around a circuit breaker stops calling after a few
 * failures, fails calls fast, probes after each cooldown and closes once a probe succeeds.
 *
 * @example
 * ```ts
 * const result = await runBreakerScenario({ calls: 120 })
 * const [plain, guarded] = result.variants
 * console.log(plain.loadWhileDown, guarded.loadWhileDown, guarded.transitions.length)
 * ```
 */
export async function runBreakerScenario(
  options: BreakerScenarioOptions = {},
): Promise<BreakerScenarioResult> {
  checkObject('breakerScenario', options)
  const calls = checkInteger('breakerScenario.calls', options.calls ?? 240, 2, 100_000)
  const timeScale = checkNumber('breakerScenario.timeScale', options.timeScale ?? 0.1, 0.01, 10)
  const seed = checkInteger('breakerScenario.seed', options.seed ?? 1, 0)
  const clock = checkClock('breakerScenario.clock', options.clock)
  const intervalMs = scaled(intervalSeedMs, timeScale)
  const answerMs = scaled(answerSeedMs, timeScale)
  const cooldownMs = scaled(cooldownSeedMs, timeScale)
  const baseDelayMs = scaled(baseDelaySeedMs, timeScale)
  const downMs = Math.round((calls / 2) * intervalMs)

  const runVariant = async (label: string, withBreaker: boolean): Promise<BreakerVariantResult> => {
    const retryPolicy = retry({
      maxAttempts: attempts,
      baseDelayMs,
      random: seededRandom(seed),
      clock,
    })
    let retries = 0
    retryPolicy.events.on((event) => {
      if (event.type === 'retry') retries++
    })
    const seen: { from: CircuitState; to: CircuitState; atMs: number }[] = []
    let policy: Policy = retryPolicy
    let dispose = (): void => {}
    if (withBreaker) {
      const breaker = circuitBreaker({
        window: { kind: 'consecutive', failures: consecutiveFailures },
        cooldownMs,
        clock,
      })
      breaker.events.on((event) => {
        if (event.type === 'stateChange')
          seen.push({ from: event.from, to: event.to, atMs: clock.now() })
      })
      // Retry outside the breaker: an open circuit's refusal is final, not retried.
      policy = pipeline(retryPolicy, breaker)
      dispose = () => breaker.dispose()
    }
    const service = await createFaultyService({
      transport: options.transport ?? 'http',
      clock,
    })
    const client = createDemoClient()
    try {
      const upAtMs = clock.now() + downMs
      service.behave(({ nowMs }) =>
        nowMs < upAtMs ? { kind: 'reset' } : { kind: 'respond', status: 200, delayMs: answerMs },
      )
      const log = new CallLog(clock)
      const running: Promise<void>[] = []
      for (let i = 0; i < calls; i++) {
        running.push(
          log.time(() => policy.execute(({ signal }) => client.get(service.url, signal))),
        )
        await sleep(clock, intervalMs)
      }
      await Promise.all(running)
      const stats = service.stats
      return {
        label,
        ...log.summary(),
        retries,
        load: stats.received,
        loadWhileDown: stats.arrivalsMs.filter((atMs) => atMs < upAtMs).length,
        transitions: seen.map(({ from, to, atMs }) => ({
          from,
          to,
          afterRecoveryMs: atMs - upAtMs,
        })),
      }
    } finally {
      dispose()
      await client.close()
      await service.close()
    }
  }

  const plain = await runVariant('retry only', false)
  const guarded = await runVariant('retry + breaker', true)
  return {
    scenario: 'breaker',
    title: 'The breaker takes load off a down service',
    setup: [
      `${calls} calls, one every ${formatMs(intervalMs)}; the service resets connections ` +
        `for ${formatMs(downMs)}, then answers in ${formatMs(answerMs)}.`,
      `Retry: ${attempts} attempts from ${formatMs(baseDelayMs)}; breaker: opens after ` +
        `${consecutiveFailures} failures in a row, ${formatMs(cooldownMs)} cooldown.`,
    ],
    timeScale,
    downMs,
    variants: [plain, guarded],
    conclusion: concludeBreaker(plain, guarded),
  }
}

/**
 * Renders a breaker's state changes compactly, folding repeated failed probes:
 * `closed -> open -> (half-open -> open) x4 -> half-open -> closed`.
 */
export function transitionPath(transitions: readonly BreakerTransition[]): string {
  const first = transitions[0]
  if (first === undefined) return 'no transitions'
  const states: CircuitState[] = [first.from, ...transitions.map((t) => t.to)]
  const parts: string[] = []
  let i = 0
  while (i < states.length) {
    let repeats = 0
    while (states[i + 2 * repeats] === 'half-open' && states[i + 2 * repeats + 1] === 'open')
      repeats++
    if (repeats >= 2) {
      parts.push(`(half-open -> open) x${repeats}`)
      i += 2 * repeats
    } else {
      parts.push(states[i]!)
      i++
    }
  }
  return parts.join(' -> ')
}

/** The verdict under the table, from the two variants' numbers (exported for tests). */
export function concludeBreaker(
  plain: BreakerVariantResult,
  guarded: BreakerVariantResult,
): Conclusion {
  const last = guarded.transitions.at(-1)
  const closedAgain = last?.to === 'closed' && last.afterRecoveryMs >= 0
  const holds =
    guarded.loadWhileDown < plain.loadWhileDown && guarded.fastFailures > 0 && closedAgain
  const cut =
    plain.loadWhileDown === 0
      ? 0
      : Math.round((1 - guarded.loadWhileDown / plain.loadWhileDown) * 100)
  const reopened = closedAgain
    ? `closed again ${formatMs(last.afterRecoveryMs)} after the service came back`
    : 'had not closed again by the end'
  const figures =
    `requests to the down service ${plain.loadWhileDown} -> ${guarded.loadWhileDown} (-${cut}%), ` +
    `${guarded.fastFailures} calls failed fast, the breaker ${reopened}`
  return {
    holds,
    text: holds
      ? `The breaker took the load off: ${figures}.`
      : `NOT shown by this run: ${figures}.`,
  }
}
