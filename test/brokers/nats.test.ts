import { connect, headers as natsHeaders } from 'nats'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { type StartedBroker, startNats } from '../../scripts/lib/brokers.mjs'
import { createNatsBroker, type SubscriberErrorEvent } from '../../src/brokers/index.js'
import { type BreakwaterError, InvalidOptionError } from '../../src/core/errors.js'
import { ManualClock } from '../../src/testing/manual-clock.js'
import { brokerUrl, stopOwnBrokers } from '../support/brokers.js'
import { startTcpFaultProxy } from '../support/tcp-fault-proxy.js'
import { describeBrokerConformance, makeBatch, Received, unique } from './conformance.js'
import { expectBrokerError, publishAndSubscribeFailures, rejectionOf } from './support.js'
import { testBroker } from './targets.js'

// Only stops a server this file started itself (when no global setup provided one).
afterAll(stopOwnBrokers)

describeBrokerConformance({ name: 'nats', dedupe: true })

// The shared test server runs without authorization; these tests get their own nats-server
// with users, passwords and permissions from a config file.
describe('nats with authorization', () => {
  const config = `
authorization {
  users = [
    { user: app, password: right-pw }
    { user: limited, password: limited-pw, permissions: {
        publish: { allow: [">"], deny: ["$JS.API.>"] }
        subscribe: { allow: [">"] }
    } }
    { user: noack, password: noack-pw, permissions: {
        publish: { allow: [">"], deny: ["$JS.ACK.>"] }
        subscribe: { allow: [">"] }
    } }
    { user: apionly, password: apionly-pw, permissions: {
        publish: { allow: ["$JS.API.>"] }
        subscribe: { allow: [">"] }
    } }
  ]
}
`
  let nats: StartedBroker
  let hostPort: string
  beforeAll(async () => {
    nats = await startNats({ config, stopOnExit: true })
    hostPort = new URL(nats.url).host
  })
  afterAll(async () => {
    await nats?.stop()
  })

  it('fails publish and subscribe at once with a non-retryable BROKER_MISCONFIGURED naming the user (never the password or token) when the server refuses the login', async () => {
    const cases: Array<[string, string, RegExp]> = [
      [`nats://app:wrong-pw@${hostPort}`, 'wrong-pw', /login refused for user "app"/],
      [`nats://s3cret-token@${hostPort}`, 's3cret-token', /login refused for a token/],
      [`nats://${hostPort}`, 'nothing', /login refused without credentials/],
    ]
    for (const [url, secret, message] of cases) {
      const broker = createNatsBroker({ url, connectTimeoutMs: 5_000 })
      try {
        for (const error of await publishAndSubscribeFailures(broker, unique('login'))) {
          expectBrokerError(error, 'BROKER_MISCONFIGURED', false, `${url}: ${String(error)}`)
          expect(error.message).toMatch(message)
          expect(error.message).toMatch(/Authorization Violation/i)
          expect(error.message).not.toContain(secret)
        }
      } finally {
        await broker.close()
      }
    }
    // The same server lets the right password in: the refusals above are the credentials'.
    const broker = createNatsBroker({ url: `nats://app:right-pw@${hostPort}` })
    try {
      await broker.publisher.publish(makeBatch(unique('login-ok'), 1, 1))
    } finally {
      await broker.close()
    }
  })

  it('fails publish and subscribe with a non-retryable BROKER_MISCONFIGURED when the server refuses the user permission on the JetStream API (Permissions Violation)', async () => {
    const broker = createNatsBroker({
      url: `nats://limited:limited-pw@${hostPort}`,
      connectTimeoutMs: 5_000,
      publishTimeoutMs: 5_000,
    })
    try {
      for (const error of await publishAndSubscribeFailures(broker, unique('perm'))) {
        expectBrokerError(error, 'BROKER_MISCONFIGURED', false, String(error))
        expect(error.message).toMatch(/Permissions Violation/)
        expect(error.message).not.toContain('limited-pw')
      }
    } finally {
      await broker.close()
    }
  })

  it('fails a publish the user may not make to the topic subject at once with a non-retryable BROKER_MISCONFIGURED, not as an ack timeout (a retryable outage)', async () => {
    // The clock never moves, so publishTimeoutMs never fires: only the server's refusal can
    // end the publish.
    const broker = createNatsBroker({
      url: `nats://apionly:apionly-pw@${hostPort}`,
      connectTimeoutMs: 5_000,
      clock: new ManualClock(),
    })
    try {
      const topic = unique('denied')
      const error = await rejectionOf(broker.publisher.publish(makeBatch(topic, 3, 1)))
      expectBrokerError(error, 'BROKER_MISCONFIGURED', false)
      expect(error.message).toMatch(/Permissions Violation for Publish to "denied-/)
      expect(error.message).toContain(topic)
      expect(error.message).not.toContain('apionly-pw')
    } finally {
      await broker.close()
    }
  })

  it('reports an ack the server refuses (no publish permission on $JS.ACK.>) to onError as a BROKER_MISCONFIGURED settle failure instead of redelivering the message for ever without a word', async () => {
    const events: SubscriberErrorEvent[] = []
    const broker = createNatsBroker({
      url: `nats://noack:noack-pw@${hostPort}`,
      connectTimeoutMs: 5_000,
      onError: (event) => events.push(event),
    })
    try {
      const topic = unique('noack')
      const group = unique('g')
      const received = new Received()
      await broker.subscriber.subscribe(topic, group, async (m) => received.record(m))
      await broker.publisher.publish(makeBatch(topic, 1, 1))
      await received.until(() => received.messages.length >= 1, 'the message')
      await received.until(() => events.length >= 1, 'the refused ack reported')
      const [event] = events
      expect(event).toMatchObject({ phase: 'settle', topic, group })
      expectBrokerError(event!.error, 'BROKER_MISCONFIGURED', false)
      expect(event!.error.message).toMatch(/Permissions Violation for Publish to "\$JS\.ACK\./)
      expect(event!.error.message).toContain('$JS.ACK.>')
    } finally {
      await broker.close()
    }
  })
})

describe('nats specifics', () => {
  const closers: Array<() => Promise<void>> = []
  afterAll(async () => {
    for (const close of closers) await close()
  })

  it('refuses as closed a publish whose publisher closed before it connected, instead of opening a connection nothing closes', async () => {
    const broker = createNatsBroker({ url: await brokerUrl('nats') })
    // publish() loads the driver before it connects; close() runs in that gap.
    const publishing = rejectionOf(broker.publisher.publish(makeBatch(unique('closed'), 1, 1)))
    await broker.publisher.close()
    const error = await publishing
    expectBrokerError(error, 'BROKER_UNAVAILABLE', true)
    expect(error.message).toMatch(/the publisher is closed/)
    await broker.close()
  })

  it('keeps topics apart in one shared stream and refuses topics outside it as unroutable', async () => {
    const prefix = unique('shared')
    const broker = createNatsBroker({
      url: await brokerUrl('nats'),
      stream: { name: prefix, subjects: [`${prefix}.>`] },
      retryDelayMs: 50,
    })
    closers.push(() => broker.close())
    const group = unique('g')
    const onA = new Received()
    const onB = new Received()
    await broker.subscriber.subscribe(`${prefix}.a`, group, async (m) => onA.record(m))
    await broker.subscriber.subscribe(`${prefix}.b`, group, async (m) => onB.record(m))
    await broker.publisher.publish([
      ...makeBatch(`${prefix}.a`, 3, 1, 'a'),
      ...makeBatch(`${prefix}.b`, 2, 1, 'b'),
    ])
    await onA.until(() => onA.messages.length >= 3, 'topic a')
    await onB.until(() => onB.messages.length >= 2, 'topic b')
    expect(onA.ids().sort()).toEqual(['a-0', 'a-1', 'a-2'])
    expect(onB.ids().sort()).toEqual(['b-0', 'b-1'])

    const error = await rejectionOf(broker.publisher.publish(makeBatch(unique('elsewhere'), 1, 1)))
    expectBrokerError(error, 'BROKER_UNROUTABLE')
  })

  it('fails publish and subscribe on a topic another stream already covers (subjects overlap) with a non-retryable BROKER_MISCONFIGURED naming the stream, not a retryable outage', async () => {
    const url = await brokerUrl('nats')
    const prefix = unique('covered')
    // Another application's stream over every subject under the prefix.
    const nc = await connect({ servers: new URL(url).host })
    const jsm = await nc.jetstreamManager()
    await jsm.streams.add({ name: prefix, subjects: [`${prefix}.>`] })
    closers.push(async () => {
      await jsm.streams.delete(prefix)
      await nc.close()
    })
    const broker = testBroker('nats', url)
    closers.push(() => broker.close())
    for (const error of await publishAndSubscribeFailures(broker, `${prefix}.orders`)) {
      expectBrokerError(error, 'BROKER_MISCONFIGURED', false)
      expect(error.message).toMatch(/overlap/)
      expect(error.message).toContain('nats.stream')
    }
  })

  it('with createStreams off, fails publish and subscribe on a topic without a stream alike, with a retryable BROKER_UNROUTABLE', async () => {
    const broker = createNatsBroker({
      url: await brokerUrl('nats'),
      createStreams: false,
      retryDelayMs: 50,
    })
    closers.push(() => broker.close())
    for (const error of await publishAndSubscribeFailures(broker, unique('nostream'))) {
      expectBrokerError(error, 'BROKER_UNROUTABLE', true)
    }
  })

  it('refuses a key, id or header value with leading or trailing whitespace (BROKER_REJECTED) instead of delivering it trimmed', async () => {
    const broker = testBroker('nats', await brokerUrl('nats'))
    closers.push(() => broker.close())
    const topic = unique('spaces')
    const received = new Received()
    await broker.subscriber.subscribe(topic, unique('g'), async (m) => received.record(m))
    const odd = [
      { id: 'by-key', topic, key: ' padded ', payload: '', headers: {} },
      { id: ' by-id', topic, key: 'k', payload: '', headers: {} },
      { id: 'by-header', topic, key: 'k', payload: '', headers: { note: '\tpadded' } },
    ]
    for (const message of odd) {
      const error = await rejectionOf(broker.publisher.publish([message]))
      expectBrokerError(error, 'BROKER_REJECTED', false, message.id)
    }
    // Inner spaces and an empty value travel unchanged.
    await broker.publisher.publish([
      { id: 'fine', topic, key: 'a key', payload: '', headers: { note: 'a b', empty: '' } },
    ])
    await received.until(() => received.ids().includes('fine'), 'the message that fits')
    expect(received.ids()).toEqual(['fine'])
    expect(received.messages[0]!.key).toBe('a key')
    expect(received.messages[0]!.headers).toEqual({ note: 'a b', empty: '' })
  })

  it('gives a message whose Nats-Msg-Id is not UTF-8 its <stream>:<sequence>, as one without an id: two such ids must not decode to one (the inbox would drop the second as a duplicate)', async () => {
    const url = await brokerUrl('nats')
    const broker = testBroker('nats', url)
    closers.push(() => broker.close())
    const topic = unique('binary-ids')
    // Creates the stream (sequence 1).
    await broker.publisher.publish([{ id: 'first', topic, key: 'k', payload: '', headers: {} }])
    const received = new Received()
    await broker.subscriber.subscribe(topic, unique('g'), async (m) => received.record(m))
    // Another producer's binary ids, which the nats client cannot send: each byte alone is not
    // UTF-8, so both decode to U+FFFD. Raw protocol, then PING: its PONG means both are in.
    const { port, hostname } = new URL(url)
    const socket = (await import('node:net')).connect(Number(port), hostname)
    try {
      const frames = [Buffer.from('CONNECT {"headers":true,"verbose":false}\r\n')]
      for (const id of [0x80, 0x81]) {
        const header = Buffer.concat([
          Buffer.from('NATS/1.0\r\nNats-Msg-Id: '),
          Buffer.from([id]),
          Buffer.from('\r\nbreakwater-key: k\r\n\r\n'),
        ])
        frames.push(Buffer.from(`HPUB ${topic} ${header.length} ${header.length + 1}\r\n`))
        frames.push(header, Buffer.from('p\r\n'))
      }
      frames.push(Buffer.from('PING\r\n'))
      const pong = new Promise<void>((resolve) => {
        let seen = ''
        socket.on('data', (chunk: Buffer) => {
          seen += chunk.toString('latin1')
          if (seen.includes('PONG')) resolve()
        })
      })
      socket.write(Buffer.concat(frames))
      await pong
    } finally {
      socket.destroy()
    }
    await received.until(() => received.messages.length >= 3, 'the three messages')
    const [first, one, two] = received.ids()
    expect(first).toBe('first')
    expect(one).toMatch(/:2$/)
    expect(two).toMatch(/:3$/)
    expect(one!.replace(/:2$/, '')).toBe(two!.replace(/:3$/, ''))
  })

  it("joins another producer's repeated header into one value, as HTTP combines a repeated field, instead of keeping the first only", async () => {
    const url = await brokerUrl('nats')
    const broker = testBroker('nats', url)
    closers.push(() => broker.close())
    const topic = unique('repeated')
    // Creates the stream.
    await broker.publisher.publish([{ id: 'first', topic, key: 'k', payload: '', headers: {} }])
    const received = new Received()
    await broker.subscriber.subscribe(topic, unique('g'), async (m) => received.record(m))
    const nc = await connect({ servers: url })
    try {
      const h = natsHeaders()
      h.append('traceparent', 'a')
      h.append('traceparent', 'b')
      h.append('Nats-Msg-Id', 'foreign-1')
      h.append('breakwater-key', 'k')
      await nc.jetstream().publish(topic, new Uint8Array(), { headers: h })
    } finally {
      await nc.close()
    }
    await received.until(() => received.ids().includes('foreign-1'), 'the foreign message')
    const foreign = received.messages.find((m) => m.id === 'foreign-1')!
    expect(foreign.headers).toEqual({ traceparent: 'a, b' })
    expect(foreign.key).toBe('k')
  })

  it('reports a message JetStream refuses for its own Nats-* headers as BROKER_REJECTED, not as an outage', async () => {
    const broker = testBroker('nats', await brokerUrl('nats'))
    closers.push(() => broker.close())
    const topic = unique('expect')
    // Headers JetStream acts on: every attempt of such a message is refused the same way.
    for (const headers of [
      { 'Nats-Expected-Stream': 'another' },
      { 'Nats-Expected-Last-Sequence': '99' },
      { 'Nats-Expected-Last-Subject-Sequence': '7' },
      { 'Nats-Expected-Last-Msg-Id': 'zz' },
      { 'Nats-Rollup': 'all' },
    ]) {
      const what = JSON.stringify(headers)
      const error = await rejectionOf(
        broker.publisher.publish([{ id: unique('m'), topic, key: 'k', payload: '', headers }]),
      )
      expectBrokerError(error, 'BROKER_REJECTED', false, what)
    }
  })

  it('refuses a topic that is not a valid subject with BROKER_REJECTED (not retryable)', async () => {
    const broker = testBroker('nats', await brokerUrl('nats'))
    closers.push(() => broker.close())
    for (const topic of [`${unique('bad')} topic`, `${unique('a')}..b`, `${unique('trail')}.`]) {
      const error = await rejectionOf(
        broker.publisher.publish([{ id: unique('m'), topic, key: 'k', payload: '', headers: {} }]),
      )
      expectBrokerError(error, 'BROKER_REJECTED', undefined, topic)
    }
  })

  it('refuses to subscribe to a topic that is not a valid subject with InvalidOptionError, before connecting', async () => {
    const broker = testBroker('nats', await brokerUrl('nats'))
    closers.push(() => broker.close())
    for (const topic of ['bad topic', 'a..b', 'trail.', '.lead']) {
      const error = await broker.subscriber.subscribe(topic, 'g', async () => {}).catch((e) => e)
      expect(error, topic).toBeInstanceOf(InvalidOptionError)
      expect((error as InvalidOptionError).option, topic).toBe('topic')
    }
  })

  it('refuses a wildcard topic where it would make a stream that takes its concrete topics: a subscription without the shared stream option, and any publish', async () => {
    // With a stream per topic, subscribing to orders.* created a stream over orders.*: every
    // later publish to orders.created then failed for good (its own stream overlaps it), so a
    // relay dead-lettered those events. A publish to a wildcard subject did the same.
    const url = await brokerUrl('nats')
    const broker = testBroker('nats', url)
    closers.push(() => broker.close())
    const prefix = unique('wild')
    for (const topic of [`${prefix}.*`, `${prefix}.>`, `${prefix}.*.x`]) {
      const error = await rejectionOf(broker.subscriber.subscribe(topic, 'g', async () => {}))
      expect(error, topic).toBeInstanceOf(InvalidOptionError)
      expect((error as InvalidOptionError).option, topic).toBe('topic')
      expect((error as Error).message, topic).toContain('nats.stream')
      const published = await rejectionOf(
        broker.publisher.publish([{ id: unique('m'), topic, key: 'k', payload: '', headers: {} }]),
      )
      expectBrokerError(published, 'BROKER_REJECTED', false, topic)
      expect((published as Error).message, topic).toMatch(/wildcard/)
    }
    // Nothing was created over the concrete topics: they publish and deliver as before.
    const concrete = `${prefix}.created`
    const received = new Received()
    await broker.subscriber.subscribe(concrete, unique('g'), async (m) => received.record(m))
    await broker.publisher.publish(makeBatch(concrete, 1, 1))
    await received.until(() => received.messages.length >= 1, 'the concrete topic')
    // A '*' or '>' inside a token is no wildcard: NATS reads it literally.
    await broker.publisher.publish([
      { id: unique('m'), topic: `${prefix}.a*b`, key: 'k', payload: '', headers: {} },
    ])

    // In one shared stream a wildcard subscription is a consumer filter over its topics.
    const shared = createNatsBroker({
      url,
      stream: { name: `${prefix}-all`, subjects: [`${prefix}-all.>`] },
      retryDelayMs: 50,
    })
    closers.push(() => shared.close())
    const all = new Received()
    await shared.subscriber.subscribe(`${prefix}-all.*`, unique('g'), async (m) => all.record(m))
    await shared.publisher.publish([
      ...makeBatch(`${prefix}-all.a`, 1, 1, 'a'),
      ...makeBatch(`${prefix}-all.b`, 1, 1, 'b'),
    ])
    await all.until(() => all.messages.length >= 2, 'both topics through the wildcard')
    expect(all.messages.map((m) => m.topic).sort()).toEqual([`${prefix}-all.a`, `${prefix}-all.b`])
  })

  it('fits the default duplicate window to a shorter maxAgeMs and refuses a longer one given', async () => {
    const url = await brokerUrl('nats')
    expect(() => createNatsBroker({ url, maxAgeMs: 60_000, duplicateWindowMs: 90_000 })).toThrow(
      InvalidOptionError,
    )
    // JetStream refuses a stream whose window exceeds its max age: every publish failed.
    const broker = createNatsBroker({ url, maxAgeMs: 60_000 })
    closers.push(() => broker.close())
    await broker.publisher.publish(makeBatch(unique('aged'), 1, 1))
  })

  it("keeps a key in order when a delivery in flight is lost with the connection: the key's next message waits until JetStream redelivers the lost one", async () => {
    // JetStream counts a message as delivered once it has written it to the connection. When
    // the connection dies with it in flight, the server sends it again only after ackWaitMs,
    // and the subscriber, which never saw it, would meanwhile run the key's next message.
    const url = await brokerUrl('nats')
    const server = new URL(url)
    const proxy = await startTcpFaultProxy(server.hostname, Number(server.port))
    const subscribing = testBroker('nats', `nats://127.0.0.1:${proxy.port}`)
    const publishing = testBroker('nats', url)
    const nc = await connect({ servers: server.host })
    // The proxy last: the subscription must not be left reconnecting to a closed port.
    closers.push(async () => {
      await subscribing.close()
      await publishing.close()
      await nc.close()
      await proxy.close()
    })
    const jsm = await nc.jetstreamManager()
    const topic = unique('lost-in-flight')
    const group = unique('g')
    const message = (id: string) => ({ id, topic, key: 'k', payload: id, headers: {} })
    const received = new Received()
    await subscribing.subscriber.subscribe(topic, group, async (m) => received.record(m))
    await publishing.publisher.publish([message('zero')])
    await received.until(() => received.ids().includes('zero'), 'the first message')

    proxy.dropServerBytes(true)
    await publishing.publisher.publish([message('first')])
    await expect.poll(async () => (await jsm.consumers.info(topic, group)).num_ack_pending).toBe(1)
    proxy.dropServerBytes(false)
    proxy.severAll()
    await publishing.publisher.publish([message('second')])
    await received.until(() => received.ids().includes('second'), 'the next message')
    expect(received.ids()).toEqual(['zero', 'first', 'second'])
  })

  it('recreates its consumer (and stream) when they are deleted under a live subscription', async () => {
    const url = await brokerUrl('nats')
    const broker = testBroker('nats', url)
    closers.push(() => broker.close())
    const topic = unique('deleted')
    const group = unique('g')
    const received = new Received()
    await broker.subscriber.subscribe(topic, group, async (m) => received.record(m))
    await broker.publisher.publish([{ id: 'first', topic, key: 'k', payload: '', headers: {} }])
    await received.until(() => received.ids().includes('first'), 'the first message')

    // An operator deletes the consumer, then the whole stream (the publisher recreates it).
    const nc = await connect({ servers: new URL(url).host })
    closers.push(() => nc.close())
    const jsm = await nc.jetstreamManager()
    await jsm.consumers.delete(topic, group)
    await broker.publisher.publish([{ id: 'second', topic, key: 'k', payload: '', headers: {} }])
    await received.until(
      () => received.ids().includes('second'),
      'a message after the consumer was deleted',
    )
    await jsm.streams.delete(topic)
    const third = [{ id: 'third', topic, key: 'k', payload: '', headers: {} }]
    // The first publish finds the stream gone (retryable BROKER_UNROUTABLE); the retry, as a
    // relay's, recreates it.
    await broker.publisher.publish(third).catch(async (error: unknown) => {
      expect((error as BreakwaterError).code).toBe('BROKER_UNROUTABLE')
      await broker.publisher.publish(third)
    })
    await received.until(
      () => received.ids().includes('third'),
      'a message after the stream was deleted',
    )
  })
})
