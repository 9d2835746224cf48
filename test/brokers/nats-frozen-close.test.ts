// close() on a NATS server that keeps its connections open but stops answering (frozen with
// SIGSTOP: a hung process, a partition the kernel does not see). It awaited nats.js's drain(),
// which waits for the server's answer to its flush for as long as the driver's own timers
// allow (minutes), so a relay or worker shutting down hung with it. The drain is bounded by
// connectTimeoutMs on the adapter's clock, then the connection is closed.
import { afterAll, describe, it } from 'vitest'
import { type Broker, createNatsBroker } from '../../src/brokers/index.js'
import { ManualClock } from '../../src/testing/index.js'
import { type StartedBroker, startPrivateBroker, stopOwnBrokers } from '../support/brokers.js'
import { makeBatch, unique } from './conformance.js'
import { driveUntil } from './support.js'

afterAll(stopOwnBrokers)

/** Runs `warm` on a fresh adapter, freezes the server, and waits for close() to resolve. */
async function closeFrozen(
  server: StartedBroker,
  warm: (broker: Broker) => Promise<unknown>,
): Promise<void> {
  const clock = new ManualClock(1_000)
  const broker = createNatsBroker({ url: server.url, clock, connectTimeoutMs: 2_000 })
  // The live server answers in real time: the clock is not advanced meanwhile, or a loaded
  // machine's late ack would meet the publish timeout first (an unhandled rejection).
  await warm(broker)
  process.kill(server.pid, 'SIGSTOP')
  try {
    let closed = false
    void broker.close().then(() => {
      closed = true
    })
    await driveUntil(clock, () => closed, 'close() on the frozen server')
  } finally {
    process.kill(server.pid, 'SIGCONT')
  }
}

describe('NATS close() on a server that stopped answering', () => {
  let server: Promise<StartedBroker> | undefined
  const own = (): Promise<StartedBroker> => {
    server ??= startPrivateBroker('nats')
    return server
  }
  afterAll(async () => {
    await (await server)?.stop()
  })

  it("resolves for a publisher with an open connection (its drain is bounded by connectTimeoutMs on the adapter's clock)", async () => {
    const topic = unique('frozen-close-pub')
    await closeFrozen(await own(), (broker) => broker.publisher.publish(makeBatch(topic, 1, 1)))
  })

  it('resolves for a subscriber with a running subscription', async () => {
    const topic = unique('frozen-close-sub')
    await closeFrozen(await own(), (broker) =>
      broker.subscriber.subscribe(topic, unique('g'), async () => {}),
    )
  })
})
