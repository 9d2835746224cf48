// The inbox on real SQLite and PostgreSQL: a handler's effect and the message id commit
// together, so a redelivered message is acknowledged without running the handler again.
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import type { IncomingMessage } from '../../src/brokers/types.js'
import { InvalidOptionError } from '../../src/core/errors.js'
import { createInbox, inboxHandler, outboxStats, pruneInbox } from '../../src/outbox/index.js'
import { ManualClock } from '../../src/testing/index.js'
import { count, dbTargets, delay, type OutboxDb, testQueue, until } from './support.js'

describe.each(dbTargets)('inbox on $dialect', (target) => {
  let t: OutboxDb

  beforeAll(async () => {
    t = await target.open('inbox')
    await t.db.execute('CREATE TABLE effects (message_id TEXT NOT NULL, consumer TEXT NOT NULL)')
  })
  afterAll(async () => {
    await t?.close()
  })

  const effect = (consumer: string, id: string) => (tx: { execute: OutboxDb['db']['execute'] }) =>
    tx.execute('INSERT INTO effects (message_id, consumer) VALUES ($1, $2)', [id, consumer])

  it('runs the handler once per message id and consumer; a redelivery is a duplicate', async () => {
    const inbox = createInbox({ consumer: 'billing' })
    const message = { id: 'msg-1' }
    let runs = 0
    const handle = () =>
      t.db.transaction((tx) =>
        inbox.handle(tx, message, async (inner) => {
          runs++
          await effect('billing', message.id)(inner)
          return 'charged'
        }),
      )
    expect(await handle()).toEqual({ duplicate: false, value: 'charged' })
    expect(await handle()).toEqual({ duplicate: true })
    expect(runs).toBe(1)
    // Another consumer of the same message has its own record.
    const other = createInbox({ consumer: 'shipping' })
    const result = await t.db.transaction((tx) =>
      other.handle(tx, message, async (inner) => {
        await effect('shipping', message.id)(inner)
      }),
    )
    expect(result.duplicate).toBe(false)
    expect(await count(t.db, 'effects', "WHERE message_id = 'msg-1'")).toBe(2)
  })

  it('rolls the record back with a failing handler, so the retry runs it again', async () => {
    const inbox = createInbox({ consumer: 'billing' })
    const message = { id: 'msg-fail' }
    await expect(
      t.db.transaction((tx) =>
        inbox.handle(tx, message, async (inner) => {
          await effect('billing', message.id)(inner)
          throw new Error('downstream failed')
        }),
      ),
    ).rejects.toThrow('downstream failed')
    expect(await count(t.db, 'effects', "WHERE message_id = 'msg-fail'")).toBe(0)
    const retry = await t.db.transaction((tx) =>
      inbox.handle(tx, message, async (inner) => effect('billing', message.id)(inner)),
    )
    expect(retry.duplicate).toBe(false)
    expect(await count(t.db, 'effects', "WHERE message_id = 'msg-fail'")).toBe(1)
  })

  it('refuses the driver itself: the record would commit on its own, without the effect', async () => {
    const inbox = createInbox({ consumer: 'no-tx' })
    let ran = 0
    const error = await inbox
      .handle(t.db, { id: 'msg-no-tx' }, async () => {
        ran++
        throw new Error('downstream failed')
      })
      .catch((e: unknown) => e)
    expect(error).toBeInstanceOf(InvalidOptionError)
    expect((error as InvalidOptionError).option).toBe('tx')
    expect(ran).toBe(0)
    // Nothing was recorded: the redelivery, in a transaction, runs the handler.
    expect(await count(t.db, 'breakwater_inbox', "WHERE consumer = 'no-tx'")).toBe(0)
    const retry = await t.db.transaction((tx) =>
      inbox.handle(tx, { id: 'msg-no-tx' }, async () => 'done'),
    )
    expect(retry).toEqual({ duplicate: false, value: 'done' })
  })

  it('lets exactly one of two concurrent deliveries of a message run the handler', async () => {
    const inbox = createInbox({ consumer: 'concurrent' })
    const message = { id: 'msg-race' }
    let runs = 0
    let release = (): void => {}
    const gate = new Promise<void>((resolve) => {
      release = resolve
    })
    const first = t.db.transaction((tx) =>
      inbox.handle(tx, message, async (inner) => {
        runs++
        await effect('concurrent', message.id)(inner)
        await gate
      }),
    )
    await delay(30)
    const second = t.db.transaction((tx) =>
      inbox.handle(tx, message, async (inner) => {
        runs++
        await effect('concurrent', message.id)(inner)
      }),
    )
    await delay(30)
    release()
    const results = await Promise.all([first, second])
    expect(results.map((r) => r.duplicate).sort()).toEqual([false, true])
    expect(runs).toBe(1)
    expect(await count(t.db, 'effects', "WHERE message_id = 'msg-race'")).toBe(1)
  })

  it('applies each message exactly once through inboxHandler when the broker redelivers', async () => {
    const queue = testQueue(t.db, { retryDelayMs: 0 })
    const consumer = inboxHandler(t.db, 'exactly-once', async (tx, m) => {
      await effect('exactly-once', m.id)(tx)
    })
    const deliveries = new Map<string, number>()
    const subscription = await queue.subscriber.subscribe(
      'inbox-topic',
      'exactly-once',
      async (m: IncomingMessage) => {
        deliveries.set(m.id, (deliveries.get(m.id) ?? 0) + 1)
        await consumer(m)
        // As if the process died after the commit but before the ack: the broker redelivers.
        if (m.deliveryCount === 1) throw new Error('crashed before the ack')
      },
    )
    const ids = Array.from({ length: 30 }, (_, i) => `io-${i}`)
    await queue.publisher.publish(
      ids.map((id) => ({
        id,
        topic: 'inbox-topic',
        key: `k${id.length}`,
        payload: '{}',
        headers: {},
      })),
    )
    await until(() => ids.every((id) => deliveries.get(id) === 2), 'every redelivery')
    await subscription.close()
    const rows = await t.db.query<{ message_id: string }>(
      "SELECT message_id FROM effects WHERE consumer = 'exactly-once' ORDER BY message_id",
    )
    expect(rows.map((r) => r.message_id)).toEqual([...ids].sort())
  })

  it('validates the consumer and refuses a message id it cannot store as poison', async () => {
    expect(() => createInbox({ consumer: '' })).toThrow(InvalidOptionError)
    const inbox = createInbox({ consumer: 'x' })
    // PostgreSQL text cannot hold NUL; a lone surrogate is stored as U+FFFD, so two different
    // ids would be one record and the second message's effect would be skipped as a duplicate.
    for (const consumer of ['a\u0000b', 'c\ud800']) {
      expect(() => createInbox({ consumer })).toThrow(InvalidOptionError)
    }
    // Such a message id is the wire's, not a mistake: refused for good (test/outbox/inbox-poison).
    let ran = 0
    for (const id of ['', 'm\ud800', 'm\udc00', 'm\u0000']) {
      const result = await t.db.transaction((tx) =>
        inbox.handle(tx, { id }, async () => {
          ran++
        }),
      )
      expect(result.refused?.code).toBe('POISON_MESSAGE')
    }
    expect(ran).toBe(0)
  })

  it('names the option at fault: handle() fn, pruneInbox.clock, outboxStats.clock', async () => {
    const inbox = createInbox({ consumer: 'options' })
    const error = await t.db
      .transaction((tx) =>
        inbox.handle(tx, { id: 'no-fn' }, 'not a function' as unknown as () => Promise<void>),
      )
      .catch((e: unknown) => e)
    expect(error).toBeInstanceOf(InvalidOptionError)
    expect((error as InvalidOptionError).option).toBe('fn')
    // Refused before anything was recorded: the message is not a duplicate afterwards.
    expect(await count(t.db, 'breakwater_inbox', "WHERE message_id = 'no-fn'")).toBe(0)
    const badClock = { clock: {} } as unknown as { clock: ManualClock }
    const pruneError = await pruneInbox(t.db, badClock).catch((e: unknown) => e)
    expect((pruneError as InvalidOptionError).option).toBe('pruneInbox.clock')
    const statsError = await outboxStats(t.db, badClock).catch((e: unknown) => e)
    expect((statsError as InvalidOptionError).option).toBe('outboxStats.clock')
  })

  it('prunes records older than the dedupe window, in batches', async () => {
    const clock = new ManualClock(1_000_000)
    const inbox = createInbox({ consumer: 'prune', clock })
    for (let i = 0; i < 12; i++) {
      await t.db.transaction((tx) => inbox.handle(tx, { id: `old-${i}` }, async () => {}))
    }
    await clock.advance(10_000)
    await t.db.transaction((tx) => inbox.handle(tx, { id: 'young' }, async () => {}))
    expect(
      await pruneInbox(t.db, { olderThanMs: 5_000, batchSize: 5, clock }),
    ).toBeGreaterThanOrEqual(12)
    expect(await count(t.db, 'breakwater_inbox', "WHERE consumer = 'prune'")).toBe(1)
    const again = await t.db.transaction((tx) => inbox.handle(tx, { id: 'young' }, async () => {}))
    expect(again.duplicate).toBe(true)
  })
})
