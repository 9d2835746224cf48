// Relay options that were reported or taken inconsistently. A bad `circuitBreaker` field was
// named `circuitBreaker.<field>`, without the `relay.` every other relay option carries. And
// fields the relay replaces with its own were accepted and silently dropped: `retention.clock`
// and `circuitBreaker.clock` (the relay's clock is used), `retention.maxBatches` (a relay run has
// no batch budget) and `circuitBreaker.isFailure` (the relay decides what counts). Each is now
// refused with INVALID_OPTION naming it. Construction only: no database is touched.
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { InvalidOptionError } from '../../src/core/errors.js'
import { createRelay, type RelayOptions } from '../../src/outbox/index.js'
import type { SqlDriver } from '../../src/stores/index.js'
import { ManualClock } from '../../src/testing/index.js'
import { type OutboxDb, sqliteTarget } from './support.js'

const publisher = { publish: async () => {}, close: async () => {} }

describe('relay options', () => {
  let t: OutboxDb
  let db: SqlDriver

  beforeAll(async () => {
    t = await sqliteTarget.open('relay_options')
    db = t.db
  })
  afterAll(async () => {
    await t?.close()
  })

  function refusal(extra: Record<string, unknown>): InvalidOptionError {
    let caught: unknown
    try {
      createRelay({ db, publisher, ...extra } as unknown as RelayOptions)
    } catch (error) {
      caught = error
    }
    expect(caught).toBeInstanceOf(InvalidOptionError)
    return caught as InvalidOptionError
  }

  it('names a bad circuitBreaker field under relay., as its other options', () => {
    const cases: Array<[Record<string, unknown>, string]> = [
      [
        { circuitBreaker: { window: { kind: 'consecutive', failures: -1 } } },
        'relay.circuitBreaker.window.failures',
      ],
      [{ circuitBreaker: { cooldownMs: -1 } }, 'relay.circuitBreaker.cooldownMs'],
      [{ circuitBreaker: { halfOpenProbes: 0 } }, 'relay.circuitBreaker.halfOpenProbes'],
      [{ circuitBreaker: 'no' }, 'relay.circuitBreaker'],
    ]
    for (const [extra, option] of cases) {
      const error = refusal(extra)
      expect(error.option).toBe(option)
      expect(error.code).toBe('INVALID_OPTION')
      expect(error.message.startsWith(`${option}: expected `)).toBe(true)
    }
  })

  it('refuses options the relay would replace with its own, naming them', () => {
    const clock = new ManualClock()
    const cases: Array<[Record<string, unknown>, string]> = [
      [{ retention: { clock } }, 'relay.retention.clock'],
      [{ retention: { maxBatches: 5 } }, 'relay.retention.maxBatches'],
      [{ circuitBreaker: { clock } }, 'relay.circuitBreaker.clock'],
      [{ circuitBreaker: { isFailure: () => true } }, 'relay.circuitBreaker.isFailure'],
    ]
    for (const [extra, option] of cases) {
      const error = refusal({ clock, ...extra })
      expect(error.option).toBe(option)
      expect(error.message).toContain('relay.')
    }
  })

  it('still takes the good forms', async () => {
    const relay = createRelay({
      db,
      publisher,
      clock: new ManualClock(),
      circuitBreaker: { cooldownMs: 1_000, window: { kind: 'consecutive', failures: 3 } },
      retention: { olderThanMs: 1_000, everyMs: 500, batchSize: 10, archive: true },
    })
    expect(relay.breaker).toBeDefined()
    // Explicit undefined is an absent option, as everywhere else.
    createRelay({ db, publisher, retention: { clock: undefined } } as unknown as RelayOptions)
  })
})
