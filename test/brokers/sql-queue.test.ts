// The SQL queue broker on real SQLite and PostgreSQL: durable publish with dedupe, consumer
// groups and competing consumers, leases with a visibility timeout, redelivery after failure
// or lease expiry, per-key order, backfill of late groups, pruning.
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import {
  createSqlQueue,
  pruneSqlQueue,
  type SqlQueue,
  type SqlQueueErrorEvent,
} from '../../src/brokers/sql-queue.js'
import type { IncomingMessage, OutgoingMessage } from '../../src/brokers/types.js'
import { AbortedError, BreakwaterError, InvalidOptionError } from '../../src/core/errors.js'
import { ManualClock } from '../../src/testing/index.js'
import { count, dbTargets, delay, type OutboxDb, until } from '../outbox/support.js'

let sequence = 0
function message(topic: string, key: string, body: unknown = {}): OutgoingMessage {
  sequence++
  return {
    id: `m-${sequence}`,
    topic,
    key,
    payload: JSON.stringify(body),
    headers: { n: String(sequence) },
  }
}

function text(m: IncomingMessage): string {
  return Buffer.from(m.payload).toString('utf8')
}

/** Moves a ManualClock forward in steps, letting real I/O run between steps. */
async function advanceUntil(
  clock: ManualClock,
  check: () => boolean | Promise<boolean>,
  what: string,
  stepMs = 10,
): Promise<void> {
  const deadline = Date.now() + 20_000
  while (!(await check())) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`)
    await clock.advance(stepMs)
    await delay(2)
  }
}

describe.each(dbTargets)('SQL queue on $dialect', (target) => {
  let t: OutboxDb
  const queues: SqlQueue[] = []
  const errors: SqlQueueErrorEvent[] = []

  function queue(options: Parameters<typeof createSqlQueue>[1] = {}): SqlQueue {
    const q = createSqlQueue(t.db, {
      pollIntervalMs: 2,
      maxPollIntervalMs: 20,
      onError: (e) => errors.push(e),
      ...options,
    })
    queues.push(q)
    return q
  }

  beforeAll(async () => {
    t = await target.open('sql_queue')
  })
  afterAll(async () => {
    for (const q of queues) await q.close()
    await t?.close()
  })

  it('delivers payload, key, headers and a first deliveryCount of 1, then acknowledges', async () => {
    const q = queue()
    const got: IncomingMessage[] = []
    const sub = await q.subscriber.subscribe('basic', 'g', async (m) => {
      got.push(m)
    })
    const binary = { ...message('basic', 'k1'), payload: new Uint8Array([0, 1, 2, 255]) }
    const json = message('basic', 'k2', { hello: 'wörld' })
    await q.publisher.publish([binary, json])
    await until(() => got.length === 2, 'two deliveries')
    expect(got.map((m) => m.id)).toEqual([binary.id, json.id])
    expect([...got[0]!.payload]).toEqual([0, 1, 2, 255])
    expect(JSON.parse(text(got[1]!))).toEqual({ hello: 'wörld' })
    expect(got[1]).toMatchObject({
      topic: 'basic',
      key: 'k2',
      headers: json.headers,
      deliveryCount: 1,
    })
    await sub.close()
    expect(await count(t.db, 'breakwater_queue_deliveries', "WHERE topic = 'basic'")).toBe(0)
  })

  it('refuses a stored message whose headers are not a JSON record of strings (onError phase refused, BROKER_REJECTED, the message kept in the table) and delivers the rest', async () => {
    const q = queue()
    const topic = 'corrupt-headers'
    const bad = ['k1', 'k2', 'k3', 'k4'].map((key) => message(topic, key))
    const good = [message(topic, 'k1'), message(topic, 'k5')]
    // Stored before the group exists, so the subscription's first lease sees them all at once.
    await q.publisher.publish([bad[0]!, good[0]!, bad[1]!, bad[2]!, bad[3]!, good[1]!])
    const corrupt = ['{"n": "1', '[]', '{"n":1}', 'null']
    for (const [i, headers] of corrupt.entries()) {
      await t.db.execute(
        `UPDATE breakwater_queue SET headers = '${headers}' WHERE topic = '${topic}' AND message_id = '${bad[i]!.id}'`,
      )
    }
    const got: IncomingMessage[] = []
    const sub = await q.subscriber.subscribe(topic, 'g', async (m) => void got.push(m))
    const refused = () => errors.filter((e) => e.topic === topic && e.phase === 'refused')
    await until(() => got.length === 2 && refused().length === 4, 'the good messages')
    expect(got.map((m) => m.id)).toEqual(good.map((m) => m.id))
    expect(got.map((m) => m.headers)).toEqual(good.map((m) => m.headers))
    expect(refused().map((e) => e.message?.id)).toEqual(bad.map((m) => m.id))
    for (const event of refused()) {
      expect(BreakwaterError.is(event.error)).toBe(true)
      expect((event.error as BreakwaterError).code).toBe('BROKER_REJECTED')
      expect((event.error as BreakwaterError).retryable).toBe(false)
      expect((event.error as Error).message).toMatch(/headers/)
      expect(event.message?.payload).toBeDefined()
    }
    expect(errors.filter((e) => e.topic === topic && e.phase !== 'refused')).toEqual([])
    await sub.close()
    // Nothing is left to deliver to the group, but the refused messages stay stored (until
    // pruned), for an operator to inspect.
    expect(await count(t.db, 'breakwater_queue_deliveries', `WHERE topic = '${topic}'`)).toBe(0)
    expect(await count(t.db, 'breakwater_queue', `WHERE topic = '${topic}'`)).toBe(6)
  })

  it('drops a message id already stored for its topic', async () => {
    const q = queue()
    const got: string[] = []
    const sub = await q.subscriber.subscribe('dedupe', 'g', async (m) => {
      got.push(m.id)
    })
    const m = message('dedupe', 'k')
    await q.publisher.publish([m, m])
    await q.publisher.publish([m])
    await q.publisher.publish([{ ...m, topic: 'dedupe-other' }])
    const after = message('dedupe', 'k')
    await q.publisher.publish([after])
    await until(() => got.includes(after.id), 'the later message')
    await delay(30)
    expect(got).toEqual([m.id, after.id])
    expect(await count(t.db, 'breakwater_queue', `WHERE message_id = '${m.id}'`)).toBe(2)
    await sub.close()
  })

  it('gives every group every message; consumers of one group compete', async () => {
    const q = queue({ prefetch: 5 })
    const a1: string[] = []
    const a2: string[] = []
    const b: string[] = []
    const subs = [
      await q.subscriber.subscribe('groups', 'a', async (m) => void a1.push(m.id)),
      await q.subscriber.subscribe('groups', 'a', async (m) => void a2.push(m.id)),
      await q.subscriber.subscribe('groups', 'b', async (m) => void b.push(m.id)),
    ]
    const sent = Array.from({ length: 200 }, (_, i) => message('groups', `k${i % 13}`))
    for (let i = 0; i < sent.length; i += 20) await q.publisher.publish(sent.slice(i, i + 20))
    await until(() => a1.length + a2.length === 200 && b.length === 200, 'all deliveries')
    await delay(30)
    const ids = sent.map((m) => m.id)
    expect([...a1, ...a2].sort()).toEqual([...ids].sort())
    expect(b).toEqual(ids)
    for (const sub of subs) await sub.close()
  })

  it('backfills a group that subscribes after messages were published', async () => {
    const q = queue()
    const early = [message('late', 'k'), message('late', 'k')]
    await q.publisher.publish(early)
    const got: string[] = []
    const sub = await q.subscriber.subscribe('late', 'newcomer', async (m) => void got.push(m.id))
    const later = message('late', 'k')
    await q.publisher.publish([later])
    await until(() => got.length === 3, 'three deliveries')
    expect(got).toEqual([...early, later].map((m) => m.id))
    await sub.close()
  })

  it('redelivers a failed message after retryDelayMs, keeping its key in order', async () => {
    const clock = new ManualClock(1_000_000)
    const q = queue({ clock, retryDelayMs: 5_000, pollIntervalMs: 5, maxPollIntervalMs: 5 })
    const handled: Array<{ id: string; deliveryCount: number; at: number }> = []
    let failures = 0
    let failedAt = 0
    const [k1, k2, other] = [message('retry', 'k'), message('retry', 'k'), message('retry', 'z')]
    const sub = await q.subscriber.subscribe('retry', 'g', async (m) => {
      if (m.id === k1.id && failures === 0) {
        failures++
        failedAt = clock.now()
        throw new Error('handler failed once')
      }
      handled.push({ id: m.id, deliveryCount: m.deliveryCount, at: clock.now() })
    })
    await q.publisher.publish([k1, k2, other])
    await advanceUntil(clock, () => handled.length === 3, 'all handled', 100)
    // The other key was not held up; k2 waited behind k1's retry.
    expect(handled.map((h) => h.id)).toEqual([other.id, k1.id, k2.id])
    expect(handled[1]!.deliveryCount).toBe(2)
    expect(handled[2]!.deliveryCount).toBe(1)
    expect(handled[1]!.at - failedAt).toBeGreaterThanOrEqual(5_000)
    expect(errors.some((e) => e.phase === 'handler' && e.message?.id === k1.id)).toBe(true)
    await sub.close()
  })

  it('redelivers a failed message after retryDelayMs even when the onError listener throws, not only once its lease runs out', async () => {
    const clock = new ManualClock(1_000_000)
    const reported: string[] = []
    const q = queue({
      clock,
      retryDelayMs: 100,
      visibilityTimeoutMs: 600_000,
      pollIntervalMs: 5,
      maxPollIntervalMs: 5,
      // The application's listener is not ours to trust.
      onError: (e) => {
        reported.push(e.phase)
        throw new Error('listener failed')
      },
    })
    const handled: Array<{ id: string; deliveryCount: number }> = []
    const [k1, k2] = [message('retry-throw', 'k'), message('retry-throw', 'k')]
    let failed = false
    const sub = await q.subscriber.subscribe('retry-throw', 'g', async (m) => {
      if (m.id === k1.id && !failed) {
        failed = true
        throw new Error('handler failed once')
      }
      handled.push({ id: m.id, deliveryCount: m.deliveryCount })
    })
    await q.publisher.publish([k1, k2])
    // Stops short of the lease (600 s): the retry, not the lease's expiry, brings k1 back.
    await advanceUntil(
      clock,
      () => handled.length === 2 || clock.now() > 1_000_000 + 60_000,
      'both handled',
      100,
    )
    expect(handled).toEqual([
      { id: k1.id, deliveryCount: 2 },
      { id: k2.id, deliveryCount: 1 },
    ])
    expect(reported).toContain('handler')
    await sub.close()
  })

  it('redelivers a message whose consumer died once its lease runs out', async () => {
    const clock = new ManualClock(2_000_000)
    const q = queue({ clock, visibilityTimeoutMs: 3_000, pollIntervalMs: 5, maxPollIntervalMs: 5 })
    const got: IncomingMessage[] = []
    const sub = await q.subscriber.subscribe('dead-consumer', 'g', async (m) => void got.push(m))
    await sub.close()
    const m = message('dead-consumer', 'k')
    await q.publisher.publish([m])
    // What a consumer that leased the message and then died leaves behind.
    const leased = await t.db.execute(
      `UPDATE breakwater_queue_deliveries SET held_until = $1, lease_token = 'dead', delivery_count = 1
       WHERE topic = 'dead-consumer'`,
      [clock.now() + 3_000],
    )
    expect(leased.rowCount).toBe(1)
    const again = await q.subscriber.subscribe('dead-consumer', 'g', async (x) => void got.push(x))
    await clock.advance(2_900)
    await delay(30)
    await clock.advance(50)
    await delay(30)
    expect(got).toHaveLength(0)
    await advanceUntil(clock, () => got.length === 1, 'the redelivery', 50)
    expect(got[0]).toMatchObject({ id: m.id, deliveryCount: 2 })
    expect(clock.now()).toBeGreaterThanOrEqual(2_003_000)
    await again.close()
  })

  it("stops a key's chain when the lease ran out under a running handler and another consumer took it, instead of running the key's next message beside the earlier one", async () => {
    const q = queue()
    const topic = 'lost-lease'
    const first = message(topic, 'k')
    const second = message(topic, 'k')
    // Stored before the group exists: the first lease takes both, under one token.
    await q.publisher.publish([first, second])
    const got: string[] = []
    let finish = (): void => {}
    const sub = await q.subscriber.subscribe(topic, 'g', async (m) => {
      got.push(m.id)
      if (m.id === first.id) await new Promise<void>((resolve) => (finish = resolve))
    })
    await until(() => got.length === 1, 'the first message')
    // The lease ran out (a stalled process, a database that did not take the extensions) and
    // another consumer of the group leased both messages: it runs the first one again now.
    const taken = await t.db.execute(
      `UPDATE breakwater_queue_deliveries SET lease_token = 'rival', held_until = $1
       WHERE topic = '${topic}'`,
      [Date.now() + 600_000],
    )
    expect(taken.rowCount).toBe(2)
    finish()
    const lost = () => errors.filter((e) => e.topic === topic && e.phase === 'settle')
    await until(() => got.length === 2 || lost().length === 1, 'the lease loss to be seen')
    // The second message is the rival's now, to run after its own run of the first.
    expect(got).toEqual([first.id])
    expect(lost()).toHaveLength(1)
    expect(lost()[0]!.message?.id).toBe(first.id)
    expect((lost()[0]!.error as BreakwaterError).code).toBe('BROKER_UNAVAILABLE')
    expect((lost()[0]!.error as Error).message).toMatch(/lease/)
    await sub.close()
    expect(
      await count(
        t.db,
        'breakwater_queue_deliveries',
        `WHERE topic = '${topic}' AND lease_token = 'rival'`,
      ),
    ).toBe(2)
  })

  it('keeps per-key order with concurrent handlers for a single consumer', async () => {
    const q = queue({ concurrency: 4, prefetch: 32 })
    const seen = new Map<string, number[]>()
    let running = 0
    let maxRunning = 0
    const sub = await q.subscriber.subscribe('order', 'g', async (m) => {
      running++
      maxRunning = Math.max(maxRunning, running)
      await delay(Math.random() * 2)
      running--
      const list = seen.get(m.key) ?? []
      list.push(JSON.parse(text(m)).i as number)
      seen.set(m.key, list)
    })
    const sent = Array.from({ length: 300 }, (_, i) => message('order', `k${i % 10}`, { i }))
    await q.publisher.publish(sent)
    await until(() => [...seen.values()].reduce((n, l) => n + l.length, 0) === 300, 'all handled')
    for (const [key, list] of seen) {
      const expected = sent
        .filter((m) => m.key === key)
        .map((m) => JSON.parse(m.payload as string).i)
      expect(list).toEqual(expected)
    }
    expect(maxRunning).toBeGreaterThan(1)
    expect(maxRunning).toBeLessThanOrEqual(4)
    await sub.close()
  })

  it('releases leased but unstarted messages on close, without counting a delivery', async () => {
    const q = queue({ prefetch: 10 })
    const first: string[] = []
    const sub = await q.subscriber.subscribe('release', 'g', async (m) => {
      first.push(m.id)
      await delay(20)
    })
    const sent = Array.from({ length: 10 }, () => message('release', 'same-key'))
    await q.publisher.publish(sent)
    await until(() => first.length >= 1, 'a first delivery')
    await sub.close()
    expect(first.length).toBeLessThan(10)
    const rest: IncomingMessage[] = []
    const again = await q.subscriber.subscribe('release', 'g', async (m) => void rest.push(m))
    await until(() => first.length + rest.length === 10, 'the released messages')
    expect([...first, ...rest.map((m) => m.id)]).toEqual(sent.map((m) => m.id))
    expect(rest.every((m) => m.deliveryCount === 1)).toBe(true)
    await again.close()
  })

  it('prunes acknowledged messages past the cutoff, keeping those a group still needs', async () => {
    const clock = new ManualClock(5_000_000)
    const q = queue({ clock })
    const done: string[] = []
    const sub = await q.subscriber.subscribe('prune', 'fast', async (m) => void done.push(m.id))
    let release = (): void => {}
    const gate = new Promise<void>((resolve) => {
      release = resolve
    })
    const slow = await q.subscriber.subscribe('prune-slow', 'slow', () => gate)
    const acked = Array.from({ length: 25 }, () => message('prune', 'k'))
    const waiting = message('prune-slow', 'k')
    await q.publisher.publish([...acked, waiting])
    await advanceUntil(clock, () => done.length === 25, 'the acks')
    await sub.close()
    await clock.advance(10_000)
    const before = await count(t.db, 'breakwater_queue')
    const removed = await pruneSqlQueue(t.db, { olderThanMs: 5_000, batchSize: 10, clock })
    // Earlier tests' acknowledged messages with old ManualClock timestamps go too.
    expect(removed).toBeGreaterThanOrEqual(25)
    expect(await count(t.db, 'breakwater_queue')).toBe(before - removed)
    expect(await count(t.db, 'breakwater_queue', "WHERE topic = 'prune'")).toBe(0)
    expect(await count(t.db, 'breakwater_queue', "WHERE topic = 'prune-slow'")).toBe(1)
    // Too young: kept even though acknowledged.
    const young = message('prune', 'k')
    await q.publisher.publish([young])
    expect(await pruneSqlQueue(t.db, { olderThanMs: 5_000, clock })).toBe(0)
    release()
    await slow.close()
  })

  it('names the option pruneSqlQueue refuses, and refuses something that is not a database', async () => {
    const error = await pruneSqlQueue(t.db, { clock: 5 as never }).catch((e: unknown) => e)
    expect(error).toBeInstanceOf(InvalidOptionError)
    expect((error as InvalidOptionError).option).toBe('pruneSqlQueue.clock')
    const notDb = await pruneSqlQueue({} as never).catch((e: unknown) => e)
    expect(notDb).toBeInstanceOf(InvalidOptionError)
    expect((notDb as InvalidOptionError).option).toBe('db')
  })

  it('validates messages and honours an aborted signal', async () => {
    const q = queue()
    await expect(q.publisher.publish([{ ...message('v', 'k'), id: '' }])).rejects.toMatchObject({
      code: 'BROKER_REJECTED',
      message: expect.stringContaining('messages[0].id'),
    })
    const aborted = AbortSignal.abort(new Error('no'))
    await expect(q.publisher.publish([message('v', 'k')], aborted)).rejects.toThrow(AbortedError)
    await expect(q.subscriber.subscribe('', 'g', async () => {})).rejects.toThrow(
      InvalidOptionError,
    )
    expect(() => createSqlQueue(t.db, { prefetch: 0 })).toThrow(InvalidOptionError)
    for (const closeTimeoutMs of [-1, 1.5, Number.NaN, Number.POSITIVE_INFINITY])
      expect(() => createSqlQueue(t.db, { closeTimeoutMs })).toThrow(
        expect.objectContaining({ code: 'INVALID_OPTION', option: 'sqlQueue.closeTimeoutMs' }),
      )
  })

  it('refuses ids, topics, keys and groups the database cannot store exactly (NUL, lone surrogates)', async () => {
    const q = queue()
    // PostgreSQL text cannot hold NUL (a bare driver error), and sends a lone surrogate as
    // U+FFFD, so 'x\ud800' and 'x\ud801' would be stored as one id and the second dropped.
    for (const bad of [
      { ...message('nul', 'k'), id: 'a\u0000b' },
      { ...message('sur', 'k'), id: 'x\ud800' },
      { ...message('t\u0000', 'k') },
      { ...message('t\udc00', 'k') },
      { ...message('keys', 'k\u0000') },
      { ...message('keys', 'k\ud800') },
    ]) {
      await expect(q.publisher.publish([bad]), JSON.stringify(bad)).rejects.toMatchObject({
        code: 'BROKER_REJECTED',
      })
    }
    await expect(q.subscriber.subscribe('t\u0000', 'g', async () => {})).rejects.toThrow(
      InvalidOptionError,
    )
    await expect(q.subscriber.subscribe('t', 'g\ud800', async () => {})).rejects.toThrow(
      InvalidOptionError,
    )
  })

  it('refuses headers that are not a record of strings, which would be delivered as they are', async () => {
    const q = queue()
    const cases: Array<[unknown, string]> = [
      [{ n: 1 }, 'messages[0].headers.n'],
      [{ ok: 'a', nested: { b: 'c' } }, 'messages[0].headers.nested'],
      ['text', 'messages[0].headers'],
      [['a'], 'messages[0].headers'],
    ]
    for (const [headers, option] of cases) {
      const bad = { ...message('bad-headers', 'k'), headers } as unknown as OutgoingMessage
      const error = await q.publisher.publish([bad]).then(
        () => undefined,
        (e: unknown) => e,
      )
      expect(error, JSON.stringify(headers)).toMatchObject({ code: 'BROKER_REJECTED' })
      expect((error as Error).message).toContain(`sql-queue: ${option}: expected`)
    }
    expect(await count(t.db, 'breakwater_queue', "WHERE topic = 'bad-headers'")).toBe(0)
  })

  it('refuses publish and subscribe after close() with BROKER_UNAVAILABLE, as the other brokers do', async () => {
    const q = queue()
    await q.close()
    for (const attempt of [
      () => q.publisher.publish([message('after-close', 'k')]),
      () => q.subscriber.subscribe('after-close', 'g', async () => {}),
    ]) {
      const error = await attempt().then(
        () => undefined,
        (e: unknown) => e,
      )
      expect(BreakwaterError.is(error), String(error)).toBe(true)
      expect((error as BreakwaterError).code).toBe('BROKER_UNAVAILABLE')
      expect((error as Error).message).toMatch(/^sql-queue: the (publisher|subscriber) is closed$/)
    }
    // Nothing was stored by the refused publish.
    expect(await count(t.db, 'breakwater_queue', "WHERE topic = 'after-close'")).toBe(0)
  })

  it('refuses a subscribe that close() overtook, leaving nothing polling behind', async () => {
    const q = queue()
    const leaked: IncomingMessage[] = []
    // subscribe() is still registering its group when close() runs: close() must not miss it.
    const subscribing = q.subscriber.subscribe('race', 'g', async (m) => {
      leaked.push(m)
    })
    await q.close()
    await expect(subscribing).rejects.toThrow(/closed/)
    // A live member of the same group gets every message: nothing competes with it.
    const live = queue()
    const got: IncomingMessage[] = []
    await live.subscriber.subscribe('race', 'g', async (m) => {
      got.push(m)
    })
    await live.publisher.publish([message('race', 'a'), message('race', 'b'), message('race', 'c')])
    await until(() => got.length === 3, 'the three messages')
    expect(leaked).toEqual([])
  })

  if (target.dialect === 'postgres') {
    // A second SQLite connection in the same process cannot take part here: better-sqlite3
    // blocks the thread while it waits for the other connection's write lock.
    it('hands a message to another consumer only when the holder stops extending its lease', async () => {
      const clock = new ManualClock(3_000_000)
      // The ManualClock jumps much faster than real time; a long timeout relative to the steps
      // leaves each extension (a real database round trip) time to land.
      const options = {
        clock,
        visibilityTimeoutMs: 30_000,
        pollIntervalMs: 5,
        maxPollIntervalMs: 5,
      }
      const holderDb = await t.another()
      const holder = createSqlQueue(holderDb, { ...options, onError: () => {} })
      const held: IncomingMessage[] = []
      await holder.subscriber.subscribe('lease', 'g', (m) => {
        held.push(m)
        return new Promise<void>(() => {}) // never finishes: the consumer is stuck, then dies
      })
      const m = message('lease', 'k')
      await queue().publisher.publish([m])
      await advanceUntil(clock, () => held.length === 1, 'the first delivery')
      const got: IncomingMessage[] = []
      const rival = queue(options)
      const sub = await rival.subscriber.subscribe('lease', 'g', async (x) => void got.push(x))
      // Well past the visibility timeout: the holder keeps extending, so nobody else gets it.
      for (let i = 0; i < 70; i++) {
        await clock.advance(1_000)
        await delay(5)
      }
      expect(got).toHaveLength(0)
      // The holder loses its database (as a crashed process would): the lease runs out.
      await holderDb.close()
      await advanceUntil(clock, () => got.length === 1, 'the redelivery', 1_000)
      expect(got[0]).toMatchObject({ id: m.id, deliveryCount: 2 })
      await sub.close()
    })

    it('wakes a subscriber in another connection through NOTIFY, not polling', async () => {
      const consumerDb = await t.another()
      const consumer = createSqlQueue(consumerDb, {
        pollIntervalMs: 60_000,
        maxPollIntervalMs: 60_000,
      })
      queues.push(consumer)
      const got: string[] = []
      const sub = await consumer.subscriber.subscribe(
        'notify',
        'g',
        async (m) => void got.push(m.id),
      )
      await delay(50) // the subscription's first poll found nothing and now waits a minute
      const producer = createSqlQueue(await t.another())
      const m = message('notify', 'k')
      await producer.publisher.publish([m])
      await until(() => got.length === 1, 'the notified delivery', 5_000)
      await sub.close()
    })

    it('lets competing consumers on separate connections share a backlog exactly once', async () => {
      const sent = Array.from({ length: 400 }, (_, i) => message('compete', `k${i % 50}`))
      const producer = queue()
      // Register the group first so every message fans out to it.
      const counts = new Map<string, number>()
      const consumers: SqlQueue[] = []
      const subs = []
      for (let i = 0; i < 4; i++) {
        const c = createSqlQueue(await t.another(), {
          pollIntervalMs: 1,
          maxPollIntervalMs: 5,
          prefetch: 8,
        })
        consumers.push(c)
        queues.push(c)
        subs.push(
          await c.subscriber.subscribe('compete', 'workers', async (m) => {
            counts.set(m.id, (counts.get(m.id) ?? 0) + 1)
          }),
        )
      }
      for (let i = 0; i < sent.length; i += 50)
        await producer.publisher.publish(sent.slice(i, i + 50))
      await until(() => counts.size === 400, 'every message')
      await delay(50)
      expect([...counts.values()].every((n) => n === 1)).toBe(true)
      for (const sub of subs) await sub.close()
    })
  }
})
