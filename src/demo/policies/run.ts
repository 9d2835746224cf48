import { monitorEventLoopDelay } from 'node:perf_hooks'
import type { Clock } from '../../core/clock.js'
import { InvalidOptionError } from '../../core/errors.js'
import { checkClock, checkFunction, checkNumber, checkObject } from '../../core/validate.js'
import { type BreakerScenarioOptions, runBreakerScenario } from './breaker-scenario.js'
import { type BulkheadScenarioOptions, runBulkheadScenario } from './bulkhead-scenario.js'
import { type JitterScenarioOptions, runJitterScenario } from './jitter-scenario.js'
import { eventLoopDelayP99Ms as eventLoopDelayP99 } from './measure.js'
import { type PolicyScenarioResult, renderFooter, renderHeader, renderScenario } from './report.js'
import { runTimeoutScenario, type TimeoutScenarioOptions } from './timeout-scenario.js'

// How often the event loop's delay is sampled while the scenarios play.
const delayResolutionMs = 10

/** The policy scenarios, in the order the demo plays them. */
export const policyScenarioNames = ['jitter', 'bulkhead', 'timeout', 'breaker'] as const

/** The name of one policy scenario. */
export type PolicyScenarioName = (typeof policyScenarioNames)[number]

/** Options of {@link runPoliciesDemo}. */
export interface PoliciesDemoOptions {
  /**
   * Receives the report, one line at a time (without the newline).
   * @default discards the report
   */
  readonly write?: ((line: string) => void) | undefined
  /**
   * Which scenarios to play, in the demo's order whatever the order here.
   * @default all four
   */
  readonly only?: readonly PolicyScenarioName[] | undefined
  /**
   * Multiplies every duration of every scenario's story, unless a scenario's own options
   * set `timeScale`.
   * @default each scenario's own: x0.25 for jitter, x0.1 for the others
   */
  readonly timeScale?: number | undefined
  /**
   * Options of the jitter scenario (smaller runs, other seeds).
   * @default {}
   */
  readonly jitter?: JitterScenarioOptions | undefined
  /**
   * Options of the bulkhead scenario.
   * @default {}
   */
  readonly bulkhead?: BulkheadScenarioOptions | undefined
  /**
   * Options of the timeout scenario.
   * @default {}
   */
  readonly timeout?: TimeoutScenarioOptions | undefined
  /**
   * Options of the breaker scenario.
   * @default {}
   */
  readonly breaker?: BreakerScenarioOptions | undefined
  /**
   * The clock of every scenario that does not set its own, and of the total run time.
   * @default systemClock
   */
  readonly clock?: Clock | undefined
}

/** What {@link runPoliciesDemo} measured. */
export interface PoliciesDemoResult {
  /** One result per scenario played, in order. */
  readonly results: readonly PolicyScenarioResult[]
  /** How many scenarios' numbers showed their claim. */
  readonly claimsShown: number
  /** Wall time of the whole run, in milliseconds. */
  readonly elapsedMs: number
  /**
   * The 99th percentile of the event loop's delay during the run, in milliseconds. Callers
   * and services share one event loop, so a busy machine shows here and blurs every timing.
   */
  readonly eventLoopDelayP99Ms: number
}

/**
 * Plays the policy scenarios one after another, each without and with its policy against
 * fresh local HTTP services, and writes a report a person can read: per scenario a table and
 * a one-line conclusion computed from the numbers. Resolves with every scenario's figures;
 * never exits the process.
 *
 * @example
 * ```ts
 * const { claimsShown } = await runPoliciesDemo({ write: (line) => console.log(line) })
 * ```
 */
export async function runPoliciesDemo(
  options: PoliciesDemoOptions = {},
): Promise<PoliciesDemoResult> {
  checkObject('policiesDemo', options)
  const write =
    options.write === undefined
      ? () => {}
      : checkFunction<(line: string) => void>('policiesDemo.write', options.write)
  const only = options.only ?? policyScenarioNames
  if (!Array.isArray(only) || only.some((name) => !policyScenarioNames.includes(name))) {
    throw new InvalidOptionError(
      'policiesDemo.only',
      `a list of ${policyScenarioNames.map((n) => `"${n}"`).join(', ')}`,
      only,
    )
  }
  const timeScale =
    options.timeScale === undefined
      ? undefined
      : checkNumber('policiesDemo.timeScale', options.timeScale, 0.01, 10)
  const clock = checkClock('policiesDemo.clock', options.clock)
  // A scenario's own timeScale or clock given as undefined means the run's, as leaving it out
  // does: a plain spread would let the undefined replace it (null still reaches the scenario,
  // which refuses it).
  const withDefaults = <
    T extends { readonly timeScale?: number | undefined; readonly clock?: Clock | undefined },
  >(
    own: T | undefined,
  ): T =>
    ({
      ...own,
      timeScale: own?.timeScale === undefined ? timeScale : own.timeScale,
      clock: own?.clock === undefined ? clock : own.clock,
    }) as T
  const play: Record<PolicyScenarioName, () => Promise<PolicyScenarioResult>> = {
    jitter: () => runJitterScenario(withDefaults(options.jitter)),
    bulkhead: () => runBulkheadScenario(withDefaults(options.bulkhead)),
    timeout: () => runTimeoutScenario(withDefaults(options.timeout)),
    breaker: () => runBreakerScenario(withDefaults(options.breaker)),
  }

  const startMs = clock.now()
  const delay = monitorEventLoopDelay({ resolution: delayResolutionMs })
  delay.enable()
  const results: PolicyScenarioResult[] = []
  try {
    for (const line of renderHeader()) write(line)
    for (const name of policyScenarioNames) {
      if (!only.includes(name)) continue
      const result = await play[name]()
      results.push(result)
      write('')
      for (const line of renderScenario(result, results.length)) write(line)
    }
  } finally {
    delay.disable()
  }
  const elapsedMs = clock.now() - startMs
  const eventLoopDelayP99Ms = eventLoopDelayP99(delay, delayResolutionMs)
  write('')
  for (const line of renderFooter(results, elapsedMs, eventLoopDelayP99Ms)) write(line)
  return {
    results,
    claimsShown: results.filter((r) => r.conclusion.holds).length,
    elapsedMs,
    eventLoopDelayP99Ms,
  }
}
