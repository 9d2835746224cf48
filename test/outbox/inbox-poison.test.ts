// A message whose id the inbox cannot record (empty, or text the database cannot store: NUL, a
// lone surrogate), on real SQLite and PostgreSQL. It cannot be deduplicated, and no retry can
// change its id: refused with an error, the broker redelivered it forever (and, on a keyed
// subscription, held back every later message of its key). It is refused for good instead:
// reported as poison (`POISON_MESSAGE`) and acknowledged, with nothing written and no handler run.
import { subscribe, unsubscribe } from 'node:diagnostics_channel'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import type { IncomingMessage } from '../../src/brokers/types.js'
import { BreakwaterError, InvalidOptionError } from '../../src/core/errors.js'
import {
  createInbox,
  createOutbox,
  inboxHandler,
  PoisonMessageError,
} from '../../src/outbox/index.js'
import { createReactor, sagaReplyHandler } from '../../src/saga/index.js'
import { count, dbTargets, type OutboxDb } from './support.js'

const poisonIds = ['', 'm\u0000', 'm\ud800']

function incoming(id: string, headers: Record<string, string> = {}): IncomingMessage {
  return { id, topic: 'poison', key: 'k', payload: new Uint8Array(), headers, deliveryCount: 1 }
}

describe.each(dbTargets)('a poison message id in the inbox on $dialect', (target) => {
  let t: OutboxDb

  beforeAll(async () => {
    t = await target.open('inbox_poison')
  })
  afterAll(async () => {
    await t?.close()
  })

  it('inbox.handle refuses it for good: nothing written, fn not run, reported', async () => {
    const reported: [string, unknown][] = []
    const published: unknown[] = []
    const listener = (event: unknown): void => {
      published.push(event)
    }
    subscribe('breakwater:outbox:message-refused', listener)
    try {
      const inbox = createInbox({
        consumer: 'poison',
        onRefused: (message, error) => reported.push([message.id, error]),
      })
      let ran = 0
      for (const id of poisonIds) {
        const result = await t.db.transaction((tx) =>
          inbox.handle(tx, { id }, async () => {
            ran++
          }),
        )
        expect(result.duplicate).toBe(false)
        expect(result.refused).toBeInstanceOf(PoisonMessageError)
        expect(result.refused).toMatchObject({ code: 'POISON_MESSAGE', retryable: false })
        expect(BreakwaterError.is(result.refused)).toBe(true)
        expect(result.refused?.message).toMatch(/message id/)
      }
      expect(ran).toBe(0)
      expect(reported.map(([id]) => id)).toEqual(poisonIds)
      expect(published).toHaveLength(poisonIds.length)
      expect(published[0]).toMatchObject({ consumer: 'poison', messageId: '' })
      expect(await count(t.db, 'breakwater_inbox', "WHERE consumer = 'poison'")).toBe(0)
    } finally {
      unsubscribe('breakwater:outbox:message-refused', listener)
    }
  })

  it('still throws for a caller mistake: a message that is no message, an id that is no string', async () => {
    const inbox = createInbox({ consumer: 'mistakes' })
    for (const message of [undefined, { id: 42 }]) {
      const error = await t.db
        .transaction((tx) => inbox.handle(tx, message as unknown as { id: string }, async () => {}))
        .catch((e: unknown) => e)
      expect(error).toBeInstanceOf(InvalidOptionError)
      expect((error as InvalidOptionError).option).toBe('message.id')
    }
  })

  it('inboxHandler acknowledges it (resolves) instead of rejecting for a redelivery', async () => {
    const refused: unknown[] = []
    let ran = 0
    const handler = inboxHandler(
      t.db,
      'poison-handler',
      async () => {
        ran++
      },
      { onRefused: (_message, error) => refused.push(error) },
    )
    for (const id of poisonIds) await expect(handler(incoming(id))).resolves.toBeUndefined()
    expect(ran).toBe(0)
    expect(refused).toHaveLength(poisonIds.length)
    expect(await count(t.db, 'breakwater_inbox', "WHERE consumer = 'poison-handler'")).toBe(0)
  })

  it('the saga reply handler and a reactor acknowledge it too; the reply handler says why', async () => {
    const ignored: string[] = []
    const replies = sagaReplyHandler(t.db, {
      consumer: 'poison-replies',
      onIgnored: (_message, reason) => ignored.push(reason),
    })
    const headers = { 'correlation-id': 'saga-1', 'saga-step': 'charge' }
    for (const id of poisonIds)
      await expect(replies(incoming(id, headers))).resolves.toBeUndefined()
    expect(ignored).toHaveLength(poisonIds.length)
    expect(ignored[0]).toMatch(/POISON_MESSAGE|message id/)
    let reacted = 0
    const reactor = createReactor({
      db: t.db,
      consumer: 'poison-reactor',
      outbox: createOutbox(),
      reactions: {
        poison: async () => {
          reacted++
        },
      },
    })
    for (const id of poisonIds) await expect(reactor(incoming(id))).resolves.toBeUndefined()
    expect(reacted).toBe(0)
    expect(
      await count(
        t.db,
        'breakwater_inbox',
        "WHERE consumer IN ('poison-replies', 'poison-reactor')",
      ),
    ).toBe(0)
  })
})
