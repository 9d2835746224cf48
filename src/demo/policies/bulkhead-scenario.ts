import { type Clock, sleep } from '../../core/clock.js'
import { checkClock, checkInteger, checkNumber, checkObject } from '../../core/validate.js'
import { type Bulkhead, bulkhead } from '../../policies/bulkhead.js'
import { createBulkheads } from '../../policies/bulkhead-registry.js'
import { createDemoClient } from './client.js'
import { CallLog } from './measure.js'
import type { DemoTransport } from './services.js'
import { createFaultyService, type FaultyService } from './services.js'
import {
  type Conclusion,
  formatMs,
  type ScenarioHeading,
  scaled,
  type VariantResult,
} from './types.js'

/** Options of {@link runBulkheadScenario}. */
export interface BulkheadScenarioOptions {
  /**
   * Calls to each of B, C and D, one to each every 100 ms of the story.
   * @default 120
   */
  readonly callsPerDownstream?: number | undefined
  /**
   * Multiplies every duration of the story (D answers in 5 s, B and C in 50 ms, a call to each
   * every 100 ms, a queued call gives up after 1 s).
   * @default 0.1
   */
  readonly timeScale?: number | undefined
  /**
   * The clock for pacing, the services' answers, queue timeouts and measurements.
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

/** The three downstreams of service A. */
export type Downstream = 'B' | 'C' | 'D'

/** One variant of the bulkhead scenario: one row per downstream. */
export interface BulkheadVariantResult {
  readonly label: string
  readonly byDownstream: Readonly<Record<Downstream, VariantResult>>
}

/** What {@link runBulkheadScenario} measured. */
export interface BulkheadScenarioResult extends ScenarioHeading {
  readonly scenario: 'bulkhead'
  /** One shared pool first, then a bulkhead per downstream. */
  readonly variants: readonly [BulkheadVariantResult, BulkheadVariantResult]
}

// The seed's pool of 100 threads and its split B:30 C:30 D:40, divided by 5 to keep the
// number of sockets and timers small.
const sharedSlots = 20
const slots: Readonly<Record<Downstream, number>> = { B: 6, C: 6, D: 8 }
const downstreams: readonly Downstream[] = ['B', 'C', 'D']
const fastAnswerSeedMs = 50
const slowAnswerSeedMs = 5_000
const intervalSeedMs = 100
const queueTimeoutSeedMs = 1_000

/**
 * "Bulkheads keep B and C healthy while D is slow." Service A calls B, C and D at the same
 * steady rate; D takes 100 times longer than the others to answer. With one shared pool of
 * slots, calls waiting on D take every slot and calls to healthy B and C queue and time out.
 * With a bulkhead per downstream (the seed's 30/30/40 split) D can only fill its own.
 *
 * @example
 * ```ts
 * const result = await runBulkheadScenario({ callsPerDownstream: 60 })
 * const [shared, split] = result.variants
 * console.log(shared.byDownstream.B.successes, split.byDownstream.B.successes)
 * ```
 */
export async function runBulkheadScenario(
  options: BulkheadScenarioOptions = {},
): Promise<BulkheadScenarioResult> {
  checkObject('bulkheadScenario', options)
  const calls = checkInteger(
    'bulkheadScenario.callsPerDownstream',
    options.callsPerDownstream ?? 120,
    1,
    10_000,
  )
  const timeScale = checkNumber('bulkheadScenario.timeScale', options.timeScale ?? 0.1, 0.01, 10)
  const clock = checkClock('bulkheadScenario.clock', options.clock)
  const fastMs = scaled(fastAnswerSeedMs, timeScale)
  const slowMs = scaled(slowAnswerSeedMs, timeScale)
  const intervalMs = scaled(intervalSeedMs, timeScale)
  const queueTimeoutMs = scaled(queueTimeoutSeedMs, timeScale)

  const runVariant = async (
    label: string,
    bulkheadFor: (downstream: Downstream) => Bulkhead,
  ): Promise<BulkheadVariantResult> => {
    const services = {} as Record<Downstream, FaultyService>
    const client = createDemoClient()
    try {
      for (const name of downstreams) {
        const delayMs = name === 'D' ? slowMs : fastMs
        services[name] = await createFaultyService({
          transport: options.transport ?? 'http',
          clock,
          behaviour: () => ({ kind: 'respond', status: 200, delayMs }),
        })
      }
      const logs = {
        B: new CallLog(clock),
        C: new CallLog(clock),
        D: new CallLog(clock),
      }
      const running: Promise<void>[] = []
      for (let i = 0; i < calls; i++) {
        for (const name of downstreams) {
          const url = services[name].url
          running.push(
            logs[name].time(() =>
              bulkheadFor(name).execute(({ signal }) => client.get(url, signal)),
            ),
          )
        }
        await sleep(clock, intervalMs)
      }
      await Promise.all(running)
      const row = (name: Downstream): VariantResult => ({
        label: `${label}: ${name}`,
        ...logs[name].summary(),
        retries: 0,
        load: services[name].stats.received,
      })
      return { label, byDownstream: { B: row('B'), C: row('C'), D: row('D') } }
    } finally {
      await client.close()
      await Promise.all(Object.values(services).map((service) => service.close()))
    }
  }

  const pool = bulkhead({
    maxConcurrent: sharedSlots,
    maxQueued: sharedSlots,
    queueTimeoutMs,
    clock,
  })
  const shared = await runVariant(`one pool of ${sharedSlots}`, () => pool)
  const registry = createBulkheads(
    {
      B: { maxConcurrent: slots.B, maxQueued: slots.B, queueTimeoutMs },
      C: { maxConcurrent: slots.C, maxQueued: slots.C, queueTimeoutMs },
      D: { maxConcurrent: slots.D, maxQueued: slots.D, queueTimeoutMs },
    },
    { clock },
  )
  const split = await runVariant(`B:${slots.B} C:${slots.C} D:${slots.D}`, (name) =>
    registry.get(name),
  )
  return {
    scenario: 'bulkhead',
    title: 'Bulkheads keep B and C healthy while D is slow',
    setup: [
      `A calls B, C and D, one call to each every ${formatMs(intervalMs)}; B and C answer in ` +
        `${formatMs(fastMs)}, D in ${formatMs(slowMs)}.`,
      `Slots: one pool of ${sharedSlots} vs B:${slots.B} C:${slots.C} D:${slots.D} (the seed's ` +
        `100 vs 30/30/40, /5); queue wait <= ${formatMs(queueTimeoutMs)}.`,
    ],
    timeScale,
    variants: [shared, split],
    conclusion: concludeBulkhead(shared, split),
  }
}

function rate(result: VariantResult): number {
  return result.calls === 0 ? 0 : result.successes / result.calls
}

function percent(value: number): string {
  return `${Math.round(value * 100)}%`
}

/** The verdict under the table, from the two variants' numbers (exported for tests). */
export function concludeBulkhead(
  shared: BulkheadVariantResult,
  split: BulkheadVariantResult,
): Conclusion {
  const healthy: readonly Downstream[] = ['B', 'C']
  const holds = healthy.every((name) => {
    const before = shared.byDownstream[name]
    const after = split.byDownstream[name]
    return rate(after) > rate(before) && after.p99Ms < before.p99Ms
  })
  const describe = (variant: BulkheadVariantResult): string =>
    healthy
      .map((name) => {
        const row = variant.byDownstream[name]
        return `${name} ${percent(rate(row))} ok, p99 ${formatMs(row.p99Ms)}`
      })
      .join('; ')
  const figures = `shared pool ${describe(shared)} -> bulkheads ${describe(split)}`
  return {
    holds,
    text: holds
      ? `Bulkheads kept B and C healthy while D was slow: ${figures}.`
      : `NOT shown by this run: ${figures}.`,
  }
}
