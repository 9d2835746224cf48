import type { Clock } from '../../core/clock.js'
import { checkClock, checkInteger, checkNumber, checkObject } from '../../core/validate.js'
import { pipeline } from '../../policies/pipeline.js'
import { seededRandom } from '../../policies/random.js'
import { retry } from '../../policies/retry.js'
import { timeout } from '../../policies/timeout.js'
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

/** Options of {@link runTimeoutScenario}. */
export interface TimeoutScenarioOptions {
  /**
   * Calls made in each variant.
   * @default 300
   */
  readonly calls?: number | undefined
  /**
   * Calls in flight at once.
   * @default 30
   */
  readonly concurrency?: number | undefined
  /**
   * The share of requests the dependency never answers (0 to 0.5).
   * @default 0.05
   */
  readonly hangRate?: number | undefined
  /**
   * Multiplies every duration of the story (answers in 20-80 ms, a 10 s timeout against a
   * 500 ms timeout with retries backing off from 100 ms).
   * @default 0.1
   */
  readonly timeScale?: number | undefined
  /**
   * Seed of the random source that picks the requests that hang, the answer times and the
   * backoff jitter.
   * @default 1
   */
  readonly seed?: number | undefined
  /**
   * The clock for timeouts, backoff, the dependency's answers and measurements.
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

/** What {@link runTimeoutScenario} measured. */
export interface TimeoutScenarioResult extends ScenarioHeading {
  readonly scenario: 'timeout'
  /** Requests the dependency left hanging, per variant. */
  readonly hangs: readonly [number, number]
  /** One long timeout first, then a short timeout with retries. */
  readonly variants: readonly [VariantResult, VariantResult]
}

const fastestSeedMs = 20
const slowestSeedMs = 80
const longTimeoutSeedMs = 10_000
const shortTimeoutSeedMs = 500
const baseDelaySeedMs = 100
const attempts = 3

/**
 * "A 500 ms timeout with retries beats one 10 s timeout at p99." A dependency answers in tens
 * of milliseconds but leaves a few requests hanging for ever. A caller with one long timeout
 * waits it out for every hung request, which sets its p99; a caller with a short per-attempt
 * timeout gives up early and retries, and the retry almost always lands on a request that is
 * answered.
 *
 * @example
 * ```ts
 * const result = await runTimeoutScenario({ calls: 100 })
 * const [long, short] = result.variants
 * console.log(`p99 ${long.p99Ms} ms vs ${short.p99Ms} ms`)
 * ```
 */
export async function runTimeoutScenario(
  options: TimeoutScenarioOptions = {},
): Promise<TimeoutScenarioResult> {
  checkObject('timeoutScenario', options)
  const calls = checkInteger('timeoutScenario.calls', options.calls ?? 300, 1, 100_000)
  const concurrency = checkInteger(
    'timeoutScenario.concurrency',
    options.concurrency ?? 30,
    1,
    1_000,
  )
  const hangRate = checkNumber('timeoutScenario.hangRate', options.hangRate ?? 0.05, 0, 0.5)
  const timeScale = checkNumber('timeoutScenario.timeScale', options.timeScale ?? 0.1, 0.01, 10)
  const seed = checkInteger('timeoutScenario.seed', options.seed ?? 1, 0)
  const clock = checkClock('timeoutScenario.clock', options.clock)
  const fastestMs = scaled(fastestSeedMs, timeScale)
  const slowestMs = scaled(slowestSeedMs, timeScale)
  const longMs = scaled(longTimeoutSeedMs, timeScale)
  const shortMs = scaled(shortTimeoutSeedMs, timeScale)
  const baseDelayMs = scaled(baseDelaySeedMs, timeScale)

  const runVariant = async (
    label: string,
    policy: Policy,
    countRetries: () => number,
  ): Promise<{ result: VariantResult; hangs: number }> => {
    const random = seededRandom(seed)
    const service = await createFaultyService({
      transport: options.transport ?? 'http',
      clock,
      behaviour: () =>
        random() < hangRate
          ? { kind: 'hang' }
          : {
              kind: 'respond',
              status: 200,
              delayMs: fastestMs + Math.round(random() * (slowestMs - fastestMs)),
            },
    })
    const client = createDemoClient()
    try {
      const log = new CallLog(clock)
      let next = 0
      // A fixed number of callers, each making its next call when the last one ends.
      const caller = async (): Promise<void> => {
        while (next < calls) {
          next++
          await log.time(() => policy.execute(({ signal }) => client.get(service.url, signal)))
        }
      }
      await Promise.all(Array.from({ length: Math.min(concurrency, calls) }, caller))
      const stats = service.stats
      return {
        result: { label, ...log.summary(), retries: countRetries(), load: stats.received },
        hangs: stats.hangs,
      }
    } finally {
      await client.close()
      await service.close()
    }
  }

  const long = await runVariant(
    `one ${formatMs(longMs)} timeout`,
    timeout(longMs, { clock }),
    () => 0,
  )
  const retryPolicy = retry({
    maxAttempts: attempts,
    baseDelayMs,
    random: seededRandom(seed + 1),
    clock,
  })
  let retries = 0
  retryPolicy.events.on((event) => {
    if (event.type === 'retry') retries++
  })
  const short = await runVariant(
    `${formatMs(shortMs)} timeout x${attempts}`,
    pipeline(retryPolicy, timeout(shortMs, { clock })),
    () => retries,
  )
  return {
    scenario: 'timeout',
    title: 'A 500 ms timeout + retries beats one 10 s timeout at p99',
    setup: [
      `The dependency answers in ${fastestMs}-${formatMs(slowestMs)} but never ` +
        `answers ${Math.round(hangRate * 100)}% of requests; ${calls} calls, ${concurrency} at a time.`,
      `One ${formatMs(longMs)} timeout vs ${formatMs(shortMs)} per attempt, ${attempts} ` +
        `attempts, backoff from ${formatMs(baseDelayMs)}.`,
    ],
    timeScale,
    hangs: [long.hangs, short.hangs],
    variants: [long.result, short.result],
    conclusion: concludeTimeout(long.result, short.result),
  }
}

/** The verdict under the table, from the two variants' numbers (exported for tests). */
export function concludeTimeout(long: VariantResult, short: VariantResult): Conclusion {
  // Lower p99 alone is also what failing sooner gives: the retries must also have kept (or won
  // back) the calls the long timeout served.
  const holds = short.p99Ms < long.p99Ms && short.successes >= long.successes
  const figures =
    `p99 ${formatMs(long.p99Ms)} -> ${formatMs(short.p99Ms)}, p50 ${formatMs(long.p50Ms)} -> ` +
    `${formatMs(short.p50Ms)}, successes ${long.successes} -> ${short.successes} of ${short.calls}`
  return {
    holds,
    text: holds
      ? `The short timeout with retries won at p99, losing no calls: ${figures}.`
      : `NOT shown by this run (long -> short + retries): ${figures}.`,
  }
}
