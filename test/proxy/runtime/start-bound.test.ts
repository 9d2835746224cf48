// What a step given up on yields late (a store, a server) is handed to its `release`. A release
// that throws at once used to reject inside the bound's own handler, which nobody awaited: an
// unhandled rejection, which ends a Node process. Its failure, thrown or rejected, is now
// logged, naming the step.

import { afterEach, beforeEach, describe, expect, it } from 'vitest'
import { createJsonLogger } from '../../../src/observability/logger.js'
import { startBound } from '../../../src/proxy/start-bound.js'
import { ManualClock } from '../../../src/testing/manual-clock.js'
import { captureLog, outcome } from './helpers.js'

const unhandled: unknown[] = []
const onUnhandled = (reason: unknown): void => {
  unhandled.push(reason)
}
beforeEach(() => {
  unhandled.length = 0
  process.on('unhandledRejection', onUnhandled)
})
afterEach(() => {
  process.off('unhandledRejection', onUnhandled)
})

const turns = async (): Promise<void> => {
  for (let i = 0; i < 5; i++) await new Promise((resolve) => setImmediate(resolve))
}

function deferred<T>(): { promise: Promise<T>; resolve(value: T): void } {
  let resolve: (value: T) => void = () => {}
  const promise = new Promise<T>((r) => {
    resolve = r
  })
  return { promise, resolve }
}

describe('startBound: a release that fails', () => {
  for (const how of ['throws', 'rejects'] as const)
    for (const when of ['after the step was given up on', 'for a step begun after the time was up'])
      it(`${how} ${when}: logged naming the step, no unhandled rejection`, async () => {
        const clock = new ManualClock(0)
        const out = captureLog()
        const bound = startBound(clock, 100, createJsonLogger({ clock, output: out }))
        const fail = (): Promise<void> => {
          if (how === 'throws') throw new Error('close failed')
          return Promise.reject(new Error('close failed'))
        }
        const work = deferred<string>()
        let waited: () => { done: boolean; error?: unknown }
        if (when === 'after the step was given up on') {
          waited = outcome(bound.wait('idempotency.url', 'opening it', work.promise, fail))
          await clock.advance(100)
        } else {
          await clock.advance(100)
          waited = outcome(bound.wait('admin', 'binding it', work.promise, fail))
        }
        await turns()
        expect(bound.timedOut(waited().error)).toBe(true)
        work.resolve('late')
        await turns()
        bound.end()
        expect(unhandled).toEqual([])
        const setting = when === 'after the step was given up on' ? 'idempotency.url' : 'admin'
        expect(out.lines()).toEqual([
          expect.objectContaining({
            level: 'warn',
            setting,
            error: 'close failed',
          }),
        ])
      })
})
