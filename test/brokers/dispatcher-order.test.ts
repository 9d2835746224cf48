// Per-key order of the KeyedDispatcher against an in-memory broker that redelivers: under any
// interleaving (fc.scheduler) of new deliveries, handler completions, failures, hand-backs,
// redeliveries and lost connections, a handler for message n of a key starts only once every
// earlier message of that key has been handled successfully. The dispatcher before this change
// handed later messages of a key to the handler while an earlier one was out for redelivery, and
// fails this property (a message delivered after the failed one overtook it).
import fc from 'fast-check'
import { describe, expect, it } from 'vitest'
import { type Delivery, KeyedDispatcher, type Outcome } from '../../src/brokers/dispatcher.js'
import type { IncomingMessage } from '../../src/brokers/types.js'
import { ManualClock } from '../../src/testing/manual-clock.js'

/**
 * One handler at a time, holds given up after 5 s; each error is recorded in `errors` as
 * `<phase>:<id>:<code, or 'handler'>`.
 */
function reportingDispatcher(
  clock: ManualClock,
  errors: string[],
  handler: (m: IncomingMessage) => Promise<void>,
): KeyedDispatcher {
  return new KeyedDispatcher({
    concurrency: 1,
    capacity: 10,
    maxHeldPerKey: 10,
    holdTimeoutMs: 5_000,
    clock,
    broker: 'redis',
    onError: (error, phase, m) =>
      errors.push(`${phase}:${m.id}:${(error as { code?: string }).code ?? 'handler'}`),
    handler,
  })
}

/** A {@link reportingDispatcher} whose handler records each start and fails `id` once. */
function failingOnce(
  clock: ManualClock,
  errors: string[],
  id: string,
): { dispatcher: KeyedDispatcher; started: string[] } {
  const started: string[] = []
  let fail = true
  const dispatcher = reportingDispatcher(clock, errors, async (m) => {
    started.push(m.id)
    if (m.id === id && fail) {
      fail = false
      throw new Error(`${id} fails once`)
    }
  })
  return { dispatcher, started }
}

interface SimDelivery extends Delivery {
  readonly seq: number
  readonly session: number
}

function message(seq: number, key: string, deliveryCount: number): IncomingMessage {
  return {
    id: `m${seq}`,
    topic: 't',
    key,
    payload: new Uint8Array(),
    headers: {},
    deliveryCount,
  }
}

const logArbitrary = fc.array(
  fc.record({
    key: fc.constantFrom('a', 'b', 'c'),
    failures: fc.oneof(
      { weight: 3, arbitrary: fc.constant(0) },
      { weight: 1, arbitrary: fc.integer({ min: 1, max: 2 }) },
    ),
  }),
  { minLength: 1, maxLength: 14 },
)

describe('KeyedDispatcher per-key order under redelivery', () => {
  it('never starts a message before every earlier one of its key succeeded, and handles them all', async () => {
    await fc.assert(
      fc.asyncProperty(
        logArbitrary,
        fc.record({
          concurrency: fc.integer({ min: 1, max: 3 }),
          capacity: fc.integer({ min: 3, max: 8 }),
          maxHeldPerKey: fc.integer({ min: 1, max: 4 }),
          // NATS and Redis give a log position; RabbitMQ does not (arrival order, by id).
          brokerOrder: fc.boolean(),
          connectionLosses: fc.integer({ min: 0, max: 2 }),
          // The broker redelivers a message still out (its ack wait ran out): two copies.
          ackWaitExpiries: fc.integer({ min: 0, max: 3 }),
          // A restarted relay publishes messages again: copies further down the log.
          republishes: fc.integer({ min: 0, max: 3 }),
        }),
        fc.scheduler(),
        async (log, config, s) => {
          const clock = new ManualClock()
          const attempts = new Map<number, number>()
          const succeeded = new Set<number>()
          const violations: string[] = []
          const runningKeys = new Set<string>()
          const settles = new Map<SimDelivery, Outcome[]>()
          const abandoned = new Set<SimDelivery>()
          let session = 0
          let deliveries = 0
          // The broker's view: acked messages are never redelivered (an ack or nak of any copy
          // settles the message, as in JetStream); delivered and not acked ones are out.
          const acked = new Set<number>()
          const out = new Set<number>()

          const dispatcher = new KeyedDispatcher<SimDelivery>({
            concurrency: config.concurrency,
            capacity: config.capacity,
            maxHeldPerKey: config.maxHeldPerKey,
            // Never reached: the clock does not move, so every hand-back must come back.
            holdTimeoutMs: 60_000,
            clock,
            broker: 'nats',
            onError: () => {},
            handler: async (m) => {
              const seq = Number(m.id.slice(1))
              if (runningKeys.has(m.key)) violations.push(`${m.key} ran twice at once`)
              for (let earlier = 0; earlier < seq; earlier++) {
                if (log[earlier]!.key === m.key && !succeeded.has(earlier)) {
                  violations.push(`m${seq} started before m${earlier} (key ${m.key}) succeeded`)
                }
              }
              runningKeys.add(m.key)
              await s.schedule(Promise.resolve(), `handle m${seq}`)
              runningKeys.delete(m.key)
              const attempt = (attempts.get(seq) ?? 0) + 1
              attempts.set(seq, attempt)
              if (attempt <= log[seq]!.failures) throw new Error(`m${seq} fails`)
              succeeded.add(seq)
            },
          })

          // The broker: a delivery not acknowledged (handed back, or its ack lost with the
          // connection) comes back at some later point the scheduler picks.
          const redeliver = (seq: number, order: number): void => {
            void s.schedule(Promise.resolve(), `redeliver m${seq}`).then(() => {
              if (!acked.has(seq)) deliver(seq, order)
            })
          }
          // Log positions of republished copies come after every first publish.
          let republished = log.length
          const deliver = (seq: number, order = seq): void => {
            const entry = log[seq]!
            const delivery: SimDelivery = {
              seq,
              session,
              message: message(seq, entry.key, ++deliveries),
              ...(config.brokerOrder ? { order } : {}),
              settle: (outcome) => {
                settles.set(delivery, [...(settles.get(delivery) ?? []), outcome])
                // An ack on a connection that is gone never reaches the broker.
                if (outcome === 'ack' && delivery.session === session) {
                  acked.add(seq)
                  out.delete(seq)
                } else {
                  redeliver(seq, order)
                }
              },
            }
            out.add(seq)
            dispatcher.push(delivery)
          }

          // New messages go out in log order, interleaved with everything else.
          const feeding = (async () => {
            for (let seq = 0; seq < log.length; seq++) {
              await s.schedule(Promise.resolve(), `deliver m${seq}`)
              deliver(seq)
            }
          })()
          // A lost connection: what was queued is abandoned (the broker redelivers it), what
          // runs finishes but its ack is lost.
          for (let i = 0; i < config.connectionLosses; i++) {
            void s.schedule(Promise.resolve(), `connection lost ${i}`).then(() => {
              const gone = session++
              for (const d of dispatcher.abandon((d) => d.session === gone)) {
                abandoned.add(d)
                redeliver(d.seq, d.order === undefined ? d.seq : Number(d.order))
              }
            })
          }

          for (let i = 0; i < config.ackWaitExpiries; i++) {
            void s.schedule(Promise.resolve(), `ack wait ran out ${i}`).then(() => {
              const [seq] = [...out].filter((n) => !acked.has(n))
              if (seq !== undefined) deliver(seq)
            })
          }

          for (let i = 0; i < config.republishes; i++) {
            void s.schedule(Promise.resolve(), `republish ${i}`).then(() => {
              const [seq] = [...out].filter((n) => !acked.has(n))
              // A copy of its own in the broker: acking it does not ack the first one.
              if (seq !== undefined) deliver(seq, ++republished)
            })
          }

          await s.waitIdle()
          await feeding
          await dispatcher.close()

          expect(violations).toEqual([])
          // Liveness: every message was handled successfully in the end.
          expect([...succeeded].sort((x, y) => x - y)).toEqual(log.map((_, seq) => seq))
          // Every delivery is settled once, except the abandoned ones, which are not settled.
          for (const [delivery, outcomes] of settles) {
            expect(outcomes).toHaveLength(1)
            expect(abandoned.has(delivery)).toBe(false)
          }
          expect(settles.size + abandoned.size).toBe(deliveries)
          expect(dispatcher.size).toBe(0)
        },
      ),
      { numRuns: 400 },
    )
  })

  it('holds at most maxHeldPerKey behind an awaited delivery, hands back the rest, and runs all in log order', async () => {
    const clock = new ManualClock()
    const started: string[] = []
    const settled: string[] = []
    let failFirst = true
    const dispatcher = new KeyedDispatcher({
      concurrency: 1,
      capacity: 10,
      maxHeldPerKey: 2,
      holdTimeoutMs: 60_000,
      clock,
      broker: 'nats',
      onError: () => {},
      handler: async (m) => {
        started.push(m.id)
        if (m.id === 'm1' && failFirst) {
          failFirst = false
          throw new Error('m1 fails once')
        }
      },
    })
    const push = (seq: number): void =>
      dispatcher.push({
        message: message(seq, 'k', 1),
        order: seq,
        settle: (o) => void settled.push(`m${seq}:${o}`),
      })
    const settle = () => new Promise((resolve) => setImmediate(resolve))
    push(1)
    await settle()
    // m1 failed and is awaited: m2 and m3 are held, m4 is beyond the bound and goes back too.
    push(2)
    push(3)
    push(4)
    expect(settled).toEqual(['m1:retry', 'm4:retry'])
    expect(dispatcher.awaited).toBe(2)
    expect(started).toEqual(['m1'])
    // m4 comes back before m1: taken although beyond the bound (it is awaited); a newcomer
    // is not, and goes back in turn.
    push(4)
    push(5)
    expect(settled).toEqual(['m1:retry', 'm4:retry', 'm5:retry'])
    await settle()
    expect(started).toEqual(['m1'])
    push(1)
    await settle()
    expect(started).toEqual(['m1', 'm1', 'm2', 'm3', 'm4'])
    push(5)
    await settle()
    expect(started).toEqual(['m1', 'm1', 'm2', 'm3', 'm4', 'm5'])
    expect(dispatcher.awaited).toBe(0)
    await dispatcher.close()
  })

  // Found by the property above (seed -2067219697): a copy of m1 queued further down the log
  // (published again) while m1 ran; m1 failed and was awaited at its own position; the
  // connection was then lost, and abandoning the copy replaced the wait for m1 with a wait at
  // the copy's later position, so m2, coming back first, ran before m1.
  it('keeps waiting at the earliest position when a later copy of an awaited message is abandoned', async () => {
    const clock = new ManualClock()
    const errors: string[] = []
    let releaseM1!: () => void
    const m1Runs = new Promise<void>((resolve) => {
      releaseM1 = resolve
    })
    const started: string[] = []
    let m1Failed = false
    const dispatcher = reportingDispatcher(clock, errors, async (m) => {
      started.push(m.id)
      if (m.id === 'm1' && !m1Failed) {
        await m1Runs
        m1Failed = true
        throw new Error('m1 fails once')
      }
    })
    const push = (seq: number, order: number): void =>
      dispatcher.push({ message: message(seq, 'k', 1), order, settle: () => {} })
    const turn = () => new Promise((resolve) => setImmediate(resolve))
    push(1, 1)
    await turn()
    // While m1 runs: m2 arrives, and a copy of m1 further down the log.
    push(2, 2)
    push(1, 6)
    releaseM1()
    await turn()
    expect(started).toEqual(['m1'])
    // The connection is lost: the queued m2 and the copy of m1 are abandoned.
    expect(dispatcher.abandon(() => true)).toHaveLength(2)
    // m2 comes back first: it must still wait for m1.
    push(2, 2)
    await turn()
    expect(started).toEqual(['m1'])
    push(1, 1)
    await turn()
    expect(started).toEqual(['m1', 'm1', 'm2'])
    await dispatcher.close()
  })

  it('stops waiting for a delivery that does not come back after holdTimeoutMs, and says so', async () => {
    const clock = new ManualClock()
    const errors: string[] = []
    const { dispatcher, started } = failingOnce(clock, errors, 'm1')
    const push = (seq: number): void =>
      dispatcher.push({ message: message(seq, 'k', 1), order: seq, settle: () => {} })
    push(1)
    push(2)
    await new Promise((resolve) => setImmediate(resolve))
    // m1 failed and went back; m2 waits for it.
    expect(started).toEqual(['m1'])
    await clock.advance(4_999)
    expect(started).toEqual(['m1'])
    await clock.advance(1)
    await new Promise((resolve) => setImmediate(resolve))
    expect(started).toEqual(['m1', 'm2'])
    expect(errors).toEqual(['handler:m1:handler', 'settle:m1:BROKER_UNAVAILABLE'])
    await dispatcher.close()
  })
  // Deliveries without a key ('', as every message of a producer that sets no key arrives)
  // shared one lane: one whose handler failed every time held every other keyless delivery back
  // for as long as it was redelivered. Each now runs in a lane of its own.
  it('runs keyless deliveries on their own: a failing one holds none back, and its hold ends without a report', async () => {
    const clock = new ManualClock()
    const started: string[] = []
    const outcomes: string[] = []
    const errors: string[] = []
    const dispatcher = reportingDispatcher(clock, errors, async (m) => {
      started.push(m.id)
      if (m.id.startsWith('bad')) throw new Error('malformed')
    })
    const push = (id: string, key: string, order: number): void =>
      dispatcher.push({
        message: { ...message(order, key, 1), id },
        order,
        settle: (outcome: Outcome) => void outcomes.push(`${id}:${outcome}`),
      })
    push('bad', '', 1)
    push('good-1', '', 2)
    push('good-2', '', 3)
    // A key keeps its order: its later delivery waits for its failed one.
    push('bad-k', 'k', 4)
    push('next-k', 'k', 5)
    await new Promise((resolve) => setImmediate(resolve))
    expect(started).toEqual(['bad', 'good-1', 'good-2', 'bad-k'])
    expect(outcomes).toEqual(['bad:retry', 'good-1:ack', 'good-2:ack', 'bad-k:retry'])
    // The failed keyless delivery is still known (its copy may come back), in its own lane.
    expect(dispatcher.tracks('', 'bad')).toBe(true)
    expect(dispatcher.awaited).toBe(2)
    await clock.advance(5_000)
    await new Promise((resolve) => setImmediate(resolve))
    // Nothing waited behind 'bad': its hold ends without a report; 'k' reports its given-up wait.
    expect(started).toEqual(['bad', 'good-1', 'good-2', 'bad-k', 'next-k'])
    expect(errors).toEqual([
      'handler:bad:handler',
      'handler:bad-k:handler',
      'settle:bad-k:BROKER_UNAVAILABLE',
    ])
    expect(dispatcher.awaited).toBe(0)
    await dispatcher.close()
  })

  // A relay restarted after a crash publishes a key's messages again: a copy of a message that
  // waits for its retry lands further down the log. The copy ended the wait and queued at its
  // own later position, so the key's later messages, held behind the wait, ran first.
  for (const brokerOrder of [true, false]) {
    it(`runs a later copy of an awaited delivery at the awaited one's place (${brokerOrder ? 'log order' : 'arrival order'})`, async () => {
      const clock = new ManualClock()
      const errors: string[] = []
      const { dispatcher, started } = failingOnce(clock, errors, 'm2')
      let position = 0
      const push = (seq: number): void =>
        dispatcher.push({
          message: message(seq, 'k', 1),
          ...(brokerOrder ? { order: ++position } : {}),
          settle: () => {},
        })
      push(1)
      push(2)
      push(3)
      await new Promise((resolve) => setImmediate(resolve))
      // m2 failed and is awaited; m3 waits for it.
      expect(started).toEqual(['m1', 'm2'])
      // The republished copies of m2 and m3 arrive before m2's retry.
      push(2)
      push(3)
      await new Promise((resolve) => setImmediate(resolve))
      expect(started.slice(0, 4)).toEqual(['m1', 'm2', 'm2', 'm3'])
      expect(errors).toEqual(['handler:m2:handler'])
      await dispatcher.close()
    })
  }
})
