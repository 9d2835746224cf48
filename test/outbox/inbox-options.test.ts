// Misspelt inbox options were dropped without a word: pruneInbox({ olderThan: 30 days }) pruned
// with the default seven-day window, so a message redelivered after a week ran its handler again
// (the dedupe window the caller asked for silently shortened), and createInbox or inboxHandler
// with `onRefuse` reported no poison message. They are now refused with INVALID_OPTION naming the
// option, before anything is written or removed. On real SQLite and PostgreSQL.
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { InvalidOptionError } from '../../src/core/errors.js'
import { createInbox, inboxHandler, pruneInbox } from '../../src/outbox/index.js'
import { ManualClock } from '../../src/testing/index.js'
import { count, dbTargets, type OutboxDb } from './support.js'

// The refusal, with its code and the option it names.
const refusal = (option: string) => expect.objectContaining({ code: 'INVALID_OPTION', option })

describe.each(dbTargets)('inbox options on $dialect', (target) => {
  let t: OutboxDb

  beforeAll(async () => {
    t = await target.open('inbox_options')
  })
  afterAll(async () => {
    await t?.close()
  })

  it('pruneInbox refuses a misspelt option and removes nothing', async () => {
    const inbox = createInbox({ consumer: 'billing', clock: new ManualClock(0) })
    await t.db.transaction((tx) => inbox.handle(tx, { id: 'm1' }, async () => {}))
    const clock = new ManualClock(10 * 86_400_000)
    const options = { olderThan: 30 * 86_400_000, clock } as never
    await expect(pruneInbox(t.db, options)).rejects.toEqual(refusal('pruneInbox.olderThan'))
    expect(await count(t.db, 'breakwater_inbox', "WHERE message_id = 'm1'")).toBe(1)
  })

  it('createInbox and inboxHandler refuse a misspelt option', async () => {
    const onRefuse = () => {}
    expect(() => createInbox({ consumer: 'c', onRefuse } as never)).toThrow(InvalidOptionError)
    expect(() => inboxHandler(t.db, 'c', async () => {}, { onRefuse } as never)).toThrowError(
      refusal('inbox.onRefuse'),
    )
  })

  // The argument silently won over it: a caller who wrote both had one of the two names
  // ignored without a word, and records kept under a consumer it may not have meant.
  it('inboxHandler refuses a consumer in its options, beside the consumer argument', () => {
    expect(() =>
      inboxHandler(t.db, 'billing', async () => {}, { consumer: 'emails' } as never),
    ).toThrowError(refusal('options.consumer'))
  })
})
