// A reply whose payload parses as JSON but cannot be stored (1e400 parses to Infinity, which
// JSON cannot write back) was refused by deliverReply with
// INVALID_OPTION, which sagaReplyHandler rethrew: the broker redelivered it forever and held
// back the replies behind it. It is a property of the message, not a passing fault, so the
// handler acknowledges it and reports it through onIgnored, as it does a reply naming no saga
// (on real SQLite and PostgreSQL).
import { randomUUID } from 'node:crypto'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { migrateInbox } from '../../src/outbox/index.js'
import { createSagaWorker, defineSaga, getSaga, sagaReplyHandler } from '../../src/saga/index.js'
import { ManualClock } from '../../src/testing/index.js'
import { dbTargets, type TestDb } from './databases.js'

describe.each(dbTargets)('sagaReplyHandler and a reply it cannot store, on $dialect', (target) => {
  let t: TestDb

  beforeAll(async () => {
    t = await target.open('saga_reply_unstorable')
    await migrateInbox(t.db)
  })
  afterAll(async () => {
    await t?.close()
  })

  const awaitingSaga = () =>
    defineSaga({
      name: `unstorable-${randomUUID().slice(0, 8)}`,
      version: 1,
      steps: [
        {
          name: 'charge',
          send: () => {},
          awaitReply: { timeoutMs: 600_000, onReply: (reply) => ({ reply }) },
        },
      ],
    })

  const message = (id: string, sagaId: string, payload: string) =>
    ({
      id,
      topic: 'saga.replies',
      key: sagaId,
      payload,
      headers: { 'correlation-id': sagaId, 'saga-step': 'charge' },
    }) as never

  it('acknowledges and reports the reply, and the saga goes on waiting for a good one', async () => {
    const clock = new ManualClock(0)
    const saga = awaitingSaga()
    const worker = createSagaWorker({ db: t.db, sagas: [saga], clock })
    const ignored: { id: string; reason: string }[] = []
    const handle = sagaReplyHandler(t.db, {
      clock,
      consumer: `unstorable-${randomUUID()}`,
      onIgnored: (m, reason) => ignored.push({ id: m.id, reason }),
    })
    const { id } = await worker.run(saga, {})
    await handle(message('m-inf', id, '{"amount":1e400}'))
    await handle(message('m-inf-again', id, '[-1e999]'))
    expect(ignored.map((i) => i.id)).toEqual(['m-inf', 'm-inf-again'])
    expect(ignored[0]?.reason).toContain('reply')
    expect((await getSaga(t.db, id))!.steps[0]).toMatchObject({ status: 'waiting' })
    await handle(message('m-good', id, '{"amount":5}'))
    expect(await worker.poll()).toBe(1)
    const finished = await getSaga(t.db, id)
    expect(finished!.status).toBe('completed')
    expect(finished!.context).toMatchObject({ reply: { amount: 5 } })
  })

  it('acknowledges such a reply for a saga that does not exist', async () => {
    const ignored: string[] = []
    const handle = sagaReplyHandler(t.db, {
      consumer: `unstorable-${randomUUID()}`,
      onIgnored: (m) => ignored.push(m.id),
    })
    await handle(message('m-none', 'no-such-saga', '{"x":1e400}'))
    expect(ignored).toEqual(['m-none'])
  })
})
