import { afterAll, describe, expect, it } from 'vitest'
import { createRedisBroker, type SubscriberErrorEvent } from '../../src/brokers/index.js'
import { BreakwaterError, InvalidOptionError } from '../../src/core/errors.js'
import { ManualClock } from '../../src/testing/index.js'
import { brokerUrl, startPrivateBroker, stopOwnBrokers } from '../support/brokers.js'
import { until } from '../support/until.js'
import { describeBrokerConformance, makeBatch, Received, unique } from './conformance.js'
import {
  driveUntil,
  expectBrokerError,
  publishAndSubscribeFailures,
  rejectionOf,
} from './support.js'
import { testBroker } from './targets.js'

// Only stops a server this file started itself (when no global setup provided one).
afterAll(stopOwnBrokers)

describeBrokerConformance({ name: 'redis', dedupe: false })

/** Settles `work`, advancing the clock to each pending timer while real I/O runs between. */
async function drive<T>(clock: ManualClock, work: Promise<T>): Promise<T> {
  let settled = false
  const result = work.finally(() => {
    settled = true
  })
  result.catch(() => {})
  while (!settled) {
    const next = clock.nextTimerAt()
    if (next !== undefined) await clock.advance(next - clock.now())
    else await new Promise((resolve) => setTimeout(resolve, 1))
  }
  return result
}

describe('redis specifics', () => {
  it('fails a command a connected server stops answering after commandTimeoutMs (coded), and closes instead of hanging', async () => {
    const server = await startPrivateBroker('redis')
    let frozen = false
    try {
      const clock = new ManualClock(1_000)
      const errors: SubscriberErrorEvent[] = []
      const broker = createRedisBroker({
        url: server.url,
        clock,
        connectTimeoutMs: 2_000,
        commandTimeoutMs: 200,
        onError: (event) => errors.push(event),
      })
      let release!: () => void
      const gate = new Promise<void>((resolve) => {
        release = resolve
      })
      const handled: string[] = []
      // The clock stands still while the server answers: no timer of it matters yet.
      await broker.subscriber.subscribe('frozen', 'g', async (m) => {
        handled.push(m.id)
        await gate
      })
      await broker.publisher.publish([
        { id: 'a', topic: 'frozen', key: 'k', payload: 'x', headers: {} },
      ])
      await until(() => handled.length > 0, 'the message to reach the handler')
      // The server keeps its connections open but answers nothing from now on.
      process.kill(server.pid, 'SIGSTOP')
      frozen = true
      release()
      const isTimeout = (e: SubscriberErrorEvent): boolean =>
        e.phase === 'settle' && BreakwaterError.is(e.error) && /XACK/.test(e.error.message)
      await driveUntil(clock, () => errors.some(isTimeout), 'the unanswered XACK to fail')
      const error = errors.find(isTimeout)!.error as BreakwaterError
      expect(error.code).toBe('BROKER_UNAVAILABLE')
      expect(error.message).toMatch(/no answer within 200 ms \(commandTimeoutMs\)/)
      // Closing sends QUIT (and more) to a server that does not answer: bounded as well.
      let closed = false
      void broker.close().then(() => {
        closed = true
      })
      await driveUntil(clock, () => closed, 'close() on the frozen server')
    } finally {
      if (frozen) process.kill(server.pid, 'SIGCONT')
      await server.stop()
    }
  })

  it('fails a connect the server accepts but never answers after connectTimeoutMs, instead of hanging', async () => {
    // A frozen server: the kernel still accepts connections, nothing answers the handshake.
    const server = await startPrivateBroker('redis')
    process.kill(server.pid, 'SIGSTOP')
    try {
      const clock = new ManualClock(1_000)
      const broker = createRedisBroker({ url: server.url, clock, connectTimeoutMs: 2_000 })
      const message = { id: 'a', topic: 't', key: 'k', payload: 'x', headers: {} }
      for (const attempt of [
        (): Promise<unknown> => broker.publisher.publish([message]),
        () => broker.subscriber.subscribe('t', 'g', async () => {}),
      ]) {
        const error = await drive(clock, attempt()).catch((e: unknown) => e)
        expect(BreakwaterError.is(error), String(error)).toBe(true)
        expect((error as BreakwaterError).code).toBe('BROKER_UNAVAILABLE')
        expect((error as Error).message).toMatch(/2000 ms/)
      }
      await broker.close()
    } finally {
      process.kill(server.pid, 'SIGCONT')
      await server.stop()
    }
  })

  it('keeps a rediss:// connect to a port that answers neither TLS nor plain Redis (a frozen server) a retryable BROKER_UNAVAILABLE', async () => {
    // A plain Redis port fails fast as misconfigured (tls.test.ts) because it answers the
    // adapter's plain-text PING; a frozen one answers nothing and is an outage.
    const server = await startPrivateBroker('redis')
    process.kill(server.pid, 'SIGSTOP')
    try {
      const url = new URL(server.url)
      url.protocol = 'rediss:'
      const clock = new ManualClock(1_000)
      const broker = createRedisBroker({ url: url.toString(), clock, connectTimeoutMs: 2_000 })
      const error = await drive(clock, broker.publisher.publish(makeBatch('t', 1, 1))).catch(
        (e: unknown) => e,
      )
      expectBrokerError(error, 'BROKER_UNAVAILABLE', true)
      expect(error.message).toMatch(/2000 ms/)
      await broker.close()
    } finally {
      process.kill(server.pid, 'SIGCONT')
      await server.stop()
    }
  })

  it('delivers a header named __proto__ like any other (the outbox keeps such headers)', async () => {
    const broker = testBroker('redis', await brokerUrl('redis'))
    try {
      const topic = unique('proto')
      const received = new Received()
      await broker.subscriber.subscribe(topic, unique('g'), async (m) => received.record(m))
      // An own property named __proto__, as the outbox stores it.
      const headers = JSON.parse('{"__proto__":"p","other":"o"}') as Record<string, string>
      await broker.publisher.publish([{ id: 'x', topic, key: 'k', payload: '', headers }])
      await received.until(() => received.messages.length >= 1, 'the message')
      const got = received.messages[0]!.headers
      expect(Object.keys(got).sort()).toEqual(['__proto__', 'other'])
      expect(Object.getOwnPropertyDescriptor(got, '__proto__')?.value).toBe('p')
    } finally {
      await broker.close()
    }
  })

  it('gives an entry another producer wrote without an id, or with an empty one, an id made of its topic and entry id', async () => {
    const url = await brokerUrl('redis')
    const broker = testBroker('redis', url)
    const { Redis } = await import('ioredis')
    const other = new Redis(url)
    try {
      const topic = unique('foreign')
      const received = new Received()
      await broker.subscriber.subscribe(topic, unique('g'), async (m) => received.record(m))
      const bare = String(await other.xadd(topic, '*', 'payload', 'a'))
      const empty = String(await other.xadd(topic, '*', 'id', '', 'payload', 'b'))
      await received.until(() => received.messages.length >= 2, 'both entries')
      // An inbox refuses '' (and would take every such entry for one): the entry id is unique
      // in the stream and the same at every redelivery, and the topic keeps two streams'
      // entries written in the same millisecond (both <ms>-0) apart in one inbox.
      expect(received.ids().sort()).toEqual([`${topic}:${bare}`, `${topic}:${empty}`].sort())
    } finally {
      other.disconnect()
      await broker.close()
    }
  })

  it('gives an entry whose id field is not UTF-8 its <topic>:<entry id>, as one without an id: two such ids must not decode to one (the inbox would drop the second as a duplicate)', async () => {
    const broker = testBroker('redis', await brokerUrl('redis'))
    const other = new (await import('ioredis')).Redis(await brokerUrl('redis'))
    try {
      const topic = unique('binary-ids')
      const entries: string[] = []
      // Another producer's binary ids: each byte alone is not UTF-8, so both decode to U+FFFD.
      for (const id of [Buffer.from([0x80]), Buffer.from([0x81])]) {
        entries.push(String(await other.xadd(topic, '*', 'id', id, 'key', 'k', 'payload', 'p')))
      }
      // An id that is UTF-8 and holds U+FFFD itself is the producer's id, kept as it is.
      await other.xadd(topic, '*', 'id', 'x\uFFFDy', 'key', 'k', 'payload', 'p')
      const received = new Received()
      await broker.subscriber.subscribe(topic, unique('g'), async (m) => received.record(m))
      await received.until(() => received.messages.length >= 3, 'the three entries')
      expect(received.ids()).toEqual([
        `${topic}:${entries[0]}`,
        `${topic}:${entries[1]}`,
        'x\uFFFDy',
      ])
    } finally {
      other.disconnect()
      await broker.close()
    }
  })

  it('refuses an entry whose headers field is not a JSON record of strings (onError phase refused, BROKER_REJECTED, acked, kept in the stream) and delivers the rest', async () => {
    const url = await brokerUrl('redis')
    const errors: SubscriberErrorEvent[] = []
    const broker = createRedisBroker({
      url,
      blockMs: 1_000,
      onError: (event) => errors.push(event),
    })
    const { Redis } = await import('ioredis')
    const other = new Redis(url)
    try {
      const topic = unique('bad-headers')
      const group = unique('g')
      const corrupt = ['{"n": "1', '[]', '{"n":1,"s":"kept?"}', 'null', '"text"']
      const bad: string[] = []
      for (const [i, headers] of corrupt.entries()) {
        bad.push(
          String(
            await other.xadd(
              topic,
              '*',
              'id',
              `bad-${i}`,
              'key',
              'k',
              'headers',
              headers,
              'payload',
              'p',
            ),
          ),
        )
      }
      // Another producer's entry without a headers field is not corrupt: delivered, no headers.
      await other.xadd(topic, '*', 'id', 'bare', 'key', 'k', 'payload', 'b')
      await broker.publisher.publish([
        { id: 'good', topic, key: 'k', payload: 'g', headers: { a: '1' } },
      ])
      const received = new Received()
      await broker.subscriber.subscribe(topic, group, async (m) => received.record(m))
      const refused = () => errors.filter((e) => e.phase === 'refused')
      await received.until(
        () => received.messages.length >= 2 && refused().length >= corrupt.length,
        'the good entries and the refusals',
      )
      expect(received.ids()).toEqual(['bare', 'good'])
      expect(received.messages.map((m) => m.headers)).toEqual([{}, { a: '1' }])
      expect(refused().map((e) => e.message?.id)).toEqual(corrupt.map((_, i) => `bad-${i}`))
      for (const [i, event] of refused().entries()) {
        expect(BreakwaterError.is(event.error), String(event.error)).toBe(true)
        expect((event.error as BreakwaterError).code).toBe('BROKER_REJECTED')
        expect((event.error as BreakwaterError).retryable).toBe(false)
        expect((event.error as Error).message).toMatch(/headers/)
        expect((event.error as Error).message).toContain(bad[i]!)
        expect(event.topic).toBe(topic)
        expect(event.group).toBe(group)
        expect(event.message?.headers).toEqual({})
      }
      expect(errors.filter((e) => e.phase !== 'refused')).toEqual([])
      // Acked: nothing left pending for the group, but the entries stay in the stream.
      await until(
        async () => ((await other.xpending(topic, group)) as [number])[0] === 0,
        'the refused entries to be acked',
      )
      expect(await other.xlen(topic)).toBe(corrupt.length + 2)
    } finally {
      other.disconnect()
      await broker.close()
    }
  })

  it("refuses another producer's entry that holds one of its fields twice (XADD takes repeated names; which value was meant cannot be told) instead of delivering the last one", async () => {
    const url = await brokerUrl('redis')
    const errors: SubscriberErrorEvent[] = []
    const broker = createRedisBroker({
      url,
      blockMs: 1_000,
      onError: (event) => errors.push(event),
    })
    const { Redis } = await import('ioredis')
    const other = new Redis(url)
    try {
      const topic = unique('repeated-fields')
      const group = unique('g')
      const twice = String(
        await other.xadd(topic, '*', 'id', 'twice', 'key', 'k', 'payload', 'a', 'payload', 'b'),
      )
      // A field breakwater does not read may repeat: it is not delivered anyway.
      await other.xadd(
        topic,
        '*',
        'id',
        'extra',
        'key',
        'k',
        'note',
        '1',
        'note',
        '2',
        'payload',
        'p',
      )
      const received = new Received()
      await broker.subscriber.subscribe(topic, group, async (m) => received.record(m))
      const refused = () => errors.filter((e) => e.phase === 'refused')
      await received.until(
        () => received.messages.length >= 1 && refused().length >= 1,
        'the fine entry and the refusal',
      )
      expect(received.ids()).toEqual(['extra'])
      const [event] = refused()
      expect((event!.error as BreakwaterError).code).toBe('BROKER_REJECTED')
      expect((event!.error as Error).message).toMatch(/payload field appears more than once/)
      expect((event!.error as Error).message).toContain(twice)
      expect(event!.message?.id).toBe('twice')
    } finally {
      other.disconnect()
      await broker.close()
    }
  })

  it('fails publish and subscribe at once with a non-retryable BROKER_MISCONFIGURED naming the user (never the password) when the server refuses the login (WRONGPASS, NOAUTH), the database or a command (NOPERM)', async () => {
    const server = await startPrivateBroker('redis')
    const { Redis } = await import('ioredis')
    const admin = new Redis(server.url)
    try {
      const as = (userinfo: string, path = ''): string =>
        `${server.url.replace('redis://', `redis://${userinfo}`)}${path}`
      // May do anything but XADD (publish), then XGROUP (subscribe).
      await admin.call('ACL', 'SETUSER', 'noxadd', 'on', '>pw-noxadd', '~*', '+@all', '-xadd')
      await admin.call('ACL', 'SETUSER', 'noxgroup', 'on', '>pw-noxgroup', '~*', '+@all', '-xgroup')
      await admin.call('CONFIG', 'SET', 'requirepass', 'right-pw')
      const cases: Array<[string, string, RegExp]> = [
        [as('app:wrong-pw@'), 'wrong-pw', /login refused for user "app".*WRONGPASS/],
        [as(':wrong-pw@'), 'wrong-pw', /login refused for user "default".*WRONGPASS/],
        [as(''), 'right-pw', /login refused for user "default".*NOAUTH/],
        [as(':right-pw@', '/99'), 'right-pw', /database 99 refused for user "default".*DB index/],
      ]
      for (const [url, secret, message] of cases) {
        const broker = createRedisBroker({ url, connectTimeoutMs: 2_000 })
        try {
          for (const error of await publishAndSubscribeFailures(broker, unique('login'))) {
            expectBrokerError(error, 'BROKER_MISCONFIGURED', false, `${message}: ${String(error)}`)
            expect(error.message).toMatch(message)
            expect(error.message).not.toContain(secret)
          }
        } finally {
          await broker.close()
        }
      }
      const noxadd = createRedisBroker({ url: as('noxadd:pw-noxadd@'), connectTimeoutMs: 2_000 })
      const noxgroup = createRedisBroker({
        url: as('noxgroup:pw-noxgroup@'),
        connectTimeoutMs: 2_000,
      })
      try {
        const refusals = [
          await rejectionOf(noxadd.publisher.publish(makeBatch(unique('t'), 1, 1))),
          await rejectionOf(noxgroup.subscriber.subscribe(unique('t'), 'g', async () => {})),
        ]
        for (const error of refusals) {
          expectBrokerError(error, 'BROKER_MISCONFIGURED', false)
          expect(error.message).toMatch(/NOPERM/)
        }
      } finally {
        await noxadd.close()
        await noxgroup.close()
      }
    } finally {
      admin.disconnect()
      await server.stop()
    }
  })

  it('refuses a second live subscription of one group and topic under a fixed consumerName', async () => {
    const broker = createRedisBroker({ url: await brokerUrl('redis'), consumerName: 'fixed' })
    try {
      const topic = unique('named')
      const group = unique('g')
      const first = await broker.subscriber.subscribe(topic, group, async () => {})
      // Two readers under one consumer name would take each other's pending entries back.
      const error = await broker.subscriber
        .subscribe(topic, group, async () => {})
        .catch((e: unknown) => e)
      expect(error).toBeInstanceOf(InvalidOptionError)
      expect((error as InvalidOptionError).option).toBe('redis.consumerName')
      // Another group or topic may use the name; so may the group once the first is closed.
      const other = await broker.subscriber.subscribe(topic, unique('g'), async () => {})
      await first.close()
      const again = await broker.subscriber.subscribe(topic, group, async () => {})
      await other.close()
      await again.close()
    } finally {
      await broker.close()
    }
  })
})
