// Every demo entry point takes a `clock`. One that is not a Clock must be refused up front,
// naming the option, as every other option is: otherwise it fails later as a bare TypeError
// (`clock.now is not a function`), or as another component's option, after services started.
import { describe, expect, it } from 'vitest'
import { InvalidOptionError } from '../../src/core/errors.js'
import {
  createFaultyService,
  runBreakerScenario,
  runBulkheadScenario,
  runJitterScenario,
  runPoliciesDemo,
  runTimeoutScenario,
} from '../../src/demo/policies/index.js'

const notClocks = [{}, { now: () => 0 }, 42]

describe('demo entry points refuse a clock that is not one', () => {
  for (const [option, run] of [
    ['policiesDemo.clock', (clock: unknown) => runPoliciesDemo({ clock } as never)],
    ['breakerScenario.clock', (clock: unknown) => runBreakerScenario({ clock } as never)],
    ['bulkheadScenario.clock', (clock: unknown) => runBulkheadScenario({ clock } as never)],
    ['jitterScenario.clock', (clock: unknown) => runJitterScenario({ clock } as never)],
    ['timeoutScenario.clock', (clock: unknown) => runTimeoutScenario({ clock } as never)],
    [
      'faultyService.clock',
      (clock: unknown) => createFaultyService({ clock, transport: 'memory' } as never),
    ],
  ] as const) {
    it(option, async () => {
      for (const clock of notClocks) {
        const error = await run(clock).then(
          () => undefined,
          (e: unknown) => e,
        )
        expect(error, JSON.stringify(clock)).toBeInstanceOf(InvalidOptionError)
        expect((error as InvalidOptionError).option).toBe(option)
      }
    })
  }
})
