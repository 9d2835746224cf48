import {
  bulkhead,
  circuitBreaker,
  createKeyedBreakers,
  fallback,
  pipeline,
  retry,
  timeout,
} from '../../src/index.js'

/** What every policy, fallbacks included, offers. */
export interface Executes {
  execute(fn: () => unknown, signal?: AbortSignal): Promise<unknown>
}

/**
 * One of each policy, for tests of what every policy's `execute` does with its arguments:
 * [test name, the name its errors give it (`<name>.execute(signal)`), a factory].
 */
export const everyPolicy: ReadonlyArray<readonly [string, string, () => Executes]> = [
  ['retry', 'retry', () => retry()],
  ['timeout', 'timeout', () => timeout(1000)],
  ['circuitBreaker', 'circuitBreaker', () => circuitBreaker()],
  [
    'a keyed breaker',
    'circuitBreaker',
    () => createKeyedBreakers({ create: () => circuitBreaker() }).get('inventory'),
  ],
  ['bulkhead', 'bulkhead', () => bulkhead({ maxConcurrent: 1 })],
  ['fallback', 'fallback', () => fallback('fallback value')],
  ['a fused pipeline', 'pipeline', () => pipeline(retry(), timeout(1000))],
  ['a linked pipeline', 'pipeline', () => pipeline(fallback(0), bulkhead({ maxConcurrent: 1 }))],
]
