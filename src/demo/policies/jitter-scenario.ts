import type { Clock } from '../../core/clock.js'
import { checkClock, checkInteger, checkNumber, checkObject } from '../../core/validate.js'
import type { Jitter } from '../../policies/backoff.js'
import { seededRandom } from '../../policies/random.js'
import { retry } from '../../policies/retry.js'
import { createDemoClient } from './client.js'
import { CallLog, peakInWindow } from './measure.js'
import type { DemoTransport } from './services.js'
import { createFaultyService } from './services.js'
import {
  type Conclusion,
  formatMs,
  type ScenarioHeading,
  scaled,
  type VariantResult,
} from './types.js'

/** Options of {@link runJitterScenario}. */
export interface JitterScenarioOptions {
  /**
   * Clients that fail at the same moment and retry.
   * @default 200
   */
  readonly clients?: number | undefined
  /**
   * Attempts per client, the first included.
   * @default 10
   */
  readonly maxAttempts?: number | undefined
  /**
   * Multiplies every duration of the story (outage 3 s, 100 ms of work per request, backoff
   * from 100 ms up to 3.2 s, peak window 200 ms) so the scenario runs in a fraction of the time.
   * Not as small as the other scenarios' x0.1: jittered retries spread over a few hundred
   * milliseconds stay measurably spread even when a busy machine stalls the event loop for
   * tens of milliseconds.
   * @default 0.25
   */
  readonly timeScale?: number | undefined
  /**
   * Seed of the full-jitter random source, for repeatable delays.
   * @default 1
   */
  readonly seed?: number | undefined
  /**
   * The clock for backoff, the service's work and all measurements.
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

/** One variant of the jitter scenario. */
export interface JitterVariantResult extends VariantResult {
  readonly jitter: Jitter
  /** The most requests the service received in any window of `windowMs` after it came back. */
  readonly peak: number
  /** Requests the service turned away with 503 after it came back, for lack of capacity. */
  readonly shed: number
}

/** What {@link runJitterScenario} measured. */
export interface JitterScenarioResult extends ScenarioHeading {
  readonly scenario: 'jitter'
  /** The window `peak` is counted over, in milliseconds. */
  readonly windowMs: number
  /** No jitter first, then full jitter. */
  readonly variants: readonly [JitterVariantResult, JitterVariantResult]
}

// The story, in the seed's time: the service is down for 3 s, then serves 20 requests at a
// time, 100 ms each, and sheds the rest; clients back off from 100 ms, doubling up to 3.2 s.
const outageSeedMs = 3_000
const workSeedMs = 100
const capacity = 20
const baseDelaySeedMs = 100
const maxDelaySeedMs = 3_200
const windowSeedMs = 200

/**
 * "Jitter spreads retry waves." Many clients fail at the same moment against a service that
 * is down and then comes back with limited capacity. Without jitter their retries arrive in
 * synchronized waves that overflow the recovering service again and again; with full jitter
 * the same retries spread out. Runs both variants against a fresh local service each and
 * reports the peak load in any short window and the requests shed after recovery.
 *
 * @example
 * ```ts
 * const result = await runJitterScenario({ clients: 100 })
 * console.log(result.variants.map((v) => `${v.label}: peak ${v.peak}`), result.conclusion.text)
 * ```
 */
export async function runJitterScenario(
  options: JitterScenarioOptions = {},
): Promise<JitterScenarioResult> {
  checkObject('jitterScenario', options)
  const clients = checkInteger('jitterScenario.clients', options.clients ?? 200, 1, 10_000)
  const maxAttempts = checkInteger('jitterScenario.maxAttempts', options.maxAttempts ?? 10, 2, 20)
  const timeScale = checkNumber('jitterScenario.timeScale', options.timeScale ?? 0.25, 0.01, 10)
  const seed = checkInteger('jitterScenario.seed', options.seed ?? 1, 0)
  const clock = checkClock('jitterScenario.clock', options.clock)
  const outageMs = scaled(outageSeedMs, timeScale)
  const workMs = scaled(workSeedMs, timeScale)
  const baseDelayMs = scaled(baseDelaySeedMs, timeScale)
  const maxDelayMs = scaled(maxDelaySeedMs, timeScale)
  const windowMs = scaled(windowSeedMs, timeScale)

  const runVariant = async (jitter: Jitter, label: string): Promise<JitterVariantResult> => {
    const service = await createFaultyService({
      transport: options.transport ?? 'http',
      clock,
    })
    const client = createDemoClient()
    try {
      // Open every client's connection first, and run the failure and retry paths once so
      // they are compiled: the clients are already talking to the service when it fails, and
      // their first failures and retries really happen at the same moment, not spread out by
      // a cold start.
      service.behave(({ index }) => ({ kind: 'respond', status: index % 2 === 0 ? 503 : 200 }))
      const warmUp = retry({ maxAttempts: 3, baseDelayMs: 1, clock })
      await Promise.all(
        Array.from({ length: clients }, () =>
          warmUp.execute(() => client.get(service.url)).catch(() => {}),
        ),
      )
      service.resetStats()
      const policy = retry({
        maxAttempts,
        baseDelayMs,
        factor: 2,
        maxDelayMs,
        jitter,
        random: seededRandom(seed),
        clock,
      })
      let retries = 0
      policy.events.on((event) => {
        if (event.type === 'retry') retries++
      })
      let shed = 0
      const recoverAtMs = clock.now() + outageMs
      service.behave(({ nowMs, inFlight }) => {
        if (nowMs < recoverAtMs) return { kind: 'respond', status: 503 }
        if (inFlight >= capacity) {
          shed++
          return { kind: 'respond', status: 503 }
        }
        return { kind: 'respond', status: 200, delayMs: workMs }
      })
      const log = new CallLog(clock)
      await Promise.all(
        Array.from({ length: clients }, () =>
          log.time(() => policy.execute(({ signal }) => client.get(service.url, signal))),
        ),
      )
      const stats = service.stats
      return {
        label,
        jitter,
        ...log.summary(),
        retries,
        load: stats.received,
        // The first failures hit at the same moment in both variants; what differs is how
        // the retries arrive once the service is back.
        peak: peakInWindow(
          stats.arrivalsMs.filter((atMs) => atMs >= recoverAtMs),
          windowMs,
        ),
        shed,
      }
    } finally {
      await client.close()
      await service.close()
    }
  }

  const none = await runVariant('none', 'no jitter')
  const full = await runVariant('full', 'full jitter')
  return {
    scenario: 'jitter',
    title: 'Jitter spreads retry waves',
    setup: [
      `${clients} clients fail at once: the service answers 503 for ${formatMs(outageMs)},`,
      `then serves ${capacity} at a time (${formatMs(workMs)} each) and sheds the rest with 503.`,
      `Retry: ${maxAttempts} attempts, backoff ${formatMs(baseDelayMs)} doubling to ` +
        `${formatMs(maxDelayMs)}; no jitter vs full jitter.`,
    ],
    timeScale,
    windowMs,
    variants: [none, full],
    conclusion: concludeJitter(none, full, windowMs),
  }
}

/** The verdict under the table, from the two variants' numbers (exported for tests). */
export function concludeJitter(
  none: JitterVariantResult,
  full: JitterVariantResult,
  windowMs: number,
): Conclusion {
  const holds = full.peak < none.peak && full.shed < none.shed
  const figures =
    `peak ${none.peak} -> ${full.peak} requests per ${formatMs(windowMs)}, ` +
    `shed while recovering ${none.shed} -> ${full.shed}, ` +
    `clients served ${none.successes} -> ${full.successes} of ${full.calls}`
  return {
    holds,
    text: holds
      ? `Full jitter spread the retry waves: ${figures}.`
      : `NOT shown by this run (no jitter -> full jitter): ${figures}.`,
  }
}
