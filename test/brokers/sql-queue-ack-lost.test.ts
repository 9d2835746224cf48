// A SQL queue consumer whose ack fails on a lost connection, on real PostgreSQL. The ack may not
// have happened (here it never reached the server): the message stays leased and comes back
// once its lease runs out. The consumer went on with the key's next message of its batch, so
// the key's order was broken: the earlier message came back after the later one was handled.
// A TCP proxy between the consumer's driver and the server drops the ack's bytes and cuts the
// connection.
import { afterAll, beforeAll, expect, it } from 'vitest'
import { createSqlQueue, type SqlQueue } from '../../src/brokers/sql-queue.js'
import { createPostgresDriver, type PostgresDriver } from '../../src/stores/postgres.js'
import { ManualClock } from '../../src/testing/index.js'
import { delay, type OutboxDb, postgresTarget } from '../outbox/support.js'
import { proxiedUrl, type TcpFaultProxy } from '../support/tcp-fault-proxy.js'

const visibilityTimeoutMs = 3_000

let setup: { t: OutboxDb; proxy: TcpFaultProxy; db: PostgresDriver } | undefined
const queues: SqlQueue[] = []

beforeAll(async () => {
  const t = await postgresTarget.open('sql_queue_ack_lost')
  const { proxy, url } = await proxiedUrl(t.url)
  setup = { t, proxy, db: await createPostgresDriver({ connectionString: url }) }
})
afterAll(async () => {
  for (const q of queues) await q.close()
  await setup?.db.close()
  await setup?.proxy.close()
  await setup?.t.close()
})

it("keeps a key's order when an ack is lost: the batch's later messages wait for it", async () => {
  if (setup === undefined) throw new Error('beforeAll did not finish')
  const { t, proxy, db } = setup
  const topic = 'ack-lost'
  // Stored before the group exists: the first lease takes both, under one token.
  await createSqlQueue(t.db).publisher.publish(
    ['1', '2'].map((n) => ({ id: `m${n}`, topic, key: 'k', payload: '{}', headers: {} })),
  )
  const clock = new ManualClock(5_000_000)
  const errors: unknown[] = []
  const q = createSqlQueue(db, {
    prefetch: 10,
    visibilityTimeoutMs,
    pollIntervalMs: 5,
    maxPollIntervalMs: 5,
    listen: false,
    clock,
    onError: (e) => errors.push(e),
  })
  queues.push(q)
  const got: string[] = []
  let cut: Promise<void> | undefined
  const sub = await q.subscriber.subscribe(topic, 'g', async (m) => {
    got.push(m.id)
    // The ack (its statement's first use on this connection, so its text goes out) is dropped.
    cut ??= proxy.cutAt('DELETE FROM breakwater_queue_deliveries', 'before-sending')
  })
  // Until both have been handled once more than the ack that was lost allows for, or time out.
  const deadline = Date.now() + 20_000
  while (got.length < 3 && Date.now() < deadline) {
    await clock.advance(visibilityTimeoutMs / 10)
    await delay(5)
  }
  await sub.close()
  expect(cut).toBeDefined()
  expect(errors.length).toBeGreaterThan(0)
  // m1 came back (its ack never happened); m2 is handled only after it.
  expect(got).toEqual(['m1', 'm1', 'm2'])
})
