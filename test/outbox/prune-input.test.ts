// pruneOutbox and pruneInbox given an age that is not a finite number of milliseconds. Infinity
// ("keep forever") passed the check and made a cutoff of -Infinity, which PostgreSQL refused on
// every run with a bare "invalid input syntax for type bigint" (a relay's retention reported it
// every everyMs) while SQLite pruned nothing: it is now refused up front, naming the option.
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { InvalidOptionError } from '../../src/core/errors.js'
import { createRelay, pruneInbox, pruneOutbox } from '../../src/outbox/index.js'
import { dbTargets, type OutboxDb } from './support.js'

describe.each(dbTargets)('prune age on $dialect', (target) => {
  let t: OutboxDb

  beforeAll(async () => {
    t = await target.open('prune_input')
  })
  afterAll(async () => {
    await t?.close()
  })

  it('refuses a non-finite olderThanMs, naming it', async () => {
    const cases: Array<[() => Promise<unknown>, string]> = [
      [
        () => pruneOutbox(t.db, { olderThanMs: Number.POSITIVE_INFINITY }),
        'pruneOutbox.olderThanMs',
      ],
      [() => pruneInbox(t.db, { olderThanMs: Number.POSITIVE_INFINITY }), 'pruneInbox.olderThanMs'],
      [
        async () =>
          createRelay({
            db: t.db,
            publisher: { publish: async () => {}, close: async () => {} },
            retention: { olderThanMs: Number.POSITIVE_INFINITY },
          }),
        'relay.retention.olderThanMs',
      ],
    ]
    for (const [run, option] of cases) {
      const error = await run().catch((e: unknown) => e)
      expect(error).toBeInstanceOf(InvalidOptionError)
      expect((error as InvalidOptionError).option).toBe(option)
    }
  })
})
